"""The deployable artefact of an evaluation: routers that run the best static path unless they showed signal.

For every level with a ``routed-static`` method, ``drllm eval`` writes ``<output>/routers-at-<level>/``: the
evaluated routers with the level's static path as their default (``Routers.set_default_path``; the first
two layers and the last protected) and a ``verdict`` in ``router_config.json`` that states, with the
numbers of this evaluation, whether the routers beat that path. Per-input signal is claimed only when the
routed method is significantly more accurate than the best static path at the level *and* than random
routing at the routers' own rates (paired, exact McNemar, 5%). Then the threshold is the one calibrated
for ``routed-static``; otherwise it is 1.0 and the artefact runs the static path exactly, example for
example, whatever the routers would say.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .report import SIGNIFICANCE, Comparison
from .results import compare


def _correct(method) -> list[bool]:
    return [o.reward >= 1.0 for o in method.outcomes]


def _describe(c: Comparison, what: str) -> str:
    d, low, high = (100 * v for v in (c.difference.value, c.difference.low, c.difference.high))
    return f"{d:+.1f} points [{low:+.1f}, {high:+.1f}] against {what} (p={c.p_value:.2g})"


def verdict(task: str, level: int, methods, best_static) -> tuple[bool, str]:
    """Whether the routers at ``level`` show per-input signal, and the sentence that says so with numbers.

    Args:
        task: the task's name.
        level: the layer level.
        methods: the evaluation's methods (``name``, ``level``, ``outcomes``, ``layers``, ``path``).
        best_static: the most accurate static method at the level on the evaluated examples.
    """
    at = {m.name: m for m in methods if m.level == level and m.seed in (None, 0)}
    routed, random = at.get("routed"), at.get("routed-random")
    if routed is None:
        return False, f"{task}, {level} layers: the routers were not evaluated at this level"
    mine = _correct(routed)
    n = len(mine)
    vs_static = compare(best_static.name, mine, _correct(best_static))
    parts = [
        f"drllm eval, {task}, {n} examples, {level} layers: routers {100 * sum(mine) / n:.1f}% at "
        f"{sum(routed.layers) / n:.2f} layers, {_describe(vs_static, f'the static path {best_static.name}')}"
    ]
    beats = vs_static.difference.value > 0 and vs_static.p_value < SIGNIFICANCE
    if random is not None:
        vs_random = compare("routed-random", mine, _correct(random))
        parts.append(_describe(vs_random, "random routing at the routers' rates"))
        beats = beats and vs_random.difference.value > 0 and vs_random.p_value < SIGNIFICANCE
    if beats:
        parts.append("per-input signal: the routers deviate from the static path where confident")
    else:
        parts.append(
            f"no per-input signal shown: these routers run the static path {best_static.name} "
            f"({sum(best_static.path)} layers) and never deviate (threshold 1.0)"
        )
    return beats, "; ".join(parts) + "."


def export_routers(routed, methods, best: dict, folder: Path, task: str) -> list[str]:
    """Write ``routers-at-<level>`` for every ``routed-static`` method; returns the verdicts written.

    ``best`` maps each level to its most accurate static method on the evaluated examples. The routers'
    own default path, threshold and protected layers are left as they were.
    """
    routers = routed.routers
    config = routers.config
    saved = dataclasses.replace(config)
    L = config.num_layers
    written = []
    try:
        for m in methods:
            if m.name != "routed-static" or m.level not in best:
                continue
            signal, text = verdict(task, m.level, methods, best[m.level])
            routers.set_default_path(list(m.path), m.threshold if signal else 1.0, protected=(0, 1, L - 1))
            config.verdict = text
            routed.save_pretrained(folder / f"routers-at-{m.level}")
            written.append(text)
    finally:
        routers.config = saved
    return written
