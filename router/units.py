"""Sublayer units: a decoder layer run with its attention or its MLP switched off, for all rows or some.

``units_off(layer, {"attention": rows})`` switches a unit off for the forwards inside the context. With
``rows=True`` (every row), the unit's ``forward`` is replaced by one that returns zeros without computing
anything: no multiply-adds and, for attention, no KV-cache entry. With a row mask ``[B]`` (rows that differ,
with a cache, where the full batch must run), the unit runs and the masked rows' outputs are zeroed.

``maps`` gives a switched-off unit a stand-in: a function of the module's own input (``[..., d]``, each
position alone) whose value the unit returns in place of zeros (``StandIns.apply_unit``). It writes no
KV-cache entry either. The modules keep their names and weights; nothing is left patched after the context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .surgery import sublayer

UnitMap = Callable[[torch.Tensor], torch.Tensor]


def _module_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _switched_off(unit: str, stand_in: UnitMap | None):
    def forward(*args, **kwargs):
        hidden = _module_input(args, kwargs)
        out = torch.zeros_like(hidden) if stand_in is None else stand_in(hidden)
        return (out, None) if unit == "attention" else out  # (output, attention weights), as HF returns

    return forward


def _replace_rows(rows: torch.Tensor, stand_in: UnitMap | None):
    def hook(module, args, kwargs, output):
        first = output[0] if isinstance(output, tuple) else output
        chosen = rows.view(-1, *([1] * (first.dim() - 1)))
        if chosen.shape[0] != first.shape[0]:  # generate expanded the rows (beams)
            chosen = chosen.repeat_interleave(first.shape[0] // chosen.shape[0], dim=0)
        if stand_in is None:
            new = first * (~chosen).to(first.dtype)
        else:
            new = torch.where(chosen, stand_in(_module_input(args, kwargs)).to(first.dtype), first)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


@contextlib.contextmanager
def units_off(
    layer: nn.Module, off: dict[str, bool | torch.Tensor], maps: dict[str, UnitMap] | None = None
) -> Iterator[None]:
    """Switch units of ``layer`` off inside the context: ``{"attention"|"mlp": True or a [B] bool mask}``.

    ``maps``: per unit, the stand-in a switched-off unit returns (a function of its input); zeros without.
    """
    patched, handles = [], []
    maps = maps or {}
    try:
        for unit, rows in off.items():
            module = sublayer(layer, unit)
            if rows is True:
                module.forward = _switched_off(
                    unit, maps.get(unit)
                )  # an instance attribute shadows the class's
                patched.append(module)
            else:
                hook = _replace_rows(rows, maps.get(unit))
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for module in patched:
            del module.forward
        for handle in handles:
            handle.remove()
