"""Static paths an evaluation derives from others: sublayer-unit paths and linear stand-ins.

``paths_of_units`` gives the ``attention-drop``, ``mlp-drop`` and ``unit-drop`` baselines at every level:
units dropped by least influence per multiply-add (``drllm.search.unit_heuristics``) until the path saves at
least what the level's block paths save. ``with_stand_ins`` fits, once per distinct static path that skips
layers or switches units off, the linear maps its ``<name>+linear`` twin runs (``drllm.search.stand_ins``,
``drllm.search.unit_stand_ins``).
"""

from __future__ import annotations

import logging

from drllm.router import SKIP, StandIns, batch_prompts, path_macs
from drllm.router.decisions import UNIT_OFF
from drllm.search.unit_heuristics import attention_drop_path, mlp_drop_path, unit_drop_path, unit_influence
from drllm.search.unit_stand_ins import fit_path_stand_ins

from .baselines import drop_last
from .results import STATIC, UNIT_BASELINES

log = logging.getLogger("drllm.evaluation.evaluate")
DROPS = {SKIP, *UNIT_OFF}  # what a stand-in can replace: a skipped layer, a switched-off unit


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
    """``(name+linear, level, path, stand-ins)`` per static path that drops something; one fit per path.

    A block path's skipped layers get linear maps (``fit_linear_stand_ins``). A unit baseline's switched-off
    units get unit maps (``fit_unit_stand_ins``) and then, where both units of a layer go (a skip), block
    maps fitted along the path with those unit maps in place. ``random`` is left out (its paths are not
    paired).
    """
    if settings.stand_in != "linear":
        return []
    prompts = [ev.prompt_text(ex) for ex in calib]
    fitted: dict[tuple[int, ...], StandIns] = {}
    out = []
    for m in methods:
        if m.name not in STATIC + UNIT_BASELINES or m.level is None or not set(m.path) & DROPS:
            continue
        if m.path not in fitted:
            log.info("%s: linear stand-ins for %s at %d layers", task, m.name, m.level)
            kw = dict(rank=settings.stand_in_rank, batch_size=settings.batch_size)
            fitted[m.path] = fit_path_stand_ins(routed, tokenizer, prompts, m.path, **kw)
        out.append((f"{m.name}+linear", m.level, m.path, fitted[m.path]))
    return out
