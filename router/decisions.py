"""Decision vectors: the one representation every part of drllm speaks.

A path through a model with L decoder layers is a vector ``d`` of length L with values
0 = skip, 1 = execute, 2 = repeat (execute twice). A batch of paths is a LongTensor ``[B, L]``.
The layers executed by one forward pass are ``d.sum()``.

Sublayer units extend the same vector: 3 = the layer's attention is skipped (its MLP runs alone), 4 = its
MLP is skipped (its attention runs alone). ``RoutedModel`` runs them (``check_decisions(..., units=True)``);
the search, the routers and the evaluation speak 0/1/2 only and refuse them. With units, count layer
applications with ``layer_applications`` (a layer with one unit running counts once) and compute with
``compute.path_macs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SKIP, EXECUTE, REPEAT = 0, 1, 2
MLP_ONLY, ATTENTION_ONLY = 3, 4  # attention skipped (the MLP runs); MLP skipped (the attention runs)
UNIT_OFF = {MLP_ONLY: "attention", ATTENTION_ONLY: "mlp"}  # decision -> the sublayer it skips


def all_execute(num_layers: int, batch_size: int | None = None, device=None) -> torch.Tensor:
    """The default path (every layer once), as ``[L]`` or ``[B, L]``."""
    shape = (num_layers,) if batch_size is None else (batch_size, num_layers)
    return torch.ones(shape, dtype=torch.long, device=device)


def check_decisions(
    decisions, num_layers: int, batch_size: int | None = None, units: bool = False
) -> torch.Tensor:
    """Validate decisions and return them as a LongTensor ``[B, L]`` (or ``[1, L]`` for a single path).

    Args:
        decisions: a sequence or tensor of shape ``[L]`` (one path for every row) or ``[B, L]``, or one
            path as text (``"1,1,0,2"`` or ``"1102"``, see ``parse_decisions``).
        num_layers: L, the number of decoder layers of the model.
        batch_size: when given, a ``[L]`` path is expanded to ``[batch_size, L]`` and a ``[B, L]`` batch
            must have ``B == batch_size``.
        units: accept the sublayer values 3 and 4 too (see the module docstring).

    Raises:
        ValueError: naming the expected and given lengths, batch sizes or values.
    """
    if isinstance(decisions, str):
        decisions = parse_decisions(decisions, units=True)  # the values are checked below, with ``units``
    d = torch.as_tensor(decisions)
    allowed = "0/1/2/3/4" if units else "0/1/2"
    if d.dtype == torch.bool:
        raise ValueError(f"decisions must be integers {allowed}, got a tensor of dtype torch.bool")
    if d.is_floating_point():
        if not torch.equal(d, d.round()):
            raise ValueError(
                f"decisions must be integers {allowed}, got non-integer values {d.flatten()[:8].tolist()}"
            )
        d = d.round()
    d = d.long()
    if d.dim() not in (1, 2):
        raise ValueError(f"decisions must have shape [L] or [B, L], got shape {list(d.shape)}")
    if d.shape[-1] != num_layers:
        raise ValueError(f"decisions has {d.shape[-1]} columns, the model has {num_layers} layers")
    bad = (d < SKIP) | (d > (ATTENTION_ONLY if units else REPEAT))
    if bad.any():
        values = sorted(set(d[bad].tolist()))
        if units:
            raise ValueError(
                "decisions must be 0 (skip), 1 (execute), 2 (repeat), 3 (MLP only) or 4 (attention only), "
                f"got values {values}"
            )
        extra = (
            "; 3 and 4 (sublayer units) run in RoutedModel forward and generate only"
            if set(values) <= {MLP_ONLY, ATTENTION_ONLY}
            else ""
        )
        raise ValueError(f"decisions must be 0 (skip), 1 (execute) or 2 (repeat), got values {values}{extra}")
    if d.dim() == 1:
        d = d.unsqueeze(0)
        if batch_size is not None:
            d = d.expand(batch_size, -1)
    elif batch_size is not None and d.shape[0] != batch_size:
        raise ValueError(f"decisions has {d.shape[0]} rows, the input batch has {batch_size} rows")
    return d.contiguous()


def parse_decisions(text: str, num_layers: int | None = None, units: bool = False) -> list[int]:
    """Parse a path written as text into a list of ints, checking values and length.

    Two forms: one value per layer separated by commas or spaces (``"1,1,0,2"``, ``"1 1 0 2"``), or compact
    digits, one per layer (``"1102"``; groups may be split by ``_`` or spaces, as ``format_decisions``
    prints them: ``"1111111111_1101"``).
    """
    allowed = "0/1/2/3/4" if units else "0/1/2"
    text = str(text)
    if "," in text:
        parts = [p.strip() for p in text.split(",")]
    else:
        parts = [c for c in text if not (c.isspace() or c == "_")]  # compact digits; single values too
    if not parts or any(not (len(p) == 1 and "0" <= p <= "9") for p in parts):
        raise ValueError(
            f'decisions must be one value {allowed} per layer, separated by commas ("1,1,0,2") or as '
            f'compact digits ("1102"), got {text!r}'
        )
    values = [int(p) for p in parts]
    if num_layers is not None:
        check_decisions(values, num_layers, units=units)
    elif any(not SKIP <= v <= (ATTENTION_ONLY if units else REPEAT) for v in values):
        raise ValueError(f"decisions must be values {allowed} (0 skip, 1 execute, 2 repeat), got {text!r}")
    return values


def expand_path(decisions: Sequence[int]) -> list[int]:
    """The explicit layer sequence a path runs: ``[1, 0, 2] -> [0, 2, 2]`` (indices of executed layers).

    A layer running one sublayer unit (3 or 4) appears once.
    """
    order = []
    for i, d in enumerate(torch.as_tensor(decisions).tolist()):
        order.extend([i] * (1 if int(d) in UNIT_OFF else int(d)))
    return order


def layer_applications(decisions) -> torch.Tensor:
    """Layer applications per path (``[B]``, or a scalar for ``[L]``): a unit-only layer counts once."""
    d = torch.as_tensor(decisions)
    return torch.where(d > REPEAT, torch.ones_like(d), d).sum(-1)


def format_decisions(decisions: Sequence[int]) -> str:
    """Compact text for a path: ``"11012"``-style digits, grouped by 10 layers with ``_``.

    One word that ``parse_decisions`` (so ``--decisions``) reads back.
    """
    digits = "".join(str(int(v)) for v in torch.as_tensor(decisions).tolist())
    return "_".join(digits[i : i + 10] for i in range(0, len(digits), 10))


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
