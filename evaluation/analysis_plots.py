"""Files of ``drllm analyze``: analysis.json, one figure per analysis and report.md in plain words.

Figures use ``plots``' Agg canvas and atomic PNG writes; layers are numbered from 0 on every axis, as
decision vectors index them. The definitions behind every number are in ``analysis``' docstring.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from drllm.router.atomic import files_together

from .analysis_report import (  # noqa: F401 - moved; importable from here as before
    _geometry_lines,
    _layers,
    _lens_lines,
    _num,
    _overlay_lines,
    _safety_lines,
    report_text,
)
from .plots import _new_figure, _save
from .report import atomic_write_text

SKIP_COLOR, REPEAT_COLOR = "tab:red", "tab:blue"
LAYER_AXIS = "layer (numbered from 0)"


def write_all(result: dict, folder: Path) -> list[Path]:
    """Write analysis.json, the figures and report.md as one set; returns the paths written.

    Every file is written into a staging folder before any is moved in (``files_together``); then the
    analyze files of an earlier run that this one does not write (``overlay.png`` without an overlay) are
    removed, so the folder never mixes two runs. Other files are never touched.

    Raises:
        ValueError: from ``check_analysis_output``, for a folder analyze did not write.
    """
    check_analysis_output(folder)  # again: another program may have written there since the run began
    names = ["analysis.json", *FIGURES, *(["overlay.png"] if result["overlays"] else []), "report.md"]
    with files_together(folder) as stage:
        atomic_write_text(
            stage / "analysis.json", json.dumps(_clean(result), indent=1, allow_nan=False) + "\n"
        )
        for name, draw in FIGURES.items():
            draw(result, stage / name)
        if result["overlays"]:
            plot_overlay(result, stage / "overlay.png")
        atomic_write_text(stage / "report.md", report_text(result))
    for name in ANALYSIS_FILES:
        if name not in names:
            (folder / name).unlink(missing_ok=True)
    return [folder / name for name in names]


def is_analysis_folder(folder: Path) -> bool:
    """Whether ``folder`` holds the analysis.json of an earlier ``drllm analyze`` run."""
    try:
        saved = json.loads((folder / "analysis.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(saved, dict) and {"num_layers", "residual_geometry", "logit_lens"} <= saved.keys()


def check_analysis_output(output: str | Path) -> Path:
    """Refuse, before any work, an output folder analyze would have to overwrite other files in.

    analyze writes into a new or empty folder, or into an earlier analyze output (recognised by its
    analysis.json), whose analyze files it replaces as a set.

    Raises:
        ValueError: naming the folder and what is in the way (a file, or the files at risk).
    """
    if not str(output).strip():
        raise ValueError("--output is empty: name the folder for analysis.json, the figures and report.md")
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"--output {output} is a file; drllm analyze writes a folder (analysis.json, figures and "
            "report.md): choose a folder"
        )
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not present or is_analysis_folder(folder):
        return folder
    at_risk = [name for name in ANALYSIS_FILES if name in present]
    what = f"its {', '.join(at_risk)} would be replaced" if at_risk else f"it holds {', '.join(present[:3])}"
    raise ValueError(
        f"--output {output} is not empty and holds no analysis.json of an earlier drllm analyze: {what}. "
        "analyze never overwrites files it did not write: choose a new or empty folder"
    )


def _clean(value):
    """``value`` with every non-finite float replaced by None, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _title(result: dict, what: str) -> str:
    return f"{what}: {result['model']} on {result['task']} ({result['prompts']} prompts)"


def _layer_ticks(ax, count: int) -> None:
    step = 1 if count <= 32 else (2 if count <= 48 else 5)
    ax.set_xticks(range(0, count, step))
    ax.grid(True, alpha=0.3)


