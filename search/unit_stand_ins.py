"""Fitting linear stand-ins for switched-off sublayer units in closed form on calibration prompts.

A unit's map (``drllm.router.unit_stand_ins``) imitates the unit's output ``y`` from its own input ``x``
(the attention's or MLP's module input, after the layer's input norm where it has one). Both are recorded
in one forward of the full model over the calibration prompts (``RoutedModel.watching_units``), and the
map is the ridge least-squares solution of ``y ~ [x, 1] W`` over every real token, each prompt's first
token included (see ``drllm.search.stand_ins`` for why). The sums ``X^T X`` and ``X^T Y`` are accumulated
batch by batch in float64, so memory holds two ``(d + 1) x d`` matrices per unit, not the activations.

The maps are fitted on the full model's own states: a map serves every path that switches its unit off, so
one set serves a static path and per-input routers alike; on a path that drops several units, the input a
later unit sees drifts from what it was fitted on (block maps along a path, ``fit_linear_stand_ins``, can
be fitted afterwards with these unit maps in place and so correct some of that).

Rank ``r`` is the reduced-rank regression of ``drllm.search.stand_ins``.
"""

from __future__ import annotations

import torch

from drllm.router import SKIP, all_execute, check_decisions
from drllm.router.decisions import UNIT_OFF
from drllm.router.stand_ins import StandIns
from drllm.router.unit_stand_ins import UNITS

from .stand_ins import _accumulate, _batches, _kept, _solve, fit_linear_stand_ins


def units_to_fit(path, num_layers: int, protected: tuple[int, ...] = ()) -> list[tuple[str, int]]:
    """``(unit, layer)`` pairs to fit: those ``path`` switches off, or every unprotected one (``path=None``).

    Decision 3 switches off the attention, 4 the MLP; a skipped layer (0) runs neither and needs a block map.
    """
    L = num_layers
    if path is None:
        if any(not -L <= p < L for p in protected):
            raise ValueError(f"protected layers must lie in -{L}..{L - 1}, got {list(protected)}")
        fixed = {p % L for p in protected}
        return [(unit, i) for i in range(L) if i not in fixed for unit in UNITS]
    if protected:
        raise ValueError("protected layers are for path=None; a path names its switched-off units itself")
    plan = check_decisions(path, L, units=True)[0].tolist()
    return [(UNIT_OFF[d], i) for i, d in enumerate(plan) if d in UNIT_OFF]


@torch.no_grad()
def fit_unit_stand_ins(
    routed,
    tokenizer,
    prompts: list[str],
    path=None,
    rank: int | None = None,
    ridge: float = 1e-3,
    protected: tuple[int, ...] = (),
    skip_first: bool = False,
    batch_size: int = 16,
    stand_ins: StandIns | None = None,
) -> StandIns:
    """Linear stand-ins for the units ``path`` switches off (or for every unit; see the module docstring).

    Args:
        routed: a ``RoutedModel``; its routers and stand-ins are not used (the full model runs).
        tokenizer: its tokenizer (prompts are encoded as everywhere in drllm and left-padded).
        prompts: calibration prompts (a training split; never the evaluated examples).
        path: one decision per layer (0..4); None: a map for every unit of every layer outside ``protected``.
        rank: None for full-rank maps, else the rank of each map (``1 .. d - 1``); with ``stand_ins``, theirs.
        ridge: ridge strength, relative to the mean diagonal of ``X^T X``.
        protected: layers whose units get no map (only with ``path=None``).
        skip_first: leave each prompt's first token (the attention sink) out of the fit (not advised).
        batch_size: prompts per forward.
        stand_ins: add the maps to these (their block maps and repeat scales are kept); default: new ones.

    Returns:
        The stand-ins (not attached), recording ``unit_fit`` (path, units, prompts, tokens, ridge).
    """
    if not 0 <= ridge < float("inf"):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    units = units_to_fit(path, routed.num_layers, protected)
    if stand_ins is not None and rank is not None and rank != stand_ins.rank:
        raise ValueError(f"rank {rank} was asked for stand-ins of rank {stand_ins.rank}")
    out = stand_ins if stand_ins is not None else routed.new_stand_ins(rank)
    sums: dict = {}
    tokens, keep = 0, None

    def add(key, x, y):
        _accumulate(sums, key, x[keep], y[keep], residual=False)

    with routed.watching_units(units, add):
        for ids, mask in _batches(tokenizer, prompts, batch_size, routed.device):
            keep = _kept(mask, skip_first)
            tokens += int(keep.sum())
            routed.backbone(ids, mask, all_execute(routed.num_layers))
    if units and tokens <= routed.hidden_size:
        raise ValueError(
            f"{tokens} calibration tokens for maps of {routed.hidden_size} inputs: give more prompts"
        )
    for unit, i in units:
        out.set_unit_map(unit, i, *_solve(*sums[unit, i], ridge, out.rank))
    out.info["unit_fit"] = {
        "path": None if path is None else check_decisions(path, routed.num_layers, units=True)[0].tolist(),
        "units": [list(u) for u in units],
        "prompts": len(prompts),
        "tokens": tokens,
        "ridge": ridge,
        "skip_first": skip_first,
    }
    return out


def fit_path_stand_ins(
    routed, tokenizer, prompts: list[str], path, rank=None, batch_size: int = 16
) -> StandIns:
    """Every stand-in a static path needs: its switched-off units' maps, then its skipped layers' block maps.

    The block maps are fitted along the path with the unit maps in place (``fit_linear_stand_ins``).
    """
    maps = None
    if set(path) & set(UNIT_OFF):
        maps = fit_unit_stand_ins(routed, tokenizer, prompts, path, rank=rank, batch_size=batch_size)
    if SKIP in path:
        maps = fit_linear_stand_ins(
            routed, tokenizer, prompts, path, rank, batch_size=batch_size, stand_ins=maps
        )
    if maps is None:
        raise ValueError(f"path {list(path)} drops nothing: it needs no stand-ins")
    return maps
