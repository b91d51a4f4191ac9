"""``--gold-weight``: the task loss on answer options, scored on the path each prompt's KL is scored on."""

import json

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import Relaxation, RoutedModel
from drllm.search.closeness import path_kl
from drllm.search.gold import gold_options
from drllm.search.teacher import build_teacher, task_prompts
from drllm.train.gold_loss import gold_rows, step_with_gold
from drllm.train.trainer import train_routers

KL = dict(objective="kl", target_layers=3, router="static", epochs=1, batch_size=4, device="cpu")


def _explicit_option_scores(routed, prompt_ids, options, path) -> torch.Tensor:
    """Summed log-likelihood of each option after the prompt, one static path, one row at a time."""
    scores = []
    for option in options:
        ids = torch.tensor([prompt_ids + option])
        hidden = routed.backbone(ids, torch.ones_like(ids), torch.tensor(path))
        logp = torch.log_softmax(routed.lm_logits(hidden[0]).float(), -1)
        p = len(prompt_ids)
        scores.append(sum(float(logp[p - 1 + t, tok]) for t, tok in enumerate(option)))
    return torch.tensor(scores)


@torch.no_grad()
def test_option_rows_run_their_prompts_sampled_path_and_score_as_explicit_static_paths(tmp_path, mc_file):
    routed, tokenizer = RoutedModel(tiny_model("llama")), tiny_tokenizer()
    tasks = [f"jsonl:{mc_file}"]
    gold = gold_options(tasks, tokenizer)
    prompts = task_prompts(tasks, tokenizer)
    assert set(gold) == {p.id for p in prompts} and all(len(g["options"]) == 3 for g in gold.values())
    rows = build_teacher(routed, tokenizer, prompts[:6], tmp_path, tokens=3, progress=False)
    rows[1] = {**rows[1], "id": "no-options"}  # a prompt without options keeps its KL alone
    routers = routed.add_routers(kind="linear", seed=3)
    with torch.no_grad():
        for head in routers.layers:
            head.proj.weight.normal_(0, 2.0)  # decisions that differ between prompts
    extra = gold_rows(rows, gold)
    assert extra.gold[1] == -1 and len(extra.rows) == 15
    from drllm.search.closeness import batch_tensors, teacher_log_probs

    teacher = teacher_log_probs(routed, batch_tensors(rows, 0, "cpu"))
    relaxation = Relaxation(
        routers,
        tau=1.0,
        fixed=[0],
        generator=torch.Generator().manual_seed(0),
        groups=extra.groups,
    )
    kl, ce, correct = step_with_gold(routed, relaxation, rows, extra, teacher, 0)
    decisions = relaxation.decisions()
    assert torch.equal(decisions[6:], decisions[extra.owner]), "option rows take their prompt's path"
    assert len({tuple(d) for d in decisions[:6].tolist()}) > 1, "the test needs paths that differ"
    for b, row in enumerate(rows):
        path = decisions[b].tolist()
        assert kl[b] == pytest.approx(path_kl(routed, [row], path, 1, 0)[0], abs=1e-4)
        if row["id"] not in gold:
            assert ce[b] == 0 and torch.isnan(correct[b])
            continue
        entry = gold[row["id"]]
        scores = _explicit_option_scores(routed, row["prompt_ids"], entry["options"], path)
        expected = -torch.log_softmax(scores, 0)[entry["gold"]]
        assert ce[b] == pytest.approx(float(expected), abs=1e-4)
        assert correct[b] == float(int(scores.argmax()) == entry["gold"])


def test_kl_training_with_gold_weight_reports_option_accuracy_and_refuses_what_it_cannot_use(
    tmp_path, tiny_model_dir, mc_file
):
    out = tmp_path / "gold"
    metrics = train_routers(
        tiny_model_dir, output=str(out), tasks=[f"jsonl:{mc_file}"], continuation_tokens=2, gold_weight=1.0,
        val_fraction=0.34, **KL,
    )  # fmt: skip
    assert metrics["gold_prompts"] > 0 and 0.0 <= metrics["val_gold_accuracy"] <= 1.0
    assert metrics["val_gold_prompts"] == metrics["validation_prompts"] and metrics["val_gold_ce"] >= 0
    assert "train_gold_ce" in metrics["history"][0]
    assert json.loads((out / "run.json").read_text())["gold_weight"] == 1.0
    prompts_only = tmp_path / "po.jsonl"
    prompts_only.write_text(
        "".join(json.dumps({"id": f"p{k}", "prompt": f"say {k}"}) + "\n" for k in range(8))
    )
    with pytest.raises(ValueError, match="needs multiple-choice tasks"):
        train_routers(
            tiny_model_dir,
            output=str(tmp_path / "po"),
            tasks=[f"jsonl:{prompts_only}"],
            gold_weight=1.0,
            **KL,
        )
    assert not (tmp_path / "po" / "teacher").exists(), "refused before any continuation is generated"
    with pytest.raises(ValueError, match="gold_weight must be a number >= 0, got -1"):
        train_routers(tiny_model_dir, output=str(tmp_path / "neg"), gold_weight=-1.0, **KL)
    with pytest.raises(ValueError, match="gold_weight"):
        train_routers(tiny_model_dir, "paths.jsonl", str(tmp_path / "labels"), gold_weight=1.0)
    assert not (tmp_path / "neg").exists() and not (tmp_path / "labels").exists()
