"""The results of one task's evaluation: a row per method with intervals and paired comparisons, and files.

``method_rows`` turns the scored methods into ``EvalRow``s (each compared, paired, with the base model and
with the level's best static baseline); ``write_task_files`` writes ``results.md``/``results.json``,
``examples.jsonl`` (every method on every example), ``decisions.json`` and the figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from drllm.search.evaluator import Outcome

from . import plots, report
from .report import Comparison, EvalRow
from .stats import bootstrap_interval, mcnemar_exact, paired_difference, wilson_interval

# candidates for "the best static baseline"
STATIC = ("greedy", "block-influence", "angular", "drop-last", "learned-static")
UNIT_BASELINES = ("attention-drop", "mlp-drop", "unit-drop")
"""Static paths of sublayer units: compared with the block paths of their level, never counted among them."""
LEVEL_TOLERANCE = 0.5
"""A method whose mean layers on the evaluated examples miss its level by more than this (routers that could
not reach it) is not compared with the static paths of that level: they run another depth."""


def method_rows(task: str, methods: list, scoring: str) -> list[EvalRow]:
    """One row per method: accuracy, agreement, fidelity, KL and token agreement with intervals, paired."""
    base = methods[0]
    best, closest = best_static(methods), closest_static(methods)
    rows = []
    scorings = scoring if isinstance(scoring, list) else [scoring] * len(base.outcomes)  # pooled: per example
    for m in methods:
        correct = [o.reward >= 1.0 for o in m.outcomes]
        agree = [agrees(o, b, k) for o, b, k in zip(m.outcomes, base.outcomes, scorings, strict=True)]
        fidelity = [o.fidelity for o in m.outcomes if o.fidelity is not None]
        row = EvalRow(
            task=task,
            method=m.name,
            level=m.level,
            layers=sum(m.layers) / len(m.layers),
            accuracy=wilson_interval(correct),
            agreement=wilson_interval(agree),
            fidelity=bootstrap_interval(fidelity) if fidelity else None,
            n=len(correct),
            budget=m.budget,
            seed=m.seed,
            calibration_layers=m.calibration_layers,
            layer_applications=sum(a * t for a, t in zip(m.layers, m.tokens, strict=True)) / len(m.layers),
            seconds=m.seconds,
            path=list(m.path) if m.path is not None and m.name != "base" else None,
            compute=sum(m.macs) / len(m.macs) if getattr(m, "macs", None) else None,
        )
        kl, agreement = _values(m, "kl"), _values(m, "token_agreement")
        row.kl = bootstrap_interval(kl) if kl else None
        row.token_agreement = bootstrap_interval(agreement) if agreement else None
        at_level = m.level is not None and abs(row.layers - m.level) <= LEVEL_TOLERANCE
        ref = closest.get(m.level)
        if kl and ref is not None and ref is not m and at_level:
            row.kl_vs_static, row.kl_static = paired_difference(kl, _values(ref, "kl")), ref.name
        if m is not base:
            row.vs_base = compare("base", correct, [o.reward >= 1.0 for o in base.outcomes])
            ref = best.get(m.level)
            if ref is not None and ref is not m and at_level:  # never against a path of another depth
                row.vs_static = compare(ref.name, correct, [o.reward >= 1.0 for o in ref.outcomes])
        rows.append(row)
    return rows


def best_static(methods: list) -> dict[int, Any]:
    """Per level, the static baseline (greedy, block-influence, angular, drop-last) with most correct."""
    best: dict[int, Any] = {}
    for m in methods:
        if m.name in STATIC and m.level is not None:
            score = sum(o.reward >= 1.0 for o in m.outcomes)
            if m.level not in best or score > sum(o.reward >= 1.0 for o in best[m.level].outcomes):
                best[m.level] = m
    return best


def closest_static(methods: list) -> dict[int, Any]:
    """Per level, the static baseline of least mean KL to the base model (when KL was measured)."""
    closest: dict[int, Any] = {}
    for m in methods:
        kl = _values(m, "kl")
        if m.name in STATIC and m.level is not None and kl and len(kl) == len(m.outcomes):
            mean = sum(kl) / len(kl)
            if m.level not in closest or mean < sum(_values(closest[m.level], "kl")) / len(kl):
                closest[m.level] = m
    return closest


def _values(method, key: str) -> list[float]:
    return [getattr(o, key) for o in method.outcomes if getattr(o, key) is not None]


def write_task_files(
    folder: Path, task: str, rows: list[EvalRow], methods: list, examples, L: int, scoring: str, title: str
) -> None:
    """``results.md``/``results.json``, ``examples.jsonl``, ``decisions.json`` and the figures of one task."""
    folder.mkdir(parents=True, exist_ok=True)
    report.write_results(rows, folder, L, title=title)
    lines = []
    for m in methods:
        base = methods[0].outcomes
        for ex, o, b, layers in zip(examples, m.outcomes, base, m.layers, strict=True):
            lines.append(
                json.dumps(
                    {
                        "task": task,
                        "id": str(ex.id),
                        "method": m.name,
                        "level": m.level,
                        "budget": m.budget,
                        "seed": m.seed,
                        "layers": layers,
                        "correct": o.reward >= 1.0,
                        "score": o.margin,
                        "answer": o.answer,
                        "agree": agrees(o, b, scoring),
                        "fidelity": o.fidelity,
                        "kl": o.kl,
                        "token_agreement": o.token_agreement,
                    }
                )
            )
    report.atomic_write_text(folder / "examples.jsonl", "\n".join(lines) + "\n")
    routed = [m for m in methods if m.name == "routed"]
    saved = [
        {"method": m.name, "level": m.level, "budget": m.budget, "decisions": m.decisions} for m in routed
    ]
    report.atomic_write_text(folder / "decisions.json", json.dumps(saved) + "\n")
    plots.plot_tradeoff(rows, folder / "tradeoff.png", L, title=title)
    if routed:
        shown = min(routed, key=lambda m: abs((m.level or L) - (L - 3)))
        label = f"routed at {shown.level} layers" if shown.level else f"routed, budget {shown.budget:g}"
        plots.plot_decisions(shown.decisions, folder / "decisions.png", title=f"{task}: {label}")
    else:
        paths = [list(m.path) for m in methods if m.path is not None and m.name in STATIC]
        plots.plot_decisions(paths, folder / "decisions.png", title=f"{task}: static paths, all levels")


def agrees(outcome: Outcome, base: Outcome, scoring: str) -> bool:
    """Whether a path gives the base model's answer (teacher-forced exact answers: its whole continuation).

    The base model agrees with itself; a path that, like the base model, gives no answer (none found in the
    decoded text, or tied options) agrees with it too.
    """
    if outcome is base:
        return True
    if scoring == "teacher-forced":
        return outcome.fidelity is not None and outcome.fidelity == base.fidelity
    return outcome.answer == base.answer


def compare(against: str, a: list[bool], b: list[bool]) -> Comparison:
    """The paired difference of ``a`` and ``b`` (accuracy of a minus b) with its exact McNemar p-value."""
    return Comparison(against, paired_difference(a, b), mcnemar_exact(a, b))
