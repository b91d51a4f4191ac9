"""Class-balanced focal loss for the skip / execute / repeat router decisions.

Routing labels are heavily imbalanced (most layers execute), so each class is weighted by the inverse
of its effective number of samples, ``(1 - beta ** n_c) / (1 - beta)`` (Cui et al., 2019), and easy
examples are down-weighted by the focal term ``(1 - p_t) ** gamma`` (Lin et al., 2017).
Pure torch; no Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def class_weights(class_counts: Tensor | Sequence[float], beta: float = 0.999) -> Tensor:
    """Class-balanced weights from the effective number of samples of each class.

    ``alpha_c = (1 - beta) / (1 - beta ** n_c)``, normalised so the weights sum to the number of
    classes (3 for skip / execute / repeat). A class with ``n_c = 0`` has an effective number of 0 and
    no finite weight; it gets weight 0 and the other classes are renormalised to sum to the number of
    classes (such a class should never appear as a target anyway).

    Args:
        class_counts: Label counts per class ``[C]``, counted over the whole training set.
        beta: Smoothing in ``[0, 1)``; 0 gives equal weights, values near 1 approach inverse frequency.

    Returns:
        float32 tensor ``[C]`` of non-negative weights summing to ``C``.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64).detach().cpu()
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"class_counts has shape {tuple(counts.shape)}, expected one count per class")
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"class_counts must be finite and non-negative, got {counts.tolist()}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta is {beta}, expected a value in [0, 1)")
    present = counts > 0
    if not present.any():
        raise ValueError("class_counts are all zero; no class has any training example")
    effective = 1.0 - beta**counts  # (1 - beta^n) / (1 - beta) up to the constant 1 / (1 - beta)
    weights = torch.where(present, (1.0 - beta) / effective.clamp_min(1e-300), torch.zeros_like(counts))
    return (weights * counts.numel() / weights.sum()).float()


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    class_counts: Tensor | Sequence[float],
    gamma: float = 2.0,
    beta: float = 0.999,
) -> Tensor:
    """Mean class-balanced focal loss.

    ``loss_i = -alpha[t_i] * (1 - p_i) ** gamma * log p_i`` with ``p_i`` the softmax probability of
    the target class and ``alpha`` from :func:`class_weights`. With ``gamma = 0`` and equal weights it
    equals cross-entropy.

    Args:
        logits: ``[N, C]`` (or ``[..., C]``, flattened) unnormalised class scores.
        targets: ``[N]`` (or ``[...]`` matching ``logits``) integer labels in ``[0, C)``.
        class_counts: ``[C]`` label counts over the whole training set.
        gamma: Focusing exponent, ``>= 0``.
        beta: Effective-number smoothing, see :func:`class_weights`.

    Returns:
        Scalar tensor, the mean over the N examples.
    """
    logits, targets = _flatten_checked(logits, targets)
    if gamma < 0:
        raise ValueError(f"gamma is {gamma}, expected a value >= 0")
    alpha = class_weights(class_counts, beta)
    if alpha.numel() != logits.shape[1]:
        raise ValueError(f"class_counts has {alpha.numel()} entries, logits have {logits.shape[1]} classes")
    alpha = alpha.to(device=logits.device, dtype=logits.dtype)
    log_probs = torch.log_softmax(logits, dim=-1)  # [N, C]
    log_pt = log_probs.gather(1, targets[:, None]).squeeze(1)  # [N]
    focal = (1.0 - log_pt.exp()).clamp_min(0.0).pow(gamma)
    return (-alpha[targets] * focal * log_pt).mean()


def soft_focal_loss(
    logits: Tensor,
    targets: Tensor,
    class_counts: Tensor | Sequence[float],
    gamma: float = 2.0,
    beta: float = 0.999,
) -> Tensor:
    """Mean class-balanced focal loss against target distributions.

    ``loss_i = -sum_c alpha[c] * t_ic * (1 - p_ic) ** gamma * log p_ic``; with one-hot targets it equals
    :func:`focal_loss`.

    Args:
        logits: ``[..., C]`` unnormalised class scores.
        targets: ``[..., C]`` non-negative target distributions (each row sums to 1).
        class_counts: ``[C]`` (soft) label counts over the whole training set.
        gamma: Focusing exponent, ``>= 0``.
        beta: Effective-number smoothing, see :func:`class_weights`.

    Returns:
        Scalar tensor, the mean over the rows.
    """
    if logits.shape != targets.shape or logits.dim() < 2:
        raise ValueError(
            f"targets has shape {tuple(targets.shape)}, logits {tuple(logits.shape)}: expected equal"
        )
    if gamma < 0:
        raise ValueError(f"gamma is {gamma}, expected a value >= 0")
    num_classes = logits.shape[-1]
    logits, targets = logits.reshape(-1, num_classes), targets.reshape(-1, num_classes).to(logits.dtype)
    alpha = class_weights(class_counts, beta).to(device=logits.device, dtype=logits.dtype)
    log_probs = torch.log_softmax(logits, dim=-1)
    focal = (1.0 - log_probs.exp()).clamp_min(0.0).pow(gamma)
    return -(alpha * targets * focal * log_probs).sum(-1).mean()


def _flatten_checked(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Validate logits ``[..., C]`` against targets ``[...]`` and flatten to ``[N, C]`` and ``[N]``."""
    if logits.dim() < 2:
        raise ValueError(f"logits has shape {tuple(logits.shape)}, expected [N, C]")
    if not logits.is_floating_point():
        raise TypeError(f"logits has dtype {logits.dtype}, expected a floating dtype")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets has shape {tuple(targets.shape)}, expected {tuple(logits.shape[:-1])} to match logits"
        )
    if targets.dtype != torch.long:
        raise TypeError(f"targets has dtype {targets.dtype}, expected torch.long")
    num_classes = logits.shape[-1]
    logits, targets = logits.reshape(-1, num_classes), targets.reshape(-1)
    if targets.numel() == 0:
        raise ValueError("logits and targets are empty; the mean loss of no examples is undefined")
    if (targets < 0).any() or (targets >= num_classes).any():
        raise ValueError(f"targets must lie in [0, {num_classes}), got values {targets.unique().tolist()}")
    return logits, targets