# ---------------------------------------------------------------------- figures
def plot_residual(result: dict, path: Path) -> None:
    """Relative update norm and update cosine per layer (analysis 1)."""
    geometry, L = result["residual_geometry"], result["num_layers"]
    fig = _new_figure(8.0, 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(range(L), geometry["relative_update_norm"], marker="o", label="||h_{l+1} - h_l|| / ||h_l||")
    top.set_ylabel("relative update norm", fontsize=11)
    bottom.plot(
        range(L), geometry["update_cosine"], marker="o", color="tab:green", label="cos(h_{l+1} - h_l, h_l)"
    )
    bottom.axhline(0.0, color="grey", linewidth=1)
    bottom.set_ylabel("update cosine", fontsize=11)
    bottom.set_xlabel(LAYER_AXIS, fontsize=11)
    for ax in (top, bottom):
        _layer_ticks(ax, L)
        ax.legend(fontsize=9, frameon=False)
    top.set_title(_title(result, "residual geometry (tokens after the first)"), fontsize=11)
    _save(fig, path)


def plot_angular(result: dict, path: Path) -> None:
    """Heatmap of d(l, n), the block Gromov-style pruning removes per n, and block influence (analysis 2)."""
    import numpy as np

    angular, L = result["angular_distance"], result["num_layers"]
    d = np.array([[np.nan if x is None else x for x in row] for row in angular["d"]], dtype=float)  # [l, n]
    fig = _new_figure(8.5, 8.0)
    heat, bars = fig.subplots(2, 1, height_ratios=[3, 1.4])
    image = heat.imshow(
        d[:, 1:].T,
        origin="lower",
        aspect="auto",
        cmap="viridis",
        interpolation="nearest",
        extent=(-0.5, L + 0.5, 0.5, L + 0.5),
    )
    blocks = angular["pruned_block"]
    heat.plot(
        [b["start"] for b in blocks],
        [b["n"] for b in blocks],
        linestyle="none",
        marker="o",
        markerfacecolor="white",
        markeredgecolor="black",
        markersize=6,
        label="marker: the block angular pruning removes (start l*, length n)",
    )
    heat.set_xlabel("start state l (h_l enters layer l; numbered from 0)", fontsize=11)
    heat.set_ylabel("block length n (layers)", fontsize=11)
    step = 1 if L <= 32 else (2 if L <= 48 else 5)
    heat.set_yticks(range(1, L + 1, step))
    heat.set_xticks(range(0, L + 1, step))
    heat.legend(loc="upper right", fontsize=9, frameon=True, facecolor="white", framealpha=0.85)
    fig.colorbar(image, ax=heat, fraction=0.04, pad=0.01).set_label("angular distance d(l, n)", fontsize=10)
    heat.set_title(_title(result, "angular distance at the last token"), fontsize=11)
    bars.bar(
        range(L), angular["block_influence"], color="tab:brown", label="block influence 1 - cos(h_l, h_{l+1})"
    )
    bars.set_xlabel(LAYER_AXIS, fontsize=11)
    bars.set_ylabel("block influence", fontsize=11)
    bars.legend(fontsize=9, frameon=False)
    _layer_ticks(bars, L)
    _save(fig, path)


def plot_lens(result: dict, path: Path) -> None:
    """Logit-lens curves over states h_0 .. h_L with the effective depth marked (analysis 3)."""
    lens, L = result["logit_lens"], result["num_layers"]
    x = list(range(L + 1))
    fig = _new_figure(8.5, 9.0)
    axes = fig.subplots(4, 1, sharex=True)
    axes[1].plot(
        x, lens["top1_agreement"], marker="^", color="tab:red", label="top-1 agrees with final (share)"
    )
    axes[0].plot(x, lens["kl_final_to_lens"], marker="o", label="KL(final || lens)")
    axes[0].plot(x, lens["kl_lens_to_final"], marker="s", label="KL(lens || final)")
    axes[0].set_ylabel("KL (nats)", fontsize=11)
    axes[1].plot(x, lens["top5_overlap"], marker="o", color="tab:purple", label="top-5 overlap with final")
    axes[1].axhline(0.3, color="grey", linestyle=":", linewidth=1, label="threshold 0.3")
    axes[1].set_ylabel("overlap / share", fontsize=11)
    axes[2].plot(x, lens["entropy"], marker="o", color="tab:green", label="lens entropy")
    axes[2].set_ylabel("entropy (nats)", fontsize=11)
    axes[3].plot(
        x,
        [r + 1 for r in lens["final_top1_rank"]],
        marker="o",
        color="tab:orange",
        label="rank of the final top-1 token (1 = top)",
    )
    axes[3].set_yscale("log")
    axes[3].set_ylabel("rank", fontsize=11)
    depth = lens["effective_depth"]
    for name, style in (("kl", "--"), ("top5", ":")):
        if depth[name]["depth"] is not None:
            for ax in axes:
                ax.axvline(
                    depth[name]["depth"],
                    color="black",
                    linestyle=style,
                    linewidth=1,
                    label=f"effective depth ({name})" if ax is axes[0] else None,
                )
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, frameon=False, loc="best")
    step = 1 if L <= 32 else (2 if L <= 48 else 5)
    axes[-1].set_xticks(range(0, L + 1, step))
    axes[-1].set_xlabel(
        "state l: h_0 = embeddings, h_{l+1} = output of layer l (numbered from 0)", fontsize=10
    )
    axes[0].set_title(_title(result, "logit lens at the last token"), fontsize=11)
    _save(fig, path)


