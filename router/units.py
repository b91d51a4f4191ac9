"""Sublayer units: a decoder layer run with its attention or its MLP switched off, for all rows or some.

``units_off(layer, {"attention": rows})`` switches a unit off for the forwards inside the context. With
``rows=True`` (every row), the unit's ``forward`` is replaced by one that returns zeros without computing
anything: no multiply-adds and, for attention, no KV-cache entry. With a row mask ``[B]`` (rows that differ,
with a cache, where the full batch must run), the unit runs and the masked rows' outputs are zeroed.
The modules keep their names and weights; nothing is left patched after the context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .surgery import sublayer


def _zeros_like_input(unit: str):
    def forward(*args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        zeros = torch.zeros_like(hidden)
        return (zeros, None) if unit == "attention" else zeros  # (output, attention weights), as HF returns

    return forward


def _zero_rows(rows: torch.Tensor):
    def hook(module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        keep = (~rows).to(first.dtype).view(-1, *([1] * (first.dim() - 1)))
        if keep.shape[0] != first.shape[0]:  # generate expanded the rows (beams)
            keep = keep.repeat_interleave(first.shape[0] // keep.shape[0], dim=0)
        return (first * keep, *output[1:]) if isinstance(output, tuple) else first * keep

    return hook


@contextlib.contextmanager
def units_off(layer: nn.Module, off: dict[str, bool | torch.Tensor]) -> Iterator[None]:
    """Switch units of ``layer`` off inside the context: ``{"attention"|"mlp": True or a [B] bool mask}``."""
    patched, handles = [], []
    try:
        for unit, rows in off.items():
            module = sublayer(layer, unit)
            if rows is True:
                module.forward = _zeros_like_input(unit)  # an instance attribute shadows the class's
                patched.append(module)
            else:
                handles.append(module.register_forward_hook(_zero_rows(rows)))
        yield
    finally:
        for module in patched:
            del module.forward
        for handle in handles:
            handle.remove()
