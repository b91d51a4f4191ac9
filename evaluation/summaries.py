"""Summaries of the depth analysis (``drllm analyze``).

Angular-distance tables, lens and effective-depth intervals, per-layer curves, and Spearman's rank
correlation between them.
"""

from __future__ import annotations

import numpy as np

from .baselines import angular_path
from .depth import (
    effective_depth,
)
from .stats import bootstrap_interval

LENS_KEYS = (
    "kl_final_to_lens",
    "kl_lens_to_final",
    "top5_overlap",
    "entropy",
    "final_top1_rank",
    "top1_agreement",
)
SENSITIVITY_KEYS = ("reward", "margin", "fidelity")


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# ---------------------------------------------------------------------- summaries
def _angular(stats) -> dict:
    L = stats.num_layers
    d = stats.angular.t()  # [l, n]
    blocks = []
    for n in range(1, L):
        path = angular_path(stats, n)
        first = path.index(0)
        blocks.append(
            {"n": n, "start": first, "layers": list(range(first, first + n)), "distance": float(d[first, n])}
        )
    return {
        "d": [[_finite(x) for x in row] for row in d.tolist()],
        "pruned_block": blocks,
        "block_influence": stats.block_influence.tolist(),
        "prompts": stats.prompts,
    }


def _lens_summary(per_prompt: list[dict], num_layers: int) -> dict:
    mean = {key: np.mean([p["metrics"][key] for p in per_prompt], axis=0).tolist() for key in LENS_KEYS}
    return {
        "position": "each prompt's last real token",
        **mean,
        "effective_depth": effective_depth(mean["kl_final_to_lens"], mean["top5_overlap"]),
        "effective_depth_per_prompt": _depth_intervals(per_prompt),
        "cosine_curve": "residual_geometry.update_cosine",
    }


def _depth_intervals(per_prompt: list[dict]) -> dict:
    """Per criterion, the mean depth and ratio over prompts with 95% bootstrap intervals."""
    out = {}
    for name in ("kl", "top5"):
        out[name] = {}
        for what in ("depth", "ratio"):
            values = [p["depth"][name][what] for p in per_prompt if p["depth"][name][what] is not None]
            out[name][what] = bootstrap_interval(values).as_dict() if values else None
    return out


def per_layer_curves(result: dict) -> dict[str, list[float | None]]:
    """The per-layer curves (length ``L``) of analyses 1-4 that routing decisions are compared with."""
    geometry, angular = result["residual_geometry"], result["angular_distance"]
    kl = result["logit_lens"]["kl_final_to_lens"]
    curves = {
        "relative_update_norm": geometry["relative_update_norm"],
        "update_cosine": geometry["update_cosine"],
        "block_influence": angular["block_influence"],
        "angular_distance_next": [row[1] for row in angular["d"][:-1]],  # d(l, 1)
        "lens_kl_drop": [kl[i] - kl[i + 1] for i in range(len(kl) - 1)],
    }
    for kind in ("skip", "repeat"):
        for key in SENSITIVITY_KEYS:
            column = result["sensitivity"][kind][f"delta_{key}"]
            curves[f"{kind}_delta_{key}"] = [None if c is None else c["value"] for c in column]
    return curves


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (average ranks for ties) over the pairs where both are finite.

    Returns None with fewer than 3 such pairs or when either side is constant.
    """
    a = np.array([np.nan if v is None else v for v in x], dtype=float)
    b = np.array([np.nan if v is None else v for v in y], dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    ra, rb = _average_ranks(a[ok]), _average_ranks(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values))
    ranks[values.argsort(kind="mergesort")] = np.arange(len(values), dtype=float)
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks
