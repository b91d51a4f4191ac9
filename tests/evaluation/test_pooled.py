"""``drllm eval`` over several tasks: each in its own folder, and pooled rows over all their examples."""

import json

import pytest
from task_files import choice_file, exact_file

from drllm.evaluation.evaluate import run_eval


def test_several_tasks_are_reported_each_and_pooled(tmp_path, tiny_model_dir):
    mc = choice_file(tmp_path / "mc.jsonl", n=8)
    exact = exact_file(tmp_path / "ex.jsonl", n=4)
    settings = dict(batch_size=4, calibration=3, target_layers=(3,), baselines=("block-influence",))
    rows = run_eval(
        tiny_model_dir, f"{mc},{exact}", str(tmp_path / "e"), fidelity_tokens=3, device="cpu", **settings
    )
    by_task = {}
    for r in rows:
        by_task.setdefault(r.task, {})[r.method] = r
    assert set(by_task) == {mc, exact, "pooled"}
    pooled = by_task["pooled"]
    for method in ("base", "block-influence"):
        parts = [by_task[mc][method], by_task[exact][method]]
        assert pooled[method].n == sum(p.n for p in parts)
        want = sum(p.accuracy.value * p.n for p in parts) / pooled[method].n
        assert pooled[method].accuracy.value == pytest.approx(want)
        assert pooled[method].layers == pytest.approx(sum(p.layers * p.n for p in parts) / pooled[method].n)
    assert pooled["block-influence"].vs_base is not None  # paired on the same pooled examples
    saved = json.loads((tmp_path / "e" / "results.json").read_text())
    assert {r["task"] for r in saved} == {mc, exact, "pooled"}
    assert "pooled: the" in (tmp_path / "e" / "results.md").read_text()
    assert len(list((tmp_path / "e").glob("*/results.json"))) == 2  # each task in its own folder


def test_reruns_with_other_tasks_leave_nothing_stale(tmp_path, tiny_model_dir):
    mc = choice_file(tmp_path / "mc.jsonl", n=6)
    other = choice_file(tmp_path / "other.jsonl", n=6)
    settings = dict(
        batch_size=4, calibration=3, target_layers=(3,), baselines=("angular",), fidelity_tokens=2
    )
    out = tmp_path / "e"
    run_eval(tiny_model_dir, mc, str(out), device="cpu", **settings)  # one task: its files at the top
    run_eval(tiny_model_dir, f"{mc},{other}", str(out), device="cpu", **settings)
    top = {p.name for p in out.iterdir()}
    assert "examples.jsonl" not in top and "tradeoff.png" not in top  # the single task's files are gone
    assert len([p for p in out.iterdir() if p.is_dir()]) == 2
    run_eval(tiny_model_dir, mc, str(out), device="cpu", **settings)  # and back to one
    assert not [p for p in out.iterdir() if p.is_dir()]  # the earlier task folders are gone
    assert {r["task"] for r in json.loads((out / "results.json").read_text())} == {mc}
