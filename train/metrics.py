"""Routing metrics: F1 and accuracy per decision class, and layers executed, from a confusion matrix.

Classes are 0 = skip, 1 = execute, 2 = repeat (and 3 = the MLP alone, 4 = the attention alone for routers
with sublayer actions). Every score is computed from one ``[A, A]`` confusion matrix (rows = target,
columns = prediction). Conventions for absent classes: a class with no target examples has recall
(``acc_*``) 0; a class absent from both target and prediction has F1 0 and is left out of the macro F1,
which averages the classes present in the target or the prediction (as scikit-learn does by default).
:func:`metrics_from_confusion` scores a matrix accumulated elsewhere (the training module sums one over
processes with torchmetrics). Pure torch; no Lightning.
"""

from __future__ import annotations

import torch
from torch import Tensor

CLASS_NAMES = ("skip", "execute", "repeat")
ACTION_NAMES = (*CLASS_NAMES, "mlp_only", "attention_only")
"""Every decision's name; routers with 3 actions use the first three."""


def path_layers(decisions: Tensor) -> Tensor:
    """Layers each row ``[..., L]`` runs: the sum of its decisions, a sublayer unit (3, 4) counting half."""
    return torch.where(decisions >= 3, 0.5, decisions.double()).sum(-1)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int = 3) -> Tensor:
    """Count (target, prediction) pairs.

    Args:
        pred: Predicted classes, integer tensor of any shape.
        target: Target classes, same shape as ``pred``.
        num_classes: Number of classes; values must lie in ``[0, num_classes)``.

    Returns:
        int64 tensor ``[num_classes, num_classes]``; entry ``[t, p]`` counts target t predicted as p.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)}, target has {tuple(target.shape)}")
    for name, values in (("pred", pred), ("target", target)):
        if values.is_floating_point() or values.is_complex():
            raise TypeError(f"{name} has dtype {values.dtype}, expected integer class labels")
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} has values outside [0, {num_classes}): {values.unique().tolist()}")
    flat = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(flat.cpu(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """Elementwise ``numerator / denominator`` with 0 where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1), torch.zeros_like(numerator))


def routing_metrics(pred: Tensor, target: Tensor, actions: int = 3) -> dict[str, float]:
    """Scores of predicted routing decisions against target decisions.

    Args:
        pred: Predicted decisions, ``[N, L]`` (one row per example) or flat ``[M]``.
        target: Target decisions, same shape as ``pred``.
        actions: 3 (skip, execute, repeat) or 5 (and the two sublayer units).

    Returns:
        :func:`metrics_from_confusion`'s dict; ``layers_pred`` and ``layers_target`` for 2-D input only.
    """
    if pred.dim() not in (1, 2):
        raise ValueError(f"pred has shape {tuple(pred.shape)}, expected [N, L] or a flat vector")
    if pred.numel() == 0:
        raise ValueError("pred and target are empty; there is nothing to score")
    cm = confusion_matrix(pred, target, num_classes=actions)
    if pred.dim() == 1:
        return metrics_from_confusion(cm)
    return metrics_from_confusion(
        cm,
        layers_pred=path_layers(pred).mean().item(),
        layers_target=path_layers(target).mean().item(),
    )


def metrics_from_confusion(
    cm: Tensor, layers_pred: float | None = None, layers_target: float | None = None
) -> dict[str, float]:
    """Scores from a confusion matrix (rows = target, columns = prediction) and the layers executed.

    Args:
        cm: ``[A, A]`` counts (A = 3 or 5), e.g. from :func:`confusion_matrix` or a torchmetrics
            ``MulticlassConfusionMatrix`` summed over processes.
        layers_pred: Mean over examples of the predicted layers executed (row sum), added when given.
        layers_target: The same for the target decisions, added when given.

    Returns:
        Dict with ``macro_f1``, ``f1_{skip,execute,repeat}``, ``acc_{skip,execute,repeat}`` (recall:
        accuracy on the targets of that class), ``accuracy`` and the ``layers_*`` given.
    """
    size = cm.shape[0] if cm.dim() == 2 else 0
    if size not in (len(CLASS_NAMES), len(ACTION_NAMES)) or tuple(cm.shape) != (size, size):
        raise ValueError(f"cm has shape {tuple(cm.shape)}, expected [3, 3] or [5, 5]")
    cm = cm.detach().double().cpu()
    if cm.sum() <= 0:
        raise ValueError("the confusion matrix is empty; there is nothing to score")
    hits = cm.diagonal()
    support, predicted = cm.sum(dim=1), cm.sum(dim=0)
    recall = _safe_ratio(hits, support)
    f1 = _safe_ratio(2 * hits, support + predicted)  # = 2PR / (P + R), 0 when the class never occurs
    present = (support + predicted) > 0
    metrics = {"macro_f1": f1[present].mean().item(), "accuracy": (hits.sum() / cm.sum()).item()}
    for index, name in enumerate(ACTION_NAMES[:size]):
        metrics[f"f1_{name}"] = f1[index].item()
        metrics[f"acc_{name}"] = recall[index].item()
    for key, value in (("layers_pred", layers_pred), ("layers_target", layers_target)):
        if value is not None:
            metrics[key] = float(value)
    return metrics
