"""The ``knn`` router's "training": remember the training split, score the validation split.

A ``knn`` router has no weights to fit. It keeps the normalised features of every training prompt (read
along its labelled path, as the other routers are trained) and their target tables; a new prompt's logits
at layer ``i`` are the log of the average table of its ``k`` nearest training prompts at that layer. The
validation split is scored with the same metrics and loss as the trained routers, so ``metrics.json``
compares across kinds.
"""

from __future__ import annotations

import torch

from .loss import soft_focal_loss
from .metrics import routing_metrics
from .regret import regret_summary, regrets


def shuffled_targets(table: torch.Tensor, train_indices: list[int], seed: int) -> torch.Tensor:
    """The control: ``table [N, L, 3]`` with the training rows' targets permuted among themselves (seeded).

    Each training prompt keeps a real target, but another prompt's: any signal a router then finds in the
    prompt is chance. Validation rows keep their own targets, so the control is scored on the same labels.
    """
    order = torch.randperm(len(train_indices), generator=torch.Generator().manual_seed(seed + 1))
    index = torch.as_tensor(train_indices, dtype=torch.long)
    shuffled = table.clone()
    shuffled[index] = table[index[order]]
    return shuffled


@torch.no_grad()
def fit_neighbours(
    routers,
    features,
    table,
    train_indices,
    val_indices,
    counts,
    gains=None,
    static=None,
    gamma=2.0,
    beta=0.999,
):
    """Fill ``routers`` (kind ``knn``, made for ``len(train_indices)`` examples) and score validation.

    Args:
        routers: the ``Routers`` to fill.
        features: the teacher-forced ``FeatureSet`` of every example.
        table: ``[N, L, A]`` target tables (hard targets are one-hot).
        train_indices: rows to remember.
        val_indices: rows to score.
        counts: ``[A]`` class counts of the training targets (for the focal loss, as in training).
        gains: ``[N, L, 2]`` single-edit gains (``drllm.train.regret``); with ``static``, the validation
            regret and its verdict are added.
        static: the static choice per edit kind.
        gains: ``[N, L, 2]`` single-edit gains (``drllm.train.regret``); with ``static``, the validation
            regret and its verdict are added.
        static: the static choice per edit kind.
        gamma: focal-loss exponent.
        beta: class-balance smoothing.

    Returns:
        The validation metrics (``routing_metrics`` keys, ``epoch`` 0 and ``val_loss``).
    """
    train = torch.as_tensor(train_indices, dtype=torch.long)
    routers.fit_neighbours(features.pooled[train], features.valid[train], table[train])
    val = torch.as_tensor(val_indices, dtype=torch.long)
    device = routers.knn.keys.device
    logits = routers.forward_pooled(features.pooled[val].to(device), features.valid[val].to(device)).cpu()
    target = table[val]
    metrics = routing_metrics(logits.argmax(-1), target.argmax(-1), actions=logits.shape[-1])
    loss = soft_focal_loss(logits, target, [float(c) for c in counts], gamma, beta)
    out = {**metrics, "epoch": 0, "val_loss": float(loss)}
    if gains is not None and static is not None:
        out.update(regret_summary(regrets(logits, gains[val], static)))
    return out
