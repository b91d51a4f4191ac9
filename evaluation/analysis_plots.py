"""Files of ``drllm analyze``: analysis.json, one figure per analysis and report.md in plain words.

Figures use ``plots``' Agg canvas and atomic PNG writes; layers are numbered from 0 on every axis, as
decision vectors index them. The definitions behind every number are in ``analysis``' docstring.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .plots import _new_figure, _save
from .report import atomic_write_text

SKIP_COLOR, REPEAT_COLOR = "tab:red", "tab:blue"
LAYER_AXIS = "layer (numbered from 0)"


def write_all(result: dict, folder: Path) -> list[Path]:
    """Write analysis.json, the figures and report.md; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "analysis.json"]
    atomic_write_text(written[0], json.dumps(_clean(result), indent=1, allow_nan=False) + "\n")
    for name, draw in (
        ("residual.png", plot_residual),
        ("angular.png", plot_angular),
        ("logit_lens.png", plot_lens),
        ("sensitivity.png", plot_sensitivity),
    ):
        draw(result, folder / name)
        written.append(folder / name)
    if result["overlays"]:
        plot_overlay(result, folder / "overlay.png")
        written.append(folder / "overlay.png")
    atomic_write_text(folder / "report.md", report_text(result))
    return written + [folder / "report.md"]


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
        "w.",
        markersize=6,
        label="block pruning removes (start l*, length n)",
    )
    heat.set_xlabel("start state l (h_l enters layer l; numbered from 0)", fontsize=11)
    heat.set_ylabel("block length n (layers)", fontsize=11)
    step = 1 if L <= 32 else (2 if L <= 48 else 5)
    heat.set_yticks(range(1, L + 1, step))
    heat.set_xticks(range(0, L + 1, step))
    heat.legend(loc="upper right", fontsize=9, frameon=False, labelcolor="white")
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


# ---------------------------------------------------------------------- report.md
def _layers(values) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def report_text(result: dict) -> str:
    """report.md: what the analysis found, in plain words."""
    L = result["num_layers"]
    lines = [
        f"# How {result['model']} uses its depth on {result['task']}",
        "",
        f"{result['prompts']} prompts of the {result['split']} split ({result['style']} style, "
        f"{result['scoring']} scoring), {L} layers. Layers are numbered from 0. Definitions: the docstring "
        "of `drllm.evaluation.analysis`; every number is in `analysis.json`.",
        "",
        "## Where the prediction forms (logit lens)",
        "",
        *_lens_lines(result),
        "",
        "## Which layers change the residual stream",
        "",
        *_geometry_lines(result),
        "",
        "## Which layers are safe to skip: likelihood against generation",
        "",
        *_safety_lines(result),
    ]
    if result["overlays"]:
        lines += ["", "## Where the routing skips and repeats", ""]
        for overlay in result["overlays"].values():
            lines += _overlay_lines(overlay)
    return "\n".join(lines) + "\n"


def _lens_lines(result: dict) -> list[str]:
    lens, L = result["logit_lens"], result["num_layers"]
    depth, per = lens["effective_depth"], lens["effective_depth_per_prompt"]
    out = []
    kl, top5 = depth["kl"], depth["top5"]
    if kl["depth"] is not None and per["kl"]["ratio"] is not None:
        out.append(
            f"- The lens's KL to the final distribution falls below half its maximum for good after layer "
            f"{kl['layer']}, that is after {kl['depth']} of {L} layers ({kl['ratio']:.0%} of the depth; per "
            f"prompt {per['kl']['ratio']['value']:.0%}, 95% interval {per['kl']['ratio']['low']:.0%} to "
            f"{per['kl']['ratio']['high']:.0%})."
        )
    if top5["depth"] is not None and per["top5"]["ratio"] is not None:
        out.append(
            f"- The lens's top 5 shares more than 30% with the final top 5 from layer {top5['layer']} on "
            f"({top5['ratio']:.0%} of the depth; per prompt {per['top5']['ratio']['value']:.0%})."
        )
    agree = lens["top1_agreement"]
    first = next((i for i in range(1, len(agree)) if all(a >= 0.5 for a in agree[i:])), None)
    if first is not None:
        out.append(
            f"- The lens's top token is the model's final top token for at least half the prompts from the "
            f"output of layer {first - 1} on."
        )
    if kl["ratio"] is not None:
        when = "late" if kl["ratio"] > 0.75 else ("early" if kl["ratio"] < 0.5 else "midway")
        what = {
            "late": "most layers still move the output distribution",
            "early": "the later layers mostly refine a distribution already in place",
            "midway": "the second half of the layers still moves the output distribution",
        }[when]
        out.append(f"- The prediction forms {when}: {what}.")
    return out


