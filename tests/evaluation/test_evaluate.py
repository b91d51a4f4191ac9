"""``run_eval`` on tiny random models: files, transformers parity, static baseline rows."""

import json

import pytest
import torch
from task_files import choice_file, exact_file
from tiny_models import tiny_model, tiny_tokenizer

from drllm.evaluation.evaluate import run_eval
from drllm.evaluation.report import ROW_KEYS
from drllm.router import RoutedModel, encode_prompt
from drllm.search.tasks import get_task


def bias_routers(routed, skip_layers):
    """Routers whose logits are constant: skip the given layers, execute the others."""
    routed.add_routers(num_windows=2, bottleneck=8)
    with torch.no_grad():
        for i, router in enumerate(routed.routers.layers):
            last = router.net[2]
            last.weight.zero_()
            last.bias.copy_(torch.tensor([3.0, 0.0, -3.0] if i in skip_layers else [-3.0, 3.0, -3.0]))


def plain_accuracy(model, tokenizer, task_name):
    """Accuracy of option log-likelihood scoring with the unwrapped model, one prompt + option at a time."""
    task = get_task(task_name)
    right = []
    for ex in task.load():
        prompt = encode_prompt(tokenizer, task.prompt(ex, tokenizer))
        scores = []
        for option in task.continuations(ex, "mc-loglik", tokenizer=tokenizer):
            cont = tokenizer(option, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + cont])
            with torch.no_grad():
                logp = model(ids).logits[0].log_softmax(-1)
            scores.append(sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(cont)))
        right.append(max(range(len(scores)), key=scores.__getitem__) == ex.answer)
    return sum(right) / len(right)


def test_run_eval_base_matches_transformers(tmp_path):
    task = choice_file(tmp_path / "mc.jsonl")
    tok = tiny_tokenizer()
    routed = RoutedModel.from_pretrained(tiny_model("llama", seed=3))
    rows = run_eval(routed, task, str(tmp_path / "out"), tokenizer=tok, batch_size=4, progress=False)
    assert [r["method"] for r in rows] == ["base"]
    base = rows[0]
    assert base["accuracy"] == pytest.approx(plain_accuracy(tiny_model("llama", seed=3), tok, task))
    assert base["layers_per_prompt"] == 4 and base["n"] == 6
    for name in ("results.json", "results.md", "tradeoff.png", "decisions.png"):
        assert (tmp_path / "out" / name).is_file()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(ROW_KEYS) <= set(saved[0])


def test_run_eval_routed_and_baselines(tmp_path):
    task = choice_file(tmp_path / "mc.jsonl")
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    bias_routers(routed, skip_layers={1, 2})
    rows = run_eval(
        routed,
        task,
        str(tmp_path / "out"),
        tokenizer=tiny_tokenizer(),
        budgets=(-1.0, 0.0),
        random_seeds=2,
        calibration=3,
        batch_size=4,
        progress=False,
    )
    by = {(r["method"], r["budget"]): r for r in rows}
    assert set(by) == {
        ("base", None),
        ("routed", -1.0),
        ("routed", 0.0),
        ("drop-last", None),
        ("angular", None),
        ("random", None),
    }
    assert by[("routed", 0.0)]["layers_per_prompt"] == 2
    assert all(r["layers_per_prompt"] == 2 for r in rows if r["method"] not in ("base", "routed"))
    assert by[("drop-last", None)]["skipped"] == [1, 2]
    assert "accuracy_std" in by[("random", None)]
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        assert r["layer_applications"] > r["layers_per_prompt"]
    decisions = json.loads((tmp_path / "out" / "decisions.json").read_text())
    assert [1, 0, 0, 1] in next(d["decisions"] for d in decisions if d["budget"] == 0.0)
    assert routed.budget == 0.0


def test_run_eval_exact_and_errors(tmp_path):
    task = exact_file(tmp_path / "ex.jsonl")
    tok = tiny_tokenizer()
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    with pytest.raises(ValueError, match="known baselines: drop-last, angular, random"):
        run_eval(routed, task, str(tmp_path / "out"), tokenizer=tok, baselines=("nope",))
    bias_routers(routed, skip_layers={2})
    rows = run_eval(
        routed,
        task,
        str(tmp_path / "out"),
        tokenizer=tok,
        budgets=(0.0,),
        max_new_tokens=3,
        baselines=("drop-last",),
        progress=False,
    )
    got = [(r["method"], r["layers_per_prompt"]) for r in rows]
    assert got == [("base", 4), ("routed", 3), ("drop-last", 3)]
    prompt_tokens = sum(len(encode_prompt(tok, f"add {i} and 1:")) for i in range(3)) / 3
    base = rows[0]
    assert 4 * (prompt_tokens + 1) <= base["layer_applications"] <= 4 * (prompt_tokens + 3)
