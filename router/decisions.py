"""Decision vectors: the one representation every part of drllm speaks.

A path through a model with L decoder layers is a vector ``d`` of length L with values
0 = skip, 1 = execute, 2 = repeat (execute twice). A batch of paths is a LongTensor ``[B, L]``.
The layers executed by one forward pass are ``d.sum()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SKIP, EXECUTE, REPEAT = 0, 1, 2


def all_execute(num_layers: int, batch_size: int | None = None, device=None) -> torch.Tensor:
    """The default path (every layer once), as ``[L]`` or ``[B, L]``."""
    shape = (num_layers,) if batch_size is None else (batch_size, num_layers)
    return torch.ones(shape, dtype=torch.long, device=device)


def check_decisions(decisions, num_layers: int, batch_size: int | None = None) -> torch.Tensor:
    """Validate decisions and return them as a LongTensor ``[B, L]`` (or ``[1, L]`` for a single path).

    Args:
        decisions: a sequence or tensor of shape ``[L]`` (one path for every row) or ``[B, L]``.
        num_layers: L, the number of decoder layers of the model.
        batch_size: when given, a ``[L]`` path is expanded to ``[batch_size, L]`` and a ``[B, L]`` batch
            must have ``B == batch_size``.

    Raises:
        ValueError: naming the expected and given lengths, batch sizes or values.
    """
    d = torch.as_tensor(decisions)
    if d.is_floating_point() or d.dtype == torch.bool:
        if d.is_floating_point() and not torch.equal(d, d.round()):
            raise ValueError(
                f"decisions must be integers 0/1/2, got non-integer values {d.flatten()[:8].tolist()}"
            )
        d = d.round()
    d = d.long()
    if d.dim() not in (1, 2):
        raise ValueError(f"decisions must have shape [L] or [B, L], got shape {list(d.shape)}")
    if d.shape[-1] != num_layers:
        raise ValueError(f"decisions has {d.shape[-1]} columns, the model has {num_layers} layers")
    bad = (d < SKIP) | (d > REPEAT)
    if bad.any():
        values = sorted(set(d[bad].tolist()))
        raise ValueError(f"decisions must be 0 (skip), 1 (execute) or 2 (repeat), got values {values}")
    if d.dim() == 1:
        d = d.unsqueeze(0)
        if batch_size is not None:
            d = d.expand(batch_size, -1)
    elif batch_size is not None and d.shape[0] != batch_size:
        raise ValueError(f"decisions has {d.shape[0]} rows, the input batch has {batch_size} rows")
    return d.contiguous()


def parse_decisions(text: str, num_layers: int | None = None) -> list[int]:
    """Parse ``"1,1,0,2"`` (commas or spaces) into a list of ints, checking values and length."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = [int(p) for p in parts]
    except ValueError as err:
        raise ValueError(f"decisions must be integers 0/1/2 separated by commas, got {text!r}") from err
    if num_layers is not None:
        check_decisions(values, num_layers)
    elif any(v not in (SKIP, EXECUTE, REPEAT) for v in values):
        raise ValueError(f"decisions must be 0 (skip), 1 (execute) or 2 (repeat), got {text!r}")
    return values


def expand_path(decisions: Sequence[int]) -> list[int]:
    """The explicit layer sequence a path runs: ``[1, 0, 2] -> [0, 2, 2]`` (indices of executed layers)."""
    order = []
    for i, d in enumerate(torch.as_tensor(decisions).tolist()):
        order.extend([i] * int(d))
    return order


def format_decisions(decisions: Sequence[int]) -> str:
    """Compact text for a path: ``"11012"``-style digits, grouped by 10 layers for readability."""
    digits = "".join(str(int(v)) for v in torch.as_tensor(decisions).tolist())
    return " ".join(digits[i : i + 10] for i in range(0, len(digits), 10))


def check_budget(value) -> float:
    """The router budget (bias on every skip logit) as a float; refuses NaN, infinities and non-numbers.

    A NaN budget would make every skip logit NaN and every layer silently fall back, an infinite one skip
    or keep every layer whatever the routers say.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"budget must be a finite number, got {value!r}")
    return number
