"""KL training of routers with sublayer actions (``--units sublayer``): score-function forwards."""

import json

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import Relaxation, RoutedModel, Routers, relaxed
from drllm.router.compute import unit_shares
from drllm.router.decisions import ATTENTION_ONLY, MLP_ONLY
from drllm.search.closeness import batch_tensors
from drllm.search.teacher import build_teacher, task_prompts
from drllm.train.kl import fold_shift, start_routers
from drllm.train.trainer import train_routers

ARCHS = ["llama", "qwen2", "gpt2"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("actions", [3, 5])
def test_a_score_function_forward_is_the_explicit_model_on_its_sampled_decisions(arch, actions, mc_file):
    """Rows that differ run only what they chose; the hidden states equal the explicit per-row paths."""
    routed, tokenizer = RoutedModel(tiny_model(arch)), tiny_tokenizer()
    prompts = [p.text for p in task_prompts([f"jsonl:{mc_file}"], tokenizer)[:6]]
    rows = [{"prompt_ids": tokenizer(t)["input_ids"], "continuation": [5, 6]} for t in prompts]
    batch = batch_tensors(rows, 0, "cpu")
    routers = routed.add_routers(kind="static", actions=actions)
    with torch.no_grad():
        routers.static.logits.zero_()  # every action as likely: rows differ at every layer
    relaxation = Relaxation(
        routers, fixed=[0], straight_through=False, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad(), relaxed(routed, relaxation):
        hidden = routed.backbone(batch["ids"], batch["attention"], route_mask=batch["prompt"])
    decisions = relaxation.decisions()
    assert len({tuple(d) for d in decisions.tolist()}) > 1
    if actions == 5:
        assert bool(((decisions == MLP_ONLY) | (decisions == ATTENTION_ONLY)).any())
    with torch.no_grad():
        explicit = routed.backbone(batch["ids"], batch["attention"], decisions)
    keep = batch["attention"].bool()
    torch.testing.assert_close(hidden[keep], explicit[keep], atol=2e-5, rtol=1e-4)
    costs = [0.0, 1.0, 2.0, *unit_shares(routed.model.config)]
    expect = torch.tensor([sum(costs[d] for d in row) for row in decisions.tolist()])
    torch.testing.assert_close(relaxation.layers().float(), expect.float())


def test_folding_the_shift_prices_units_as_the_budget_does():
    """Deployed at budget b before folding, the 5-action routers decide as at budget 0 after it."""
    routed = RoutedModel(tiny_model("llama", num_hidden_layers=6))
    routers = routed.add_routers(kind="linear", actions=5, seed=3)
    with torch.no_grad():
        for head in routers.layers:
            head.proj.bias.copy_(torch.randn(5))
    ids = torch.randint(5, 90, (4, 9))
    routed.budget = 1.3
    before = routed.route(ids)
    routed.budget = 0.0
    fold_shift(routers, 1.3, unit_shares(routed.model.config))
    assert torch.equal(routed.route(ids), before)
    with pytest.raises(ValueError, match="unit_costs"):
        fold_shift(routers, 1.0)


def test_kl_training_with_sublayer_units_saves_five_action_routers(tmp_path, tiny_model_dir, mc_file):
    args = dict(objective="kl", tasks=[f"jsonl:{mc_file}"], target_layers=3.5, epochs=1, batch_size=4)
    args |= dict(continuation_tokens=3, val_fraction=0.25, device="cpu", start="block-influence")
    for kind in ("static", "linear"):
        out = tmp_path / kind
        metrics = train_routers(tiny_model_dir, output=str(out), router=kind, units="sublayer", **args)
        routers = Routers.from_pretrained(out)
        assert routers.config.actions == 5 and routers.config.kind == kind
        assert json.loads((out / "run.json").read_text())["units"] == "sublayer"
        assert 2.5 <= metrics["val_layers"] <= 4.0  # compute, in layers
    with pytest.raises(ValueError, match="units must be one of"):
        train_routers(tiny_model_dir, output=str(tmp_path / "bad"), units="heads", **args)
    with pytest.raises(ValueError, match="units"):
        train_routers(tiny_model_dir, paths=str(mc_file), output=str(tmp_path / "x"), units="sublayer")


def test_a_five_action_run_starts_on_its_block_path(mc_file, tmp_path):
    routed, tokenizer = RoutedModel(tiny_model("llama", num_hidden_layers=6)), tiny_tokenizer()
    routers = routed.add_routers(kind="mlp", actions=5)
    start_routers(routers, [1, 1, 0, 1, 0, 1], 2.0)
    prompts = task_prompts([f"jsonl:{mc_file}"], tokenizer)
    rows = build_teacher(routed, tokenizer, prompts, tmp_path, tokens=2, progress=False)
    assert routed.route(torch.tensor([rows[0]["prompt_ids"]])).tolist() == [[1, 1, 0, 1, 0, 1]]


def test_folded_five_action_routers_deploy_the_validated_compute(mc_file, tmp_path):
    """After training, routed at budget 0 one prompt at a time, the routers run the compute validation saw."""
    from drllm.train.kl import KLSettings, fit_kl

    routed, tokenizer = RoutedModel(tiny_model("llama", num_hidden_layers=6)), tiny_tokenizer()
    routed.model.requires_grad_(False)
    prompts = task_prompts([f"jsonl:{mc_file}"], tokenizer)
    rows = build_teacher(routed, tokenizer, prompts, tmp_path, tokens=2, progress=False)
    routers = routed.add_routers(kind="linear", actions=5, seed=1)
    start_routers(routers, [1, 1, 0, 1, 1, 1], 1.0)
    settings = KLSettings(kind="linear", target_layers=4.5, epochs=1, batch_size=4, baseline="per-prompt")
    history = fit_kl(routed, rows, rows[:6], settings, pad_id=0)
    costs = [0.0, 1.0, 2.0, *unit_shares(routed.model.config)]
    deployed = [
        sum(costs[d] for d in routed.route(torch.tensor([r["prompt_ids"]]))[0].tolist()) for r in rows[:6]
    ]
    assert sum(deployed) / 6 == pytest.approx(history[-1]["val_layers"], abs=1e-4)
