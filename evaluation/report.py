"""Evaluation reports: typed result rows, the JSON and Markdown tables, and what they say in words.

One ``EvalRow`` per (task, method, level[, seed]): accuracy, agreement with the base model's answer and
greedy fidelity, each with a 95% bootstrap interval over examples; paired comparisons with the base model
and with the best static baseline at the same level (difference with its interval, exact McNemar p);
mean layers per prompt, layer applications (layers times the prompt and answer tokens they ran on) and
wall time. Figures are in ``plots``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drllm.router.atomic import atomic_write_text as _atomic_write_text

from .stats import Interval

METHOD_ORDER = (
    "base",
    "routed",
    "routed-static",
    "routed-random",
    "routed-majority",
    "learned-static",
    "greedy",
    "block-influence",
    "angular",
    "drop-last",
    "random",
)
DECISION_NAMES = ("skip", "execute", "repeat")
SIGNIFICANCE = 0.05


@dataclass
class Comparison:
    """A paired comparison of a method with a reference on the same examples."""

    against: str
    """The reference method (``base`` or the best static baseline at the level)."""
    difference: Interval
    """Accuracy of the method minus the reference's, with its paired bootstrap interval."""
    p_value: float
    """Exact two-sided McNemar p-value."""

    @property
    def significant(self) -> bool:
        """Whether the difference is significant at the 5% level."""
        return self.p_value < SIGNIFICANCE


