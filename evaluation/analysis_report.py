"""The report.md of drllm analyze: what each analysis found, in plain words."""

from __future__ import annotations


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
