"""Prompts-only JSONL (no gold): eval judges closeness to the base model; tools that need gold refuse."""

import json

import pytest

from drllm.evaluation.evaluate import run_eval
from drllm.search.tasks import get_task

COMMON = dict(
    batch_size=4, calibration=3, target_layers=(3,), baselines=("block-influence", "greedy"), device="cpu"
)


def _prompts(path, n=8, extra=None):
    rows = [{"id": f"p{k}", "prompt": f"tell me about the number {k} and"} for k in range(n)]
    if extra:
        rows.append(extra)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"jsonl:{path}"


def test_prompts_are_judged_by_closeness_to_the_base_model(tmp_path, tiny_model_dir):
    task = _prompts(tmp_path / "p.jsonl")
    assert not get_task(task).has_gold
    rows = {
        r.method: r
        for r in run_eval(tiny_model_dir, task, str(tmp_path / "e"), limit=5, fidelity_tokens=4, **COMMON)
    }
    base, path = rows["base"], rows["block-influence"]
    assert (
        base.accuracy.value == 1.0
        and base.fidelity.value == 4
        and base.kl.value == pytest.approx(0, abs=1e-5)
    )
    assert path.kl.value > 0 and path.fidelity.value <= 4
    assert path.accuracy.value == pytest.approx(
        sum(f == 4 for f in _fidelities(tmp_path / "e", "block-influence")) / 5
    )
    assert "prompts only: a path counts as right" in (tmp_path / "e" / "results.md").read_text()


def _fidelities(folder, method):
    lines = [json.loads(x) for x in (folder / "examples.jsonl").read_text().splitlines()]
    return [x["fidelity"] for x in lines if x["method"] == method]


def test_prompts_only_refusals_name_the_problem(tmp_path, tiny_model_dir):
    from drllm.search.runner import run_search

    task = _prompts(tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="holds prompts only .* the search"):
        run_search(tiny_model_dir, task, str(tmp_path / "s.jsonl"), simulations=2, device="cpu")
    with pytest.raises(ValueError, match="fidelity_tokens must be >= 1"):
        run_eval(tiny_model_dir, task, str(tmp_path / "e"), fidelity_tokens=0, **COMMON)
    with pytest.raises(ValueError, match="scoring 'generate' needs gold"):
        run_eval(tiny_model_dir, task, str(tmp_path / "e"), scoring="generate", **COMMON)
    mixed = _prompts(tmp_path / "m.jsonl", extra={"id": "g", "prompt": "x", "target": "y"})
    with pytest.raises(ValueError, match="line 9: a gold row in a prompts-only file"):
        get_task(mixed).load("all", strict=True)
    assert not (tmp_path / "e").exists() and not (tmp_path / "s.jsonl").exists()


def test_prompts_feed_the_kl_teacher_pool(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from drllm.search.teacher import task_prompts

    task = _prompts(tmp_path / "p.jsonl", n=3)
    pool = task_prompts([task], AutoTokenizer.from_pretrained(tiny_model_dir))
    assert [p.text for p in pool] == [f"tell me about the number {k} and" for k in range(3)]


def test_a_paths_file_is_not_taken_for_prompts(tmp_path):
    paths = tmp_path / "paths.jsonl"
    paths.write_text(json.dumps({"id": "a", "prompt": "p", "decisions": [1, 1, 1, 1]}) + "\n")
    with pytest.raises(ValueError, match="cannot tell the row kind"):
        get_task(f"jsonl:{paths}")
    odd = _prompts(tmp_path / "o.jsonl", n=2, extra={"id": "z", "prompt": "p", "reward": 1})
    with pytest.raises(ValueError, match="line 3: prompts-only rows hold"):
        get_task(odd).load("all", strict=True)
