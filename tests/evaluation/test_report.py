"""Tests for drllm.evaluation.report: tables, JSON, Pareto front and the two PNG figures."""

import subprocess
import sys

import numpy as np
import pytest

from drllm.evaluation import plots, report
from drllm.evaluation.report import Comparison, EvalRow
from drllm.evaluation.stats import Interval

L = 30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _iv(value, half=0.04):
    return Interval(value, value - half, value + half)


def _row(method, accuracy, layers, level=None, budget=None, seed=None, p=0.5, fidelity=10.0):
    row = EvalRow(
        task="toy",
        method=method,
        level=level,
        layers=layers,
        accuracy=_iv(accuracy),
        agreement=_iv(0.9, 0.02),
        fidelity=_iv(fidelity, 1.0),
        n=200,
        budget=budget,
        seed=seed,
        layer_applications=layers * 120.0,
        seconds=12.5,
    )
    if method != "base":
        row.vs_base = Comparison("base", Interval(accuracy - 0.5, accuracy - 0.55, accuracy - 0.45), p)
    return row


@pytest.fixture
def rows():
    return [
        _row("random", 0.22, 24.0, level=24, seed=0),
        _row("routed", 0.43, 23.2, level=24, budget=1.0, p=0.001),
        _row("angular", 0.38, 24.0, level=24),
        _row("routed", 0.52, 28.0, level=28, budget=-0.5),
        _row("base", 0.50, 30.0),
        _row("drop-last", 0.31, 24.0, level=24),
        _row("greedy", 0.48, 28.0, level=28),
    ]


def _is_png(path):
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_sort_rows_puts_base_first_then_levels_from_the_most_layers(rows):
    ordered = report.sort_rows(rows)
    assert [(r.method, r.level) for r in ordered] == [
        ("base", None),
        ("routed", 28),
        ("greedy", 28),
        ("routed", 24),
        ("angular", 24),
        ("drop-last", 24),
        ("random", 24),
    ]


def test_write_results_json_round_trip(rows, tmp_path):
    report.write_results(rows, tmp_path / "out", L, title="toy")
    loaded = report.read_results(tmp_path / "out" / "results.json")
    assert loaded == report.sort_rows(rows)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_markdown_shows_intervals_comparisons_and_words(rows, tmp_path):
    table = report.markdown_table(rows, L)
    for method in ("base", "routed", "drop-last", "angular", "random (seed 0)", "greedy"):
        assert f"| {method}" in table
    assert "52.0 [48.0, 56.0]" in table  # accuracy with its interval, in percent
    assert "p=0.001*" in table  # significant: starred
    assert "| 28.00 |" in table
    assert table.count("\n") == 2 + len(rows)
    words = "\n".join(report.findings(rows))
    assert "significantly below the base model" in words  # routed at 24 layers, p = 0.001
    assert "not significantly different from the base model" in words
    report.write_results(rows, tmp_path, L, title="toy")
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# toy") and table in text and "## Findings" in text


def test_plot_tradeoff_writes_png(rows, tmp_path):
    path = tmp_path / "plots" / "tradeoff.png"
    plots.plot_tradeoff(rows, path, L, title="toy")
    assert _is_png(path)


def test_plot_tradeoff_single_method_without_fidelity(tmp_path):
    path = tmp_path / "base.png"
    row = _row("base", 0.5, 30.0)
    row.fidelity = None
    plots.plot_tradeoff([row], path, L)
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
        plots.decision_shares(np.full((2, 3), 5))
    assert plots.decision_shares(np.full((2, 3), 3)).shape == (5, 3)


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
        target_layers=(3,),
        calibration=4,
    )
    for name in ("results.json", "results.md", "decisions.json", "report.md", ".done"):
        assert name in written, name


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path):
    plain, atomic = tmp_path / "plain.md", tmp_path / "atomic.md"
    plain.write_text("x")
    report.atomic_write_text(atomic, "x")
    assert atomic.stat().st_mode == plain.stat().st_mode