@dataclass
class EvalRow:
    """One evaluated method at one compute level of one task."""

    task: str
    method: str
    level: int | None
    """Target layers per prompt the method is matched to (None: the base model, or a raw router budget)."""
    layers: float
    """Mean layers executed per prompt on the evaluated examples."""
    accuracy: Interval
    agreement: Interval
    """Share of examples where the method gives the base model's answer."""
    fidelity: Interval | None
    """Mean leading tokens of the base model's greedy continuation the method reproduces."""
    n: int
    budget: float | None = None
    seed: int | None = None
    calibration_layers: float | None = None
    """Routers and their controls: mean layers reached on the calibration prompts."""
    layer_applications: float = 0.0
    seconds: float = 0.0
    path: list[int] | None = None
    """The decision vector of a static method."""
    vs_base: Comparison | None = None
    vs_static: Comparison | None = None
    kl: Interval | None = None
    """Mean KL(base || method) in nats over the base model's greedy continuation (teacher-forced)."""
    token_agreement: Interval | None = None
    """Share of those positions where the method's top-1 next token is the base model's."""
    kl_vs_static: Interval | None = None
    """Mean KL minus that of ``kl_static`` (the static baseline of least KL at the level), paired."""
    kl_static: str | None = None
    compute: float | None = None
    """Mean multiply-adds per prompt token as a share of the full decoder stack (``router.compute``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRow:
        """The row ``to_dict`` wrote."""
        values = dict(data)
        for key in ("accuracy", "agreement", "fidelity", "kl", "token_agreement", "kl_vs_static"):
            if values.get(key) is not None:
                values[key] = Interval(**values[key])
        for key in ("vs_base", "vs_static"):
            if values.get(key) is not None:
                comp = dict(values[key])
                comp["difference"] = Interval(**comp["difference"])
                values[key] = Comparison(**comp)
        return cls(**values)


# --------------------------------------------------------------------------- tables


def sort_rows(rows: Iterable[EvalRow]) -> list[EvalRow]:
    """Rows in report order: per task, base first, then by level (most layers first) and method."""

    def key(row: EvalRow) -> tuple:
        name = row.method.removesuffix("+linear")  # a path with stand-ins right after the path itself
        rank = (
            METHOD_ORDER.index(name) + (name != row.method) * 0.5
            if name in METHOD_ORDER
            else len(METHOD_ORDER)
        )
        level = -1 if row.method == "base" else (row.level if row.level is not None else 10**6)
        return (row.task, row.method != "base", -level, rank, row.method, row.budget or 0.0, row.seed or 0)

    return sorted(rows, key=key)


def _pct(i: Interval) -> str:
    return f"{100 * i.value:.1f} [{100 * i.low:.1f}, {100 * i.high:.1f}]"


def _diff(c: Comparison | None) -> str:
    if c is None:
        return "-"
    d = c.difference
    mark = "*" if c.significant else ""
    return f"{100 * d.value:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] p={c.p_value:.3g}{mark}"


def _name(row: EvalRow) -> str:
    extra = []
    if row.budget is not None and row.method == "routed":
        extra.append(f"b={row.budget:+.2f}")
    if row.seed is not None and row.method == "random":
        extra.append(f"seed {row.seed}")
    return row.method + (f" ({', '.join(extra)})" if extra else "")


def markdown_table(rows: Sequence[EvalRow], num_layers: int) -> str:
    """The result rows as a Markdown table (intervals in brackets; * marks p < 0.05)."""
    lines = [
        "| task | method | level | layers | compute % | accuracy % [95% CI] | vs base, points "
        "| vs best static, points | agrees with base % | fidelity (tokens) | KL to base, nats "
        "| KL vs closest static | top-1 agree % | n |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sort_rows(rows):
        static = "-" if row.vs_static is None else f"{row.vs_static.against}: {_diff(row.vs_static)}"
        fidelity = (
            "-"
            if row.fidelity is None
            else f"{row.fidelity.value:.1f} [{row.fidelity.low:.1f}, {row.fidelity.high:.1f}]"
        )
        cells = (
            row.task,
            _name(row),
            "-" if row.level is None else str(row.level),
            f"{row.layers:.2f}",
            "-" if row.compute is None else f"{100 * row.compute:.1f}",
            _pct(row.accuracy),
            _diff(row.vs_base),
            static,
            f"{100 * row.agreement.value:.1f}",
            fidelity,
            _nats(row.kl),
            "-" if row.kl_vs_static is None else f"{row.kl_static}: {_nats(row.kl_vs_static, signed=True)}",
            "-" if row.token_agreement is None else _pct(row.token_agreement),
            str(row.n),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _nats(i: Interval | None, signed: bool = False) -> str:
    if i is None:
        return "-"
    f = "+.3f" if signed else ".3f"
    return f"{i.value:{f}} [{i.low:{f}}, {i.high:{f}}]"


def findings(rows: Sequence[EvalRow]) -> list[str]:
    """What the rows say, in plain sentences: which differences are significant and which are not."""
    out = []
    for task in dict.fromkeys(r.task for r in rows):
        mine = [r for r in sort_rows(rows) if r.task == task]
        base = next((r for r in mine if r.method == "base"), None)
        if base is None:
            continue
        out.append(
            f"{task}: the base model scores {100 * base.accuracy.value:.1f}% "
            f"[{100 * base.accuracy.low:.1f}, {100 * base.accuracy.high:.1f}] on {base.n} examples "
            "with all layers."
        )
        for row in mine:
            if row.method == "base" or row.vs_base is None:
                continue
            parts = [f"{_name(row)} at {row.layers:.2f} layers: {100 * row.accuracy.value:.1f}%"]
            parts.append(_verdict(row.vs_base, "the base model"))
            if row.level is not None and abs(row.layers - row.level) > 0.5:
                parts.append(f"it missed its level of {row.level} layers: not compared with static paths")
            if row.vs_static is not None and row.method not in ("random",):
                parts.append(_verdict(row.vs_static, f"the best static path ({row.vs_static.against})"))
            if row.fidelity is not None:
                parts.append(f"fidelity {row.fidelity.value:.1f} tokens")
            if row.kl is not None:
                parts.append(f"KL to the base model {_nats(row.kl)} nats")
            if row.kl_vs_static is not None:
                closer = "closer to" if row.kl_vs_static.high < 0 else "further from"
                if row.kl_vs_static.low <= 0 <= row.kl_vs_static.high:
                    parts.append(f"no significant KL difference from {row.kl_static}")
                else:
                    parts.append(f"significantly {closer} the base model than {row.kl_static}")
            out.append("- " + "; ".join(parts) + ".")
    return out


def _verdict(c: Comparison, what: str) -> str:
    d = 100 * c.difference.value
    if not c.significant:
        return f"not significantly different from {what} ({d:+.1f} points, p={c.p_value:.2g})"
    side = "above" if d > 0 else "below"
    low, high = 100 * c.difference.low, 100 * c.difference.high
    return f"significantly {side} {what} ({d:+.1f} points [{low:+.1f}, {high:+.1f}], p={c.p_value:.2g})"


def _json_default(value: Any) -> Any:
    """Turn numpy scalars and arrays into plain Python values for ``json``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``drllm.router.atomic``; the name tests patch lives here)."""
    _atomic_write_text(path, text)


def write_results(
    rows: Sequence[EvalRow], out_dir: str | os.PathLike, num_layers: int, title: str | None = None
) -> None:
    """Write ``results.json`` (the rows) and ``results.md`` (the table and the findings) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ordered = sort_rows(rows)
    data = [row.to_dict() for row in ordered]
    atomic_write_text(out / "results.json", json.dumps(data, indent=2, default=_json_default) + "\n")
    heading = f"# {title}\n\n" if title else ""
    note = (
        f"Model with L = {num_layers} layers. Intervals are 95% bootstrap intervals over examples; "
        "differences are paired on the same examples, with exact McNemar p-values (* p < 0.05).\n\n"
    )
    words = "\n## Findings\n\n" + "\n".join(findings(ordered)) + "\n"
    atomic_write_text(out / "results.md", heading + note + markdown_table(ordered, num_layers) + words)


def read_results(path: str | os.PathLike) -> list[EvalRow]:
    """The rows of a ``results.json``."""
    return [EvalRow.from_dict(d) for d in json.loads(Path(path).read_text())]
