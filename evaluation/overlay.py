"""The routing overlay of drllm analyze: where routers or searched paths skip and repeat, against depth."""

from __future__ import annotations

import numpy as np

from drllm.router import RoutedModel, batch_prompts

from .depth import (
    depth_pass,
)
from .plots import decision_shares
from .stats import paired_difference
from .summaries import (
    _depth_intervals,
    spearman,
)


# ---------------------------------------------------------------------- 5: routing overlay
def _route(routed: RoutedModel, tokenizer, prompts: list[str], batch_size: int) -> list[list[int]]:
    """The routers' decisions on each prompt at budget 0."""
    old, routed.budget = routed.budget, 0.0
    try:
        out = []
        for start in range(0, len(prompts), batch_size):
            ids, mask = batch_prompts(tokenizer, prompts[start : start + batch_size], routed.device)
            out += routed.route(ids, mask).tolist()
        return out
    finally:
        routed.budget = old


def _decision_sources(routed, tokenizer, prompts, records, paths, fixed, batch_size) -> dict:
    """``{key: (description, prompts, decisions)}`` for every routing given to overlay."""
    sources = {}
    if routed.routers is not None:
        sources["routers"] = ("routers at budget 0", prompts, _route(routed, tokenizer, prompts, batch_size))
    if records is not None:
        sources["paths"] = (
            f"search paths {paths}",
            [r.prompt for r in records],
            [r.decisions for r in records],
        )
    if fixed is not None:
        sources["decisions"] = ("fixed path " + ",".join(map(str, fixed)), prompts, [fixed] * len(prompts))
    return sources


def _overlay(source: str, decisions: list[list[int]]) -> dict:
    shares = decision_shares(decisions)  # [3, L]
    return {
        "source": source,
        "prompts": len(decisions),
        "mean_layers": float(np.mean([sum(d) for d in decisions])),
        "skip_share": shares[0].tolist(),
        "execute_share": shares[1].tolist(),
        "repeat_share": shares[2].tolist(),
        "decisions": [list(d) for d in decisions],
    }


def _overlay_depth(overlay: dict, routed, tokenizer, prompts, batch_size: int, base=None) -> None:
    """Effective depth along each prompt's own path against the base on the same prompts."""
    L = routed.num_layers
    routed_pass = depth_pass(routed, tokenizer, prompts, overlay["decisions"], batch_size)
    if base is None:
        base = depth_pass(routed, tokenizer, prompts, [[1] * L] * len(prompts), batch_size)
    depth = {"routed": _depth_intervals(routed_pass), "base": _depth_intervals(base)}
    for name in ("kl", "top5"):
        pairs = [
            (a["depth"][name]["ratio"], b["depth"][name]["ratio"])
            for a, b in zip(routed_pass, base, strict=True)
            if a["depth"][name]["ratio"] is not None and b["depth"][name]["ratio"] is not None
        ]
        difference = paired_difference(*zip(*pairs, strict=True)) if pairs else None
        depth[f"ratio_difference_{name}"] = None if difference is None else difference.as_dict()
    overlay["effective_depth"] = depth


def _overlay_correlations(overlay: dict, curves: dict) -> None:
    overlay["spearman"] = {
        share: {name: spearman(overlay[share], curve) for name, curve in curves.items()}
        for share in ("skip_share", "repeat_share")
    }