def plot_sensitivity(result: dict, path: Path) -> None:
    """Change in task score, margin and greedy fidelity for each single-layer skip and repeat (analysis 4)."""
    sens, L = result["sensitivity"], result["num_layers"]
    panels = [
        ("delta_reward", "change in task score"),
        ("delta_margin", "change in gold margin"),
        ("delta_fidelity", "change in greedy fidelity (tokens)"),
    ]
    fig = _new_figure(8.5, 8.5)
    axes = fig.subplots(3, 1, sharex=True)
    for ax, (key, label) in zip(axes, panels, strict=True):
        for kind, color, shift in (("skip", SKIP_COLOR, -0.15), ("repeat", REPEAT_COLOR, 0.15)):
            points = [(i + shift, c) for i, c in enumerate(sens[kind][key]) if c is not None]
            if not points:
                continue
            ax.errorbar(
                [p for p, _ in points],
                [c["value"] for _, c in points],
                yerr=[
                    [c["value"] - c["low"] for _, c in points],
                    [c["high"] - c["value"] for _, c in points],
                ],
                color=color,
                marker="o",
                markersize=4,
                linestyle="-",
                linewidth=1,
                capsize=2,
                label=f"{kind} one layer (95% interval)",
            )
        ax.axhline(0.0, color="grey", linewidth=1)
        ax.set_ylabel(label, fontsize=10)
        _layer_ticks(ax, L)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
    axes[-1].set_xlabel(LAYER_AXIS, fontsize=11)
    axes[0].set_title(_title(result, "single-layer skip and repeat vs the base path"), fontsize=11)
    _save(fig, path)


def plot_overlay(result: dict, path: Path) -> None:
    """Per source: skip and repeat shares per layer, over the scaled block influence (analysis 5)."""
    L, overlays = result["num_layers"], result["overlays"]
    fig = _new_figure(8.5, 3.2 * len(overlays) + 0.6)
    axes = fig.subplots(len(overlays), 1, sharex=True, squeeze=False)[:, 0]
    influence = result["angular_distance"]["block_influence"]
    top = max(influence) or 1.0
    for ax, overlay in zip(axes, overlays.values(), strict=True):
        ax.bar(
            [i - 0.2 for i in range(L)],
            overlay["skip_share"],
            width=0.4,
            color=SKIP_COLOR,
            label="skip share",
        )
        ax.bar(
            [i + 0.2 for i in range(L)],
            overlay["repeat_share"],
            width=0.4,
            color=REPEAT_COLOR,
            label="repeat share",
        )
        ax.plot(
            range(L),
            [v / top for v in influence],
            color="tab:brown",
            marker=".",
            label="block influence (scaled)",
        )
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share of prompts", fontsize=10)
        ax.set_title(
            f"{overlay['source']} ({overlay['prompts']} prompts, {overlay['mean_layers']:.1f} layers)",
            fontsize=10,
        )
        _layer_ticks(ax, L)
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1].set_xlabel(LAYER_AXIS, fontsize=11)
    _save(fig, path)


# ---------------------------------------------------------------------- the files, in the order written
FIGURES = {
    "residual.png": plot_residual,
    "angular.png": plot_angular,
    "logit_lens.png": plot_lens,
    "sensitivity.png": plot_sensitivity,
}
ANALYSIS_FILES = ("analysis.json", *FIGURES, "overlay.png", "report.md")  # every file analyze writes