def _geometry_lines(result: dict) -> list[str]:
    geometry, angular = result["residual_geometry"], result["angular_distance"]
    norm, cosine, influence = (
        geometry["relative_update_norm"],
        geometry["update_cosine"],
        angular["block_influence"],
    )
    small = sorted(range(len(norm)), key=lambda i: norm[i])[:5]
    low_bi = sorted(range(len(influence)), key=lambda i: influence[i])[:5]
    erasing = [i for i, c in enumerate(cosine) if c < 0]
    out = [
        f"- Smallest relative updates: layers {_layers(small)}; lowest block influence: layers "
        f"{_layers(low_bi)}.",
        f"- Layers whose update points against the residual stream (negative cosine, they erase): "
        f"{_layers(erasing)}.",
    ]
    for block in angular["pruned_block"][:3]:
        out.append(
            f"- Gromov-style pruning of {block['n']} layer(s) removes layers {_layers(block['layers'])} "
            f"(angular distance {block['distance']:.3f})."
        )
    return out


def _safety_lines(result: dict) -> list[str]:
    sens = result["sensitivity"]
    ranked = sens["safest_skips"]
    base = sens["base"]
    out = [
        f"The base path scores {_num(base['reward'], 2)} (mean reward), gold margin {_num(base['margin'])}"
        + (f", greedy fidelity {_num(base['fidelity'], 1)} tokens." if base["fidelity"] is not None else ".")
    ]
    for name, what in (("likelihood", "gold margin"), ("fidelity", "greedy fidelity")):
        r = ranked[name]
        if r is None:
            out.append(f"- {what}: not measured (fidelity_tokens 0).")
            continue
        out.append(
            f"- By {what}, the {len(r['most'])} safest layers to skip are {_layers(r['most'])}; the "
            f"{len(r['least'])} least safe are {_layers(r['least'])}."
        )
    if ranked["likelihood"] and ranked["fidelity"]:
        only = [i for i in ranked["likelihood"]["most"] if i not in ranked["fidelity"]["most"]]
        if only:
            out.append(
                f"- Safe by likelihood but not among the safest by generation: layers {_layers(only)}; "
                "a likelihood score alone would overstate what skipping them keeps (arXiv 2510.02091)."
            )
        else:
            out.append("- Likelihood and generation agree on the safest layers to skip.")
    rep = sens["repeat"]["delta_margin"]
    scored = [(c["value"], i) for i, c in enumerate(rep) if c is not None]
    if scored:
        best = max(scored)
        out.append(f"- The best single repeat is layer {best[1]} (gold margin change {best[0]:+.3f}).")
    return out


def _overlay_lines(overlay: dict) -> list[str]:
    skip, repeat = overlay["skip_share"], overlay["repeat_share"]
    most = [i for i in sorted(range(len(skip)), key=lambda i: -skip[i])[:5] if skip[i] > 0]
    repeated = [i for i in sorted(range(len(repeat)), key=lambda i: -repeat[i])[:3] if repeat[i] > 0]
    rho = overlay["spearman"]["skip_share"]
    out = [
        f"### {overlay['source']}",
        "",
        f"- {overlay['prompts']} prompts, {overlay['mean_layers']:.2f} layers per prompt; most skipped "
        f"layers: {_layers(most)}; most repeated: {_layers(repeated)}.",
        f"- Spearman correlation of the skip share with the relative update norm "
        f"{_num(rho['relative_update_norm'], 2)}, with block influence {_num(rho['block_influence'], 2)}, "
        f"with the margin change of skipping {_num(rho['skip_delta_margin'], 2)}, with its fidelity change "
        f"{_num(rho['skip_delta_fidelity'], 2)}.",
    ]
    geo = [rho["relative_update_norm"], rho["block_influence"]]
    if all(g is not None for g in geo):
        if max(geo) < -0.3:
            out.append("- The routing skips where geometry says layers do little.")
        elif min(geo) > 0.3:
            out.append("- The routing skips layers that geometry says do much: it does not follow geometry.")
        else:
            out.append("- The skips are not clearly related to what the geometry says layers do.")
    else:
        out.append("- Too few skips vary across layers to relate them to the geometry.")
    depth = overlay["effective_depth"]
    routed, base = depth["routed"]["kl"]["ratio"], depth["base"]["kl"]["ratio"]
    diff = depth["ratio_difference_kl"]
    if routed is not None and base is not None and diff is not None:
        out.append(
            f"- Effective depth (KL criterion) along the routed paths is {routed['value']:.0%} of the layers "
            f"they execute, against {base['value']:.0%} for the base on the same prompts (difference "
            f"{diff['value']:+.0%}, 95% interval {diff['low']:+.0%} to {diff['high']:+.0%})."
        )
    return out + [""]
