"""Static layer-skipping baselines: one decision vector (0 skip, 1 execute, 2 repeat) per task and level.

A level is a count ``c`` of executed layers (the sum of the decisions); a skip-only path at level ``c``
skips ``n = L - c`` layers. Every baseline keeps the final layer ``L - 1`` unless asked not to
(``keep_last=False``), and every calibrated one is chosen on training examples, never evaluation ones.

    drop_last(8, 2)                  # [1, 1, 1, 1, 1, 0, 0, 1]: the 2 layers before the final one skipped
    random_skips(8, 2, seed=0)       # 2 distinct random layers skipped, the final layer kept
    stats = calibration_statistics(routed, tokenizer, train_prompts)
    angular_path(stats, 2)           # the 2-layer block that changes the last token's state least
    block_influence_path(stats, 2)   # the 2 layers that change the token states least
    greedy = greedy_paths(evaluator, evaluator.prepare(train_examples), levels=[7, 6])
    static_paths(METHODS, [7, 6], 8, stats=stats, greedy=greedy)  # method -> level -> paths

Definitions, with ``h_l`` the hidden state entering layer ``l`` and ``h_L`` the last layer's output
before the final norm, from one all-execute pass over the calibration prompts:

- ``angular`` (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"): the angular
  distance ``d(l, n) = mean_prompts arccos(cos(h_l, h_{l+n})) / pi`` at each prompt's last token; the path
  skips the block ``l* .. l* + n - 1`` with ``l* = argmin_l d(l, n)``.
- ``block-influence`` (ShortGPT, Men et al. 2024): ``BI_l = 1 - mean_tokens cos(h_l, h_{l+1})`` over every
  real token except each prompt's first (its state dominates the cosine); the path skips the ``n`` layers
  of lowest ``BI_l``.
- ``greedy`` (task-aware, as TALE, arXiv 2510.22767, extended to repeats): from all-execute, skip one
  layer at a time, each time the layer whose removal keeps the summed score ``sum_examples margin`` highest
  (``Outcome.margin``: the gold option's log-likelihood margin, or the target's mean token log-probability).
  With repeats, level ``c`` also considers the skip-only path of level ``c - 1`` with one layer repeated and
  keeps whichever scores higher; the descent itself continues from the skip-only path.
- ``drop-last``: the ``n`` layers before the final one; ``random``: ``n`` seeded random layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drllm.search.heuristics import (  # noqa: F401 - re-exported: the baselines are these paths
    CalibrationStats,
    _check_n,
    _skipping,
    all_execute_path,
    angular_block,
    angular_distances,
    angular_path,
    block_influence_path,
    calibration_statistics,
    drop_last,
    last_token_hidden,
    layers_to_drop,
    random_skips,
)

METHODS = ("greedy", "block-influence", "angular", "drop-last", "random")


# ---------------------------------------------------------------------- task-aware greedy search
@dataclass
class GreedyResult:
    """Greedy paths with their summed margins over the calibration examples.

    Attributes:
        paths: level ``c`` -> the kept path (``c`` executed layers; it holds a 2 only when the repeat
            variant scored strictly higher than the skip-only path).
        scores: level ``c`` -> the kept path's summed margin.
        descent: count -> the skip-only path the descent reached (count ``L``: all-execute).
        descent_scores: count -> its summed margin (none for ``L``).
        rows: (example, path) rows scored, the search's cost.
    """

    paths: dict[int, tuple[int, ...]] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    descent: dict[int, tuple[int, ...]] = field(default_factory=dict)
    descent_scores: dict[int, float] = field(default_factory=dict)
    rows: int = 0


def _score(margins: Iterable[float | None]) -> tuple[int, float]:
    """Ranking key ``(valid margins, their sum)``: a None or non-finite margin loses to any finite one."""
    ok = [m for m in margins if m is not None and math.isfinite(m)]
    return len(ok), math.fsum(ok)


def _keys(evaluator, prepared, paths: list[tuple[int, ...]]) -> list[tuple[int, float]]:
    """One ``outcomes`` call over every (example, path) row; rows grouped by example (equal widths)."""
    outcomes = evaluator.outcomes([(p, path) for p in prepared for path in paths])
    k = len(paths)
    return [_score(outcomes[e * k + j].margin for e in range(len(prepared))) for j in range(k)]


def summed_margins(evaluator, prepared, paths) -> list[float]:
    """Each path's sum of ``Outcome.margin`` over the prepared examples (None and NaN left out)."""
    return [total for _, total in _keys(evaluator, prepared, [tuple(p) for p in paths])]


def _with(path: tuple[int, ...], layer: int, decision: int) -> tuple[int, ...]:
    return path[:layer] + (decision,) + path[layer + 1 :]


def _check_levels(levels: Iterable[int], num_layers: int) -> list[int]:
    levels = sorted({int(c) for c in levels}, reverse=True)
    if not levels or not all(1 <= c < num_layers for c in levels):
        raise ValueError(f"levels must be executed-layer counts in 1..{num_layers - 1}, got {levels}")
    return levels


