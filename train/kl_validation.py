"""Validation of KL routers: the deployed argmax decisions' KL to the base model, layers, option accuracy."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from drllm.router import EXECUTE, Relaxation, relaxed
from drllm.search.closeness import batch_tensors, per_row_kl, teacher_log_probs

from .gold_loss import gold_rows, step_with_gold


def relaxed_step(routed, relaxation: Relaxation, batch: dict, teacher: torch.Tensor) -> torch.Tensor:
    """Per-row KL ``[B]`` of a relaxed routed forward (the gates stay in ``relaxation``)."""
    with relaxed(routed, relaxation):
        hidden = routed.backbone(batch["ids"], batch["attention"], route_mask=batch["prompt"])
    student = F.log_softmax(routed.lm_logits(hidden[batch["target"].bool()]).float(), -1)
    return per_row_kl(student, teacher, batch["target"])


@torch.no_grad()
def evaluate_kl(
    routed, rows: list[dict], batch_size: int, pad_id: int, fixed, shift: float = 0.0, gold=None
) -> dict:
    """Validation with the deployed argmax decisions: mean KL, mean layers and the 5th/95th percentiles.

    With ``gold`` (answer options), also the option cross-entropy and accuracy over the prompts that have
    options (``val_gold_ce``, ``val_gold_accuracy``, ``val_gold_prompts``).
    """
    kls, layers, ces, corrects = [], [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = batch_tensors(chunk, pad_id, routed.device)
        teacher = teacher_log_probs(routed, batch)
        extra = gold_rows(chunk, gold) if gold else None
        if extra is not None:
            groups = extra.groups
            relaxation = Relaxation(
                routed.routers, fixed=fixed, sample=False, budget=shift, groups=groups, straight_through=False
            )
            kl, ce, correct = step_with_gold(routed, relaxation, chunk, extra, teacher, pad_id)
            has = extra.gold >= 0
            ces += ce[has].tolist()
            corrects += correct[has].tolist()
        else:
            relaxation = Relaxation(
                routed.routers, fixed=fixed, sample=False, budget=shift, straight_through=False
            )
            kl = relaxed_step(routed, relaxation, batch, teacher)
        kls += kl.tolist()
        layers += relaxation.layers()[: len(chunk)].tolist()
    ordered = sorted(layers)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    out = {
        "val_kl": sum(kls) / len(kls),
        "val_layers": sum(layers) / len(layers),
        "val_layers_p5": pick(0.05),
        "val_layers_p95": pick(0.95),
    }
    if ces:
        out.update(val_gold_ce=sum(ces) / len(ces), val_gold_accuracy=sum(corrects) / len(corrects))
        out["val_gold_prompts"] = len(ces)
    return out


def executed_share(decisions: torch.Tensor) -> list[float]:
    """Share of rows that execute each layer (for reports)."""
    return (decisions == EXECUTE).float().mean(0).tolist()
