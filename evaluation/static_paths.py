"""Static paths an evaluation derives from others: sublayer-unit paths and linear stand-ins for skips.

``paths_of_units`` gives the ``attention-drop``, ``mlp-drop`` and ``unit-drop`` baselines at every level:
units dropped by least influence per multiply-add (``drllm.search.unit_heuristics``) until the path saves at
least what the level's block paths save. ``with_stand_ins`` fits, once per distinct static path that skips,
the linear maps its ``<name>+linear`` twin runs (``drllm.search.stand_ins``).
"""

from __future__ import annotations

import logging

from drllm.router import SKIP, StandIns, batch_prompts, path_macs
from drllm.search.stand_ins import fit_linear_stand_ins
from drllm.search.unit_heuristics import attention_drop_path, mlp_drop_path, unit_drop_path, unit_influence

from .baselines import drop_last
from .results import STATIC

log = logging.getLogger("drllm.evaluation.evaluate")


def paths_of_units(routed, tokenizer, ev, calib, names, settings) -> dict[tuple[str, int], tuple[int, ...]]:
    """Per unit baseline and level, the path saving at least what the level's block paths save.

    Unit costs depend on the context, so both sides are counted at the mean calibration prompt length.
    """
    L, config = routed.num_layers, routed.config
    prompts = [ev.prompt_text(ex) for ex in calib]
    influence = unit_influence(routed, tokenizer, prompts, batch_size=settings.batch_size)
    _, mask = batch_prompts(tokenizer, prompts, "cpu")
    tokens = max(1, round(float(mask.sum()) / len(prompts)))
    paths = {}
    for level in settings.levels:
        saved = 1.0 - path_macs(config, drop_last(L, L - level), tokens)["fraction"]
        for name in names:
            drop = {"attention-drop": attention_drop_path, "mlp-drop": mlp_drop_path}.get(
                name, unit_drop_path
            )
            try:
                paths[name, level] = tuple(drop(influence, config, saved, tokens))
            except ValueError as error:
                raise ValueError(f"{name} at {level} layers ({saved:.1%} saved): {error}") from None
    return paths


def with_stand_ins(routed, tokenizer, ev, calib, methods, settings, task) -> list[tuple]:
    """``(name+linear, level, path, stand-ins)`` per static path that skips; one fit per distinct path.

    ``random`` and the unit baselines are left out (their paths are not among ``STATIC``).
    """
    if settings.stand_in != "linear":
        return []
    prompts = [ev.prompt_text(ex) for ex in calib]
    fitted: dict[tuple[int, ...], StandIns] = {}
    out = []
    for m in methods:
        if m.name not in STATIC or m.level is None or SKIP not in m.path:
            continue
        if m.path not in fitted:
            log.info("%s: linear stand-ins for %s at %d layers", task, m.name, m.level)
            fitted[m.path] = fit_linear_stand_ins(
                routed,
                tokenizer,
                prompts,
                m.path,
                rank=settings.stand_in_rank,
                batch_size=settings.batch_size,
            )
        out.append((f"{m.name}+linear", m.level, m.path, fitted[m.path]))
    return out
