"""The deployable artefact of an evaluation: routers that run a static path unless they showed signal.

For every level with a ``routed-static`` method, ``drllm eval`` writes ``<output>/routers-at-<level>/``: the
evaluated routers with the level's static path as their default (``Routers.set_default_path``; the first
two layers and the last protected) and a ``verdict`` in ``router_config.json`` that states, with the
numbers of this evaluation, whether the routers beat that path. Per-input signal is claimed only when
``routed-static`` (what is exported) is significantly more accurate than the static path it deviates from
*and* the routers alone beat random routing at their own rates (paired, exact McNemar, 5%). Then the
threshold is the one calibrated for ``routed-static``; otherwise it is 1.0 and the artefact runs the static
path exactly, example for example, whatever the routers would say.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from drllm.router.routers import TRAINED_ON_NAME

from .report import SIGNIFICANCE, Comparison, atomic_write_text
from .results import STATIC, compare


def _correct(method) -> list[bool]:
    return [o.reward >= 1.0 for o in method.outcomes]


def _describe(c: Comparison, what: str) -> str:
    d, low, high = (100 * v for v in (c.difference.value, c.difference.low, c.difference.high))
    return f"{d:+.1f} points [{low:+.1f}, {high:+.1f}] against {what} (p={c.p_value:.2g})"


def verdict(task: str, level: int, methods) -> tuple[bool, str]:
    """Whether the routers at ``level`` show per-input signal, and the sentence that says so with numbers.

    The setup judged is the one exported: ``routed-static`` (the routers deviating from the level's
    static path at the calibrated threshold), compared, paired, with that static path; the routers alone
    (``routed``) must also beat random routing at their own rates (``routed-random``).

    Args:
        task: the task's name.
        level: the layer level.
        methods: the evaluation's methods (``name``, ``level``, ``seed``, ``outcomes``, ``layers``,
            ``path``, ``threshold``).
    """
    at = {m.name: m for m in methods if m.level == level and m.seed in (None, 0)}
    mine, routed, random = at.get("routed-static"), at.get("routed"), at.get("routed-random")
    if mine is None:
        return False, f"{task}, {level} layers: routed-static was not evaluated at this level"
    static = next(
        (m for m in methods if m.level == level and m.name in STATIC and tuple(m.path) == tuple(mine.path)),
        None,
    )
    name = static.name if static is not None else "its static path"
    ok = _correct(mine)
    n = len(ok)
    parts = [
        f"drllm eval, {task}, {n} examples, {level} layers: the routers deviating from the static path "
        f"{name} (threshold {mine.threshold:g}) score {100 * sum(ok) / n:.1f}% "
        f"at {sum(mine.layers) / n:.2f} layers"
    ]
    beats = False
    if static is not None:
        vs_static = compare(name, ok, _correct(static))
        parts.append(_describe(vs_static, f"the static path {name}"))
        beats = vs_static.difference.value > 0 and vs_static.p_value < SIGNIFICANCE
    if routed is not None and random is not None:
        alone = _correct(routed)
        vs_random = compare("routed-random", alone, _correct(random))
        parts.append(
            f"the routers alone {100 * sum(alone) / n:.1f}% at {sum(routed.layers) / n:.2f} layers, "
            + _describe(vs_random, "random routing at their rates")
        )
        beats = beats and vs_random.difference.value > 0 and vs_random.p_value < SIGNIFICANCE
    else:
        beats = False  # no control to beat: no claim
    if beats:
        parts.append("per-input signal: these routers deviate from the static path where confident")
    else:
        parts.append(
            f"no per-input signal shown: these routers run the static path {name} "
            f"({sum(mine.path)} layers) and never deviate (threshold 1.0)"
        )
    return beats, "; ".join(parts) + "."


def export_routers(routed, methods, folder: Path, task: str, trained_on=frozenset()) -> list[str]:
    """Write ``routers-at-<level>`` for every ``routed-static`` method; returns the verdicts written.

    The routers' own default path, threshold and protected layers are left as they were. ``trained_on``
    (the ids the routers were fitted on) is written beside each export, so evaluating it again still
    calibrates on other examples.
    """
    routers = routed.routers
    config = routers.config
    saved = dataclasses.replace(config)
    L = config.num_layers
    written = []
    try:
        for m in methods:
            if m.name != "routed-static":
                continue
            signal, text = verdict(task, m.level, methods)
            stood = [] if routed.stand_ins is None else [i for i in routed.stand_ins.mapped if m.path[i] == 0]
            if stood:  # the exported folder runs them too: the verdict says so
                text = f"{text[:-1]}; skipped layers {stood} run the linear stand-ins saved with the routers."
            routers.set_default_path(list(m.path), m.threshold if signal else 1.0, protected=(0, 1, L - 1))
            config.verdict = text
            routed.save_pretrained(folder / f"routers-at-{m.level}")
            if trained_on:
                atomic_write_text(
                    folder / f"routers-at-{m.level}" / TRAINED_ON_NAME,
                    json.dumps({"ids": sorted(trained_on), "qualified": True}) + "\n",
                )
            written.append(text)
    finally:
        routers.config = saved
    return written