def greedy_paths(
    evaluator,
    prepared: list,
    levels: Iterable[int],
    repeats: bool = True,
    keep_last: bool = True,
    progress: Callable[[str], None] | None = None,
) -> GreedyResult:
    """Task-aware greedy paths (TALE-style descent), one per level, chosen on calibration examples.

    From all-execute, each step scores every path with one more executed layer skipped (never the final
    one with ``keep_last``) and keeps the best by summed margin. With ``repeats``, level ``c`` also scores
    the count-``c - 1`` skip-only path with each of its executed layers repeated, batched into the step
    that scores the next skips, and keeps the repeat variant only if it scores strictly higher.

    Cost for ``E`` examples and levels down to ``m``: ``E * sum_{c=m}^{L-1} c`` rows for the skips (plus
    ``E * (m - 1)`` with ``repeats``, to reach count ``m - 1``), and ``E * sum_{c=m}^{L-1} (c - 1)`` for
    the repeats. Rows start at their first changed layer (prefix reuse), so late skips are cheap.

    Args:
        evaluator: A ``PathEvaluator`` on the model and task.
        prepared: ``evaluator.prepare(training examples)`` (128 or more; never evaluation examples).
        levels: Executed-layer counts ``c``, each ``1 <= c <= L - 1``.
        repeats: Also consider one repeat per level (see above).
        keep_last: Never skip the final layer.
        progress: Called with one line of text per step.

    Returns:
        A ``GreedyResult``: paths and summed margins per level, and the skip-only descent.
    """
    L = evaluator.routed.num_layers
    levels = _check_levels(levels, L)
    if not prepared:
        raise ValueError("greedy_paths needs calibration examples, got none")
    out = GreedyResult(descent={L: all_execute_path(L)})
    ranked: dict[int, tuple[int, float]] = {}  # count -> ranking key of the descent's path
    deepest = max(levels[-1] - 1, 1) if repeats else levels[-1]  # the lowest count the descent reaches
    for count in range(L - 1, deepest - 2, -1):
        parent = out.descent[count + 1]
        movable = [i for i in range(L) if parent[i] == 1 and (i < L - 1 or not keep_last)]
        skips = [_with(parent, i, 0) for i in movable] if count >= deepest else []
        level = count + 2  # the parent (count + 1 executed) with one layer repeated
        again = (
            [_with(parent, i, 2) for i in range(L) if parent[i] == 1] if repeats and level in levels else []
        )
        if not skips + again:
            continue
        keys = _keys(evaluator, prepared, skips + again)
        out.rows += len(prepared) * len(keys)
        if skips:
            best = max(range(len(skips)), key=keys.__getitem__)
            out.descent[count], ranked[count] = skips[best], keys[best]
            out.descent_scores[count] = keys[best][1]
            if progress is not None:
                progress(f"greedy: {count} of {L} layers, summed margin {keys[best][1]:.4f}")
        if again:
            best = max(range(len(skips), len(keys)), key=keys.__getitem__)
            if keys[best] > ranked[level]:
                out.paths[level], out.scores[level] = again[best - len(skips)], keys[best][1]
    for c in levels:
        if c not in out.paths:
            out.paths[c], out.scores[c] = out.descent[c], out.descent_scores[c]
    return out


# ---------------------------------------------------------------------- every method at every level
def static_paths(
    methods: Iterable[str],
    levels: Iterable[int],
    num_layers: int,
    stats: CalibrationStats | None = None,
    greedy: GreedyResult | Mapping[int, Any] | None = None,
    seeds: Iterable[int] = (0,),
    keep_last: bool = True,
) -> dict[str, dict[int, list[tuple[int, ...]]]]:
    """The paths of each baseline at each level: ``{method: {c: [path, ...]}}``.

    One path per level, except ``random``: one per seed. Level ``c`` skips ``n = L - c`` layers.

    Args:
        methods: Names among ``METHODS``.
        levels: Executed-layer counts ``c``, each ``1 <= c <= L`` (``0 <= c`` without ``keep_last``).
        num_layers: Layers ``L`` of the model.
        stats: ``calibration_statistics`` on training prompts, for ``angular`` and ``block-influence``.
        greedy: ``greedy_paths``' result (or a mapping level -> path) covering every level below ``L``.
        seeds: Seeds of the ``random`` paths.
        keep_last: Never skip the final layer (``greedy`` was searched with its own setting).

    Raises:
        ValueError: for an unknown method, a level out of range, or a missing ``stats`` or greedy level.
    """
    methods, levels, seeds = list(methods), sorted({int(c) for c in levels}, reverse=True), tuple(seeds)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known baselines: {', '.join(METHODS)}")
    if {"angular", "block-influence"} & set(methods) and stats is None:
        raise ValueError("the angular and block-influence baselines need stats (calibration_statistics)")
    found = {} if greedy is None else getattr(greedy, "paths", greedy)
    L = num_layers
    out: dict[str, dict[int, list[tuple[int, ...]]]] = {m: {} for m in methods}
    for c in levels:
        _check_n(L, L - c, L - 1 if keep_last else L)
        for method in methods:
            out[method][c] = _level_paths(method, L, c, stats, found, seeds, keep_last)
    return out


def _level_paths(method: str, L: int, c: int, stats, found, seeds, keep_last: bool) -> list[tuple[int, ...]]:
    n = L - c
    if method == "greedy":
        if c == L:
            return [all_execute_path(L)]
        if c not in found:
            raise ValueError(f"greedy has no path with {c} layers; it has paths for {sorted(found)}")
        return [tuple(found[c])]
    if method == "block-influence":
        return [block_influence_path(stats, n, keep_last)]
    if method == "angular":
        return [angular_path(stats, n, keep_last)]
    if method == "drop-last":
        return [tuple(drop_last(L, n, keep_last))]
    return [tuple(random_skips(L, n, s, keep_last)) for s in seeds]
