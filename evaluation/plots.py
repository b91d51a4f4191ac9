"""Figures of an evaluation: the accuracy/compute trade-off and the per-layer decision heatmap.

Matplotlib's object-oriented API on an Agg canvas (no pyplot state), imported lazily; every PNG is written
through a temporary file so a reader never sees half of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import DECISION_NAMES, sort_rows

_COLORS = {
    "base": "black",
    "routed": "tab:blue",
    "drop-last": "tab:orange",
    "angular": "tab:green",
    "random": "tab:red",
}
_MARKERS = {"routed": "o", "drop-last": "s", "angular": "D", "random": "^"}
_ANNOTATE_MAX_LAYERS = 40


def _new_figure(width: float, height: float):
    """Return a matplotlib ``Figure`` on an Agg canvas, without touching pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> None:
    """Save ``fig`` as a 150 dpi PNG, through a temporary file so readers never see half of it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    os.replace(tmp, target)


def _group_by_method(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in sort_rows(rows):
        groups.setdefault(row["method"], []).append(row)
    return groups


def _draw_base(ax, rows: list[dict[str, Any]]) -> None:
    """Draw the base model as a star with a dashed line at its accuracy."""
    for row in rows:
        acc = 100 * row["accuracy"]
        ax.axhline(acc, color=_COLORS["base"], linestyle="--", linewidth=1, alpha=0.6, zorder=1)
        ax.plot(
            row["layers_per_prompt"],
            acc,
            marker="*",
            markersize=16,
            color=_COLORS["base"],
            linestyle="none",
            label=f"base ({acc:.1f}%)",
            zorder=4,
        )


def _draw_method(ax, method: str, rows: list[dict[str, Any]]) -> None:
    """Draw one method: a line with budget labels for a sweep, a point (with error bar) otherwise."""
    color = _COLORS.get(method)
    marker = _MARKERS.get(method, "o")
    rows = sorted(rows, key=lambda row: row["layers_per_prompt"])
    xs = [row["layers_per_prompt"] for row in rows]
    ys = [100 * row["accuracy"] for row in rows]
    stds = [100 * row["accuracy_std"] if row.get("accuracy_std") is not None else 0.0 for row in rows]
    style = "-" if len(rows) > 1 else "none"
    ax.errorbar(
        xs,
        ys,
        yerr=stds if any(stds) else None,
        color=color,
        marker=marker,
        markersize=7,
        linestyle=style,
        linewidth=1.8,
        capsize=4,
        label=method,
        zorder=3,
    )
    if len(rows) > 1:
        for x, y, row in zip(xs, ys, rows, strict=True):
            if row.get("budget") is None:
                continue
            ax.annotate(
                f"b={row['budget']:g}",
                (x, y),
                xytext=(0, 9),
                textcoords="offset points",
                ha="center",
                fontsize=9,
                color=color,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
            )


def plot_tradeoff(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike, num_layers: int, title: str | None = None
) -> None:
    """Plot accuracy against layers per prompt for every method, and save it as a PNG.

    A method with several rows (the routers' budget sweep) is drawn as a line whose points carry
    their budget; other methods are single points, with error bars where rows give
    ``accuracy_std``. The base model is a star plus a dashed line at its accuracy.

    Args:
        rows: Result rows (see the module docstring).
        path: PNG file to write.
        num_layers: Layers ``L`` of the model, marked by a dotted vertical line.
        title: Optional plot title.
    """
    fig = _new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    groups = _group_by_method(rows)
    for method, group in groups.items():
        if method == "base":
            _draw_base(ax, group)
        else:
            _draw_method(ax, method, group)
    ax.axvline(num_layers, color="grey", linestyle=":", linewidth=1, zorder=1)
    xs = [row["layers_per_prompt"] for row in rows] + [num_layers]
    pad = max(1.0, 0.08 * (max(xs) - min(xs)))
    ax.set_xlim(max(0.0, min(xs) - pad), max(xs) + pad)
    lows = [100 * (row["accuracy"] - (row.get("accuracy_std") or 0.0)) for row in rows]
    highs = [100 * (row["accuracy"] + (row.get("accuracy_std") or 0.0)) for row in rows]
    if rows:
        ypad = max(2.0, 0.12 * (max(highs) - min(lows)))
        ax.set_ylim(min(lows) - ypad, max(highs) + ypad)
    ax.set_xlabel(f"layers executed per prompt (L = {num_layers})", fontsize=12)
    ax.set_ylabel("accuracy (%)", fontsize=12)
    ax.tick_params(labelsize=10)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=13)
    if rows:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=10, frameon=False)
    _save(fig, path)


def decision_shares(decisions) -> Any:
    """Share of examples taking each decision at each layer.

    Args:
        decisions: Integer array-like ``[N, L]`` with values 0 (skip), 1 (execute), 2 (repeat).

    Returns:
        A float array ``[3, L]``; each column sums to 1 (all zeros when ``N == 0``).

    Raises:
        ValueError: If ``decisions`` is not 2-D or holds values outside {0, 1, 2}.
    """
    import numpy as np

    d = np.asarray(decisions)
    if d.ndim == 1 and d.size == 0:
        d = d.reshape(0, 0)
    if d.ndim != 2:
        raise ValueError(f"decisions has shape {d.shape}, expected [N examples, L layers]")
    if d.size and (not np.all(np.isin(d, (0, 1, 2)))):
        raise ValueError("decisions holds values other than 0 (skip), 1 (execute), 2 (repeat)")
    counts = np.stack([(d == k).sum(axis=0) for k in range(3)]).astype(float)  # [3, L]
    return counts / d.shape[0] if d.shape[0] else counts


def _draw_empty(path: str | os.PathLike, title: str | None) -> None:
    fig = _new_figure(6.0, 2.0)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, "no decisions", ha="center", va="center", fontsize=14, transform=ax.transAxes)
    if title:
        ax.set_title(title, fontsize=13)
    _save(fig, path)


def _annotate_cells(ax, shares) -> None:
    """Write each share as a whole percentage, white on dark cells and black on light ones."""
    num_layers = shares.shape[1]
    fontsize = 8.5 if num_layers <= 24 else 7.5
    for k in range(shares.shape[0]):
        for j in range(num_layers):
            value = shares[k, j]
            color = "white" if value > 0.6 else "black"
            ax.text(j, k, f"{100 * value:.0f}", ha="center", va="center", fontsize=fontsize, color=color)


def plot_decisions(
    decisions, path: str | os.PathLike, title: str | None = None, row_labels: Sequence[str] | None = None
) -> None:
    """Draw a [3, L] heatmap of the share of examples that skip, execute or repeat each layer.

    Cells carry percentages when ``L <= 40``. With no examples the figure says "no decisions".

    Args:
        decisions: Integer array-like ``[N, L]`` with values 0 (skip), 1 (execute), 2 (repeat).
        path: PNG file to write.
        title: Optional plot title.
        row_labels: Three labels for the rows; defaults to ``("skip", "execute", "repeat")``.

    Raises:
        ValueError: If ``decisions`` is malformed or ``row_labels`` does not have three entries.
    """
    labels = tuple(row_labels) if row_labels is not None else DECISION_NAMES
    if len(labels) != 3:
        raise ValueError(f"row_labels has {len(labels)} entries, expected 3 (skip, execute, repeat)")
    shares = decision_shares(decisions)
    num_examples, num_layers = len(decisions), shares.shape[1]
    if num_examples == 0 or num_layers == 0:
        _draw_empty(path, title)
        return
    fig = _new_figure(min(20.0, max(6.0, 0.36 * num_layers + 2.5)), 2.9)
    ax = fig.add_subplot()
    image = ax.imshow(shares, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    if num_layers <= _ANNOTATE_MAX_LAYERS:
        _annotate_cells(ax, shares)
    step = 1 if num_layers <= 32 else (2 if num_layers <= 48 else 5)
    ax.set_xticks(range(0, num_layers, step))
    ax.set_yticks(range(3), labels=labels, fontsize=11)
    ax.tick_params(axis="x", labelsize=9)
    ax.set_xlabel("layer", fontsize=12)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    colorbar.set_label("share of examples", fontsize=10)
    ax.set_title(title or f"per-layer decisions over {num_examples} examples", fontsize=12)
    _save(fig, path)
