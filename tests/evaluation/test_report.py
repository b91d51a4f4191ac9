"""Tests for drllm.evaluation.report: tables, JSON, Pareto front and the two PNG figures."""

import json
import subprocess
import sys

import numpy as np
import pytest

from drllm.evaluation import plots, report

L = 30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(method, accuracy, layers, budget=None, **extra):
    return {
        "method": method,
        "budget": budget,
        "accuracy": accuracy,
        "layers_per_prompt": layers,
        "layer_applications": layers * 120.0,
        "seconds": 12.5,
        "n": 200,
        **extra,
    }


@pytest.fixture
def rows():
    return [
        _row("random", 0.22, 24.0, accuracy_std=0.03),
        _row("routed", 0.43, 23.2, budget=1.0),
        _row("angular", 0.38, 24.0),
        _row("routed", 0.52, 28.0, budget=-0.5),
        _row("base", 0.50, 30.0),
        _row("drop-last", 0.31, 24.0),
        _row("routed", 0.48, 25.0, budget=0.5),
    ]


def _is_png(path):
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_sort_rows_puts_base_then_routed_by_budget_then_baselines(rows):
    ordered = report.sort_rows(rows)
    assert [r["method"] for r in ordered] == [
        "base",
        "routed",
        "routed",
        "routed",
        "drop-last",
        "angular",
        "random",
    ]
    assert [r["budget"] for r in ordered[1:4]] == [-0.5, 0.5, 1.0]


def test_write_results_json_round_trip(rows, tmp_path):
    report.write_results(rows, tmp_path / "out", L, title="toy")
    loaded = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(loaded) == len(rows)
    for row in loaded:
        assert set(report.ROW_KEYS) <= set(row)
    assert loaded[0]["method"] == "base"
    assert sorted(map(json.dumps, loaded)) == sorted(map(json.dumps, rows))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_write_results_accepts_numpy_scalars(tmp_path):
    row = _row("base", np.float32(0.5), np.float64(30.0))
    row["n"] = np.int64(200)
    report.write_results([row], tmp_path, L)
    assert json.loads((tmp_path / "results.json").read_text())[0]["n"] == 200


def test_write_results_names_missing_keys(tmp_path):
    with pytest.raises(ValueError, match="layer_applications"):
        report.write_results([{"method": "base", "accuracy": 0.5}], tmp_path, L)


def test_markdown_has_every_method_and_formatted_numbers(rows, tmp_path):
    table = report.markdown_table(rows, L)
    for method in ("base", "routed", "drop-last", "angular", "random"):
        assert f"| {method} |" in table
    assert "| 52.0 |" in table  # accuracy in percent
    assert "22.0 ± 3.0" in table  # random baseline with its std
    assert "| 28.00 |" in table  # layers per prompt
    assert "+2.00 (+6.7%)" in table  # saved vs L = 30
    assert "3,360.0" in table  # layer applications
    assert "| -0.5 |" in table  # budget
    assert table.count("\n") == 2 + len(rows)
    report.write_results(rows, tmp_path, L, title="toy")
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# toy") and table in text


def test_plot_tradeoff_writes_png(rows, tmp_path):
    path = tmp_path / "plots" / "tradeoff.png"
    plots.plot_tradeoff(rows, path, L, title="toy")
    assert _is_png(path)


def test_plot_tradeoff_single_method(tmp_path):
    path = tmp_path / "base.png"
    plots.plot_tradeoff([_row("base", 0.5, 30.0)], path, L)
    assert _is_png(path)


def test_decision_shares_columns_sum_to_one():
    rng = np.random.default_rng(0)
    decisions = rng.integers(0, 3, size=(17, L))
    shares = plots.decision_shares(decisions)
    assert shares.shape == (3, L)
    np.testing.assert_allclose(shares.sum(axis=0), np.ones(L))
    np.testing.assert_allclose(shares[2], (decisions == 2).mean(axis=0))


def test_decision_shares_rejects_bad_input():
    with pytest.raises(ValueError, match="expected"):
        plots.decision_shares(np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="values"):
        plots.decision_shares(np.full((2, 3), 3))


@pytest.mark.parametrize("num_layers", [12, 80])
def test_plot_decisions_writes_png(tmp_path, num_layers):
    decisions = np.random.default_rng(1).integers(0, 3, size=(9, num_layers))
    path = tmp_path / f"decisions_{num_layers}.png"
    plots.plot_decisions(decisions, path, title="toy", row_labels=["S", "E", "R"])
    assert _is_png(path)


@pytest.mark.parametrize("empty", [np.zeros((0, L), dtype=int), []])
def test_plot_decisions_without_examples(tmp_path, empty):
    path = tmp_path / "empty.png"
    plots.plot_decisions(empty, path)
    assert _is_png(path)
    np.testing.assert_array_equal(plots.decision_shares(np.zeros((0, 4), int)), np.zeros((3, 4)))


def test_plot_decisions_checks_row_labels(tmp_path):
    with pytest.raises(ValueError, match="row_labels"):
        plots.plot_decisions(np.ones((2, 4), int), tmp_path / "x.png", row_labels=["a", "b"])


def test_import_is_cheap():
    code = "import sys, drllm.evaluation.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("old")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        report.atomic_write_text(target, "new")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_eval_and_demo_outputs_are_written_atomically(tmp_path, monkeypatch):
    """Every file run_eval and the demo write goes through atomic_write_text or an atomic PNG save."""
    import torch
    from task_files import choice_file
    from tiny_models import tiny_model, tiny_tokenizer

    from drllm.cli import demo
    from drllm.router import RoutedModel

    written = []
    real = report.atomic_write_text
    monkeypatch.setattr(report, "atomic_write_text", lambda p, t: (written.append(p.name), real(p, t)))
    torch.manual_seed(0)
    routed = RoutedModel(tiny_model("llama"))
    task = choice_file(tmp_path / "t.jsonl", n=6)
    demo.run_demo(
        output=str(tmp_path / "d"),
        task=task,
        train_examples=4,
        eval_examples=3,
        simulations=2,
        epochs=1,
        routed=routed,
        tokenizer=tiny_tokenizer(),
        progress=False,
        budgets=(0.0,),
    )
    for name in ("results.json", "results.md", "decisions.json", "report.md", ".done"):
        assert name in written, name
