"""Figures of an evaluation: the accuracy/compute trade-off and the per-layer decision heatmap.

Matplotlib's object-oriented API on an Agg canvas (no pyplot state), imported lazily; every PNG is written
through a temporary file so a reader never sees half of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drllm.router.atomic import atomic_write

from .report import DECISION_NAMES, sort_rows

UNIT_NAMES = ("MLP alone", "attention alone")

_COLORS = {
    "base": "black",
    "routed": "tab:blue",
    "routed-static": "tab:pink",
    "routed-random": "tab:cyan",
    "routed-majority": "tab:purple",
    "greedy": "tab:olive",
    "block-influence": "tab:brown",
    "angular": "tab:green",
    "drop-last": "tab:orange",
    "random": "tab:red",
}
_MARKERS = {
    "routed": "o",
    "routed-static": "*",
    "routed-random": "v",
    "routed-majority": "P",
    "greedy": "X",
    "block-influence": "p",
}
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
    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))


def _series(rows: Sequence[Any]) -> dict[str, list[Any]]:
    """Rows grouped by method (random seeds pooled into one series), each sorted by layers."""
    groups: dict[str, list[Any]] = {}
    for row in sort_rows(rows):
        groups.setdefault(row.method, []).append(row)
    return {m: sorted(g, key=lambda r: r.layers) for m, g in groups.items()}


def _panel(ax, rows: Sequence[Any], value, scale: float, ylabel: str, num_layers: int) -> None:
    series = _series(rows)
    others = [m for m in series if m != "base"]
    for method, group in series.items():
        # methods at the same level are dodged sideways by up to 0.3 layers, so no interval hides another
        shift = (
            0.0
            if method == "base" or len(others) < 2
            else 0.3 * (others.index(method) / (len(others) - 1) - 0.5) * 2
        )
        points = [(r.layers + shift, value(r)) for r in group if value(r) is not None]
        if not points:
            continue
        xs = [x for x, _ in points]
        ys = [scale * v.value for _, v in points]
        err = [
            [scale * (v.value - v.low) for _, v in points],
            [scale * (v.high - v.value) for _, v in points],
        ]
        if method == "base":
            ax.axhspan(
                scale * points[0][1].low, scale * points[0][1].high, color="grey", alpha=0.15, zorder=0
            )
            ax.axhline(ys[0], color="black", linestyle="--", linewidth=1, zorder=1)
            ax.plot(
                xs, ys, marker="*", markersize=15, color="black", linestyle="none", label="base", zorder=4
            )
            continue
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            color=_COLORS.get(method),
            marker=_MARKERS.get(method, "o" if method not in ("drop-last", "angular", "random") else "s"),
            markersize=6,
            linestyle="-" if len(xs) > 1 and method != "random" else "none",
            linewidth=1.5,
            capsize=3,
            alpha=0.9,
            label=method,
            zorder=3,
        )
    ax.axvline(num_layers, color="grey", linestyle=":", linewidth=1, zorder=1)
    ax.set_ylabel(ylabel, fontsize=11)
    ax.grid(True, alpha=0.3)


def plot_tradeoff(
    rows: Sequence[Any], path: str | os.PathLike, num_layers: int, title: str | None = None
) -> None:
    """Accuracy (top) and greedy fidelity (bottom) against layers per prompt, with 95% intervals.

    Every method sits on the same x-axis, the mean layers it executed, dodged sideways by at most 0.3 layers
    so that methods at one level do not hide each other's intervals; the base model is a star with a dashed
    line and a grey band (its interval).

    Args:
        rows: ``EvalRow`` objects of one task.
        path: PNG file to write.
        num_layers: Layers ``L`` of the model, marked by a dotted vertical line.
        title: Optional plot title.
    """
    has_fidelity = any(r.fidelity is not None for r in rows)
    fig = _new_figure(8.0, 7.5 if has_fidelity else 4.8)
    axes = fig.subplots(2, 1, sharex=True) if has_fidelity else [fig.add_subplot()]
    _panel(axes[0], rows, lambda r: r.accuracy, 100, "accuracy (%)", num_layers)
    if has_fidelity:
        _panel(axes[1], rows, lambda r: r.fidelity, 1, "greedy fidelity (tokens)", num_layers)
    axes[-1].set_xlabel(f"layers executed per prompt (L = {num_layers})", fontsize=11)
    if title:
        axes[0].set_title(title, fontsize=12)
    if rows:
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False)
    _save(fig, path)


def decision_shares(decisions) -> Any:
    """Share of examples taking each decision at each layer.

    Args:
        decisions: Integer array-like ``[N, L]`` with values 0 (skip), 1 (execute), 2 (repeat), and 3 (the
            MLP alone), 4 (the attention alone) for sublayer paths.

    Returns:
        A float array ``[3, L]``, or ``[5, L]`` when any value is a sublayer unit; each column sums to 1
        (all zeros when ``N == 0``).

    Raises:
        ValueError: If ``decisions`` is not 2-D or holds values outside 0-4.
    """
    import numpy as np

    d = np.asarray(decisions)
    if d.ndim == 1 and d.size == 0:
        d = d.reshape(0, 0)
    if d.ndim != 2:
        raise ValueError(f"decisions has shape {d.shape}, expected [N examples, L layers]")
    if d.size and (not np.all(np.isin(d, (0, 1, 2, 3, 4)))):
        raise ValueError(
            "decisions holds values other than 0 (skip), 1 (execute), 2 (repeat), 3 (MLP alone), "
            "4 (attention alone)"
        )
    rows = 5 if d.size and d.max() >= 3 else 3
    counts = np.stack([(d == k).sum(axis=0) for k in range(rows)]).astype(float)  # [3 or 5, L]
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
    """Draw a heatmap of the share of examples taking each decision at each layer (``[3, L]`` or ``[5, L]``).

    Cells carry percentages when ``L <= 40``. With no examples the figure says "no decisions".

    Args:
        decisions: Integer array-like ``[N, L]`` with values 0-4 (see :func:`decision_shares`).
        path: PNG file to write.
        title: Optional plot title.
        row_labels: Labels for the rows, one per decision; defaults to ``("skip", "execute", "repeat")``
            (and "MLP alone", "attention alone" for sublayer paths).

    Raises:
        ValueError: If ``decisions`` is malformed or ``row_labels`` has not one entry per row.
    """
    shares = decision_shares(decisions)
    labels = tuple(row_labels) if row_labels is not None else (DECISION_NAMES + UNIT_NAMES)[: len(shares)]
    if len(labels) != len(shares):
        raise ValueError(f"row_labels has {len(labels)} entries, expected {len(shares)} (one per decision)")
    num_examples, num_layers = len(decisions), shares.shape[1]
    if num_examples == 0 or num_layers == 0:
        _draw_empty(path, title)
        return
    fig = _new_figure(min(20.0, max(6.0, 0.36 * num_layers + 2.5)), 2.9 if len(shares) == 3 else 3.9)
    ax = fig.add_subplot()
    image = ax.imshow(
        100 * shares, aspect="auto", cmap="Blues", vmin=0.0, vmax=100.0, interpolation="nearest"
    )
    if num_layers <= _ANNOTATE_MAX_LAYERS:
        _annotate_cells(ax, shares)
    step = 1 if num_layers <= 32 else (2 if num_layers <= 48 else 5)
    ax.set_xticks(range(0, num_layers, step))
    ax.set_yticks(range(len(shares)), labels=labels, fontsize=11)
    ax.tick_params(axis="x", labelsize=9)
    ax.set_xlabel("layer", fontsize=12)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    colorbar.set_label("% of examples", fontsize=10)  # the cells' own unit
    ax.set_title(title or f"per-layer decisions over {num_examples} examples", fontsize=12)
    _save(fig, path)
