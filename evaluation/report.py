"""Evaluation reports: the JSON and Markdown results tables (figures are in ``plots``).

An evaluation yields one row per (method, budget) pair, a plain dict with the keys

- ``method``: ``"base"``, ``"routed"``, ``"drop-last"``, ``"angular"`` or ``"random"``;
- ``budget``: the routers' budget bias (float), ``None`` for the other methods;
- ``accuracy``: share of correct answers, 0..1 (optionally ``accuracy_std`` for seeded baselines);
- ``layers_per_prompt``: mean layers executed per prompt, i.e. the mean of ``sum(d)``;
- ``layer_applications``: mean layer applications over generation, ``layers * (prompt + generated
  tokens)``, as the Dr.LLM paper counts them;
- ``seconds``: wall clock of the evaluation; ``n``: number of examples.

This module only formats and draws such rows. It needs numpy and matplotlib (Agg, object-oriented
API, no pyplot state) and imports both lazily, so importing it is cheap.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

METHOD_ORDER = ("base", "routed", "drop-last", "angular", "random")
DECISION_NAMES = ("skip", "execute", "repeat")
ROW_KEYS = ("method", "budget", "accuracy", "layers_per_prompt", "layer_applications", "seconds", "n")


# --------------------------------------------------------------------------- tables


def sort_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return rows in report order: base, routed by budget, then the static baselines.

    Args:
        rows: Result rows; methods outside ``METHOD_ORDER`` come last, by name.

    Returns:
        A new list, the rows themselves are not copied.
    """

    def key(row: dict[str, Any]) -> tuple:
        method = row["method"]
        rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        budget = row.get("budget")
        return (rank, method, budget is None, budget if budget is not None else 0.0)

    return sorted(rows, key=key)


def _format_accuracy(row: dict[str, Any]) -> str:
    text = f"{100 * row['accuracy']:.1f}"
    std = row.get("accuracy_std")
    return f"{text} ± {100 * std:.1f}" if std is not None else text


def _format_budget(budget: float | None) -> str:
    return "-" if budget is None else f"{budget:g}"


def markdown_table(rows: Sequence[dict[str, Any]], num_layers: int) -> str:
    """Format result rows as a Markdown table.

    Args:
        rows: Result rows (see the module docstring); sorted with ``sort_rows``.
        num_layers: Layers ``L`` of the model, to show how many layers each method saves.

    Returns:
        The table, header included, ending with a newline.
    """
    header = (
        "| method | budget | accuracy (%) | layers / prompt | saved vs L | layer applications "
        "| seconds | n |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    )
    lines = list(header)
    for row in sort_rows(rows):
        layers = float(row["layers_per_prompt"])
        cells = (
            row["method"],
            _format_budget(row.get("budget")),
            _format_accuracy(row),
            f"{layers:.2f}",
            f"{num_layers - layers:+.2f} ({100 * (num_layers - layers) / num_layers:+.1f}%)",
            f"{float(row['layer_applications']):,.1f}",
            f"{float(row['seconds']):.1f}",
            str(int(row["n"])),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    """Turn numpy scalars and arrays into plain Python values for ``json``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` beside ``path`` in a temporary file, then move it over ``path`` (never half a file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(
    rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, num_layers: int, title: str | None = None
) -> None:
    """Write ``results.json`` and ``results.md`` into ``out_dir``.

    Args:
        rows: Result rows (see the module docstring).
        out_dir: Directory to write to; created if missing.
        num_layers: Layers ``L`` of the model.
        title: Optional heading for the Markdown file.

    Raises:
        ValueError: If a row lacks one of ``ROW_KEYS``.
    """
    for i, row in enumerate(rows):
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"row {i} ({row.get('method', '?')}) lacks keys {missing}, expected {ROW_KEYS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ordered = sort_rows(rows)
    atomic_write_text(out / "results.json", json.dumps(ordered, indent=2, default=_json_default) + "\n")
    heading = f"# {title}\n\n" if title else ""
    note = f"Model with L = {num_layers} layers; accuracy over n examples.\n\n"
    atomic_write_text(out / "results.md", heading + note + markdown_table(ordered, num_layers))
