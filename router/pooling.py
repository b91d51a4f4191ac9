"""Window pooling: what every router reads of the hidden states entering its layer.

A prompt's real (non-padding) tokens are split into W contiguous windows (W clamped to the prompt length)
and each window is averaged; the pooling weights are computed once per prompt and reused by every layer.
"""

from __future__ import annotations

import torch


def window_weights(
    mask: torch.Tensor | None, batch: int, length: int, num_windows: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooling weights ``[B, W, T]`` (each valid row averages one window of real tokens) and ``valid [B, W]``.

    A row with n real tokens uses ``min(W, n)`` windows; real token r (in order) falls in window
    ``floor(r * W_row / n)``. Padding may sit anywhere. Compute once per batch, reuse for every layer.
    """
    if num_windows < 1:
        raise ValueError(f"num_windows must be >= 1, got {num_windows}")
    real = (
        torch.ones(batch, length, dtype=torch.bool, device=device) if mask is None else mask.to(device).bool()
    )
    if real.shape != (batch, length):
        raise ValueError(f"mask has shape {list(real.shape)}, hidden states need [{batch}, {length}]")
    n = real.sum(1)  # [B]
    if (n == 0).any():
        raise ValueError("a row has no real (non-padding) tokens; cannot pool an empty prompt")
    windows = n.clamp(max=num_windows)  # [B]
    rank = real.long().cumsum(1) - 1  # [B, T] order of each real token
    slot = torch.div(rank * windows[:, None], n[:, None], rounding_mode="floor")  # [B, T]
    member = (slot[:, None, :] == torch.arange(num_windows, device=real.device)[None, :, None]) & real[
        :, None, :
    ]
    counts = member.sum(-1, keepdim=True)  # [B, W, 1]
    weights = member.float() / counts.clamp(min=1)
    return weights, counts[..., 0] > 0


def pooling_mask(mask: torch.Tensor | None, batch: int, length: int, skip_first: bool, device=None):
    """The mask pooling reads: ``mask`` (None: every token real), without each row's first real token.

    With ``skip_first`` a row keeps its first real token only when it has no other.
    """
    if not skip_first:
        return mask
    real = torch.ones(batch, length, dtype=torch.bool, device=device) if mask is None else mask.bool()
    first = real.long().cumsum(1).eq(1) & real
    drop = first & (real.sum(1, keepdim=True) > 1)
    return real & ~drop


def window_pool(
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    num_windows: int,
    weights: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pool each row's real tokens over W contiguous windows.

    Args:
        hidden: ``[B, T, d]`` hidden states.
        mask: ``[B, T]`` 1 for real tokens, 0 for padding (any position), or None (all real).
        num_windows: W; a row with n real tokens uses ``min(W, n)`` windows.
        weights: precomputed ``window_weights`` for this mask (optional).

    Returns:
        ``(means [B, W, d] float32, valid [B, W] bool)``; windows past a row's clamped count are zero and
        invalid.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden states must be [B, T, d], got shape {list(hidden.shape)}")
    b, t, _ = hidden.shape
    matrix, valid = weights if weights is not None else window_weights(mask, b, t, num_windows, hidden.device)
    return torch.bmm(matrix, hidden.float()), valid


def window_average(valid: torch.Tensor) -> torch.Tensor:
    """Weights ``[B, 1, W]`` that average each row over its valid windows (``valid [B, W]``)."""
    weights = valid.float()
    return (weights / weights.sum(1, keepdim=True).clamp(min=1))[:, None, :]
