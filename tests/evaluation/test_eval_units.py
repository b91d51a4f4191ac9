"""``drllm eval`` with sublayer-unit baselines and ``--target-compute``: matched multiply-adds, paired."""

import pytest
from task_files import choice_file

from drllm.evaluation.evaluate import resolve_levels, run_eval
from drllm.router.decisions import ATTENTION_ONLY, MLP_ONLY

COMMON = dict(batch_size=4, calibration=6, fidelity_tokens=4, device="cpu")


@pytest.fixture(scope="module")
def eight_layers(tmp_path_factory):
    from tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama-8")
    tiny_model("llama", num_hidden_layers=8).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def test_unit_baselines_match_the_block_compute_of_their_level(tmp_path, eight_layers):
    task = choice_file(tmp_path / "mc.jsonl", n=12)
    rows = run_eval(
        eight_layers,
        task,
        str(tmp_path / "e"),
        target_compute=(0.75,),
        baselines=("block-influence", "attention-drop", "mlp-drop", "unit-drop"),
        stand_in="linear",
        **COMMON,
    )
    by = {r.method: r for r in rows}
    block, attention, units = by["block-influence"], by["attention-drop"], by["unit-drop"]
    assert block.level == attention.level == units.level == 6  # 0.75 of 8 layers
    assert set(attention.path) <= {1, MLP_ONLY} and MLP_ONLY in attention.path  # only attentions go
    mlps = by["mlp-drop"]
    assert set(mlps.path) <= {1, ATTENTION_ONLY} and ATTENTION_ONLY in mlps.path  # only MLPs go
    assert mlps.compute <= block.compute + 1e-6
    assert set(units.path) <= {0, 1, MLP_ONLY, ATTENTION_ONLY}
    for row in (attention, units):  # they save at least what the block path saves, and not much more
        assert row.compute <= block.compute + 1e-6
        assert row.compute >= block.compute - 0.15
        assert row.layers == pytest.approx(8 * row.compute, abs=0.01)  # blocks their compute would buy
        assert row.kl_static == "block-influence" and row.kl_vs_static is not None
        assert row.vs_static is not None and row.vs_static.against == "block-influence"
    assert "block-influence+linear" in by
    for name in ("attention-drop", "mlp-drop", "unit-drop"):  # unit baselines with unit maps, paired too
        plain, twin = by[name], by[f"{name}+linear"]
        assert twin.path == plain.path and twin.level == plain.level == 6
        assert plain.compute < twin.compute < 1.0  # each switched-off unit's map costs d^2 a token
        assert twin.kl_static == "block-influence" and twin.vs_static.against == "block-influence"
    assert by["attention-drop+linear"].kl.value < by["attention-drop"].kl.value
    text = (tmp_path / "e" / "results.md").read_text()
    assert "| attention-drop |" in text and "| unit-drop |" in text and "| mlp-drop |" in text
    assert (
        text.index("| attention-drop |")
        < text.index("| attention-drop+linear |")
        < text.index("| mlp-drop |")
    )


def test_target_compute_resolves_to_levels_and_bad_values_are_refused():
    assert resolve_levels(None, 30, (0.9, 0.8)) == [27, 24]
    assert resolve_levels(None, 8, (0.75,)) == [6]
    with pytest.raises(ValueError, match="not both"):
        resolve_levels((6,), 8, (0.75,))
    for bad in ((0.0,), (1.0,), (1.5,), (-0.2,), (True,)):
        with pytest.raises(ValueError, match=r"shares of the full model in \(0, 1\)"):
            resolve_levels(None, 8, bad)
    with pytest.raises(ValueError, match="both mean 6 of 8 layers"):
        resolve_levels(None, 8, (0.76, 0.74))
    with pytest.raises(ValueError, match="target compute is empty"):
        resolve_levels(None, 8, ())


def test_a_unit_baseline_that_cannot_reach_the_level_names_itself(tmp_path, tiny_model_dir):
    task = choice_file(tmp_path / "mc.jsonl", n=8)
    with pytest.raises(ValueError, match="attention-drop at 3 layers .* saves"):
        run_eval(
            tiny_model_dir,
            task,
            str(tmp_path / "e"),
            target_layers=(3,),
            baselines=("attention-drop",),
            **COMMON,
        )
    assert not (tmp_path / "e" / "results.json").exists()


def test_routers_with_unit_actions_are_calibrated_and_priced_by_their_compute(tmp_path, eight_layers):
    """Routers that run MLPs or attentions alone reach a level counted in multiply-adds, not in sum(d)."""
    import torch

    from drllm.router import RoutedModel
    from drllm.router.compute import path_macs

    routed = RoutedModel.from_pretrained(eight_layers)
    routers = routed.add_routers(kind="linear", actions=5, seed=3)
    with torch.no_grad():
        for layer in routers.layers:
            layer.proj.bias.copy_(torch.tensor([0.0, 0.0, -9.0, 1.0, 1.0]))  # units tempt every layer
    routed.save_pretrained(tmp_path / "r")
    task = choice_file(tmp_path / "mc.jsonl", n=12)
    rows = run_eval(eight_layers, task, str(tmp_path / "e"), routers=str(tmp_path / "r"), target_layers=(6,),
                    baselines=("block-influence",), **COMMON)  # fmt: skip
    routed_row = next(r for r in rows if r.method.startswith("routed") and r.method != "routed-static")
    assert abs(routed_row.layers - 6) <= 1.5, routed_row.layers
    import json

    chosen = json.loads((tmp_path / "e" / "decisions.json").read_text())
    paths = next(m["decisions"] for m in chosen if m["method"] == "routed")
    assert any(d >= 3 for path in paths for d in path), "the routers ran units"
    shares = [path_macs(routed.model.config, p, 8)["fraction"] for p in paths]
    assert min(shares) < 1.0
