"""The task loss ``--gold-weight`` adds to the KL: cross-entropy over a prompt's answer options, same path.

For a batch of teacher rows, each multiple-choice prompt (``drllm.search.gold``) adds one row per option:
its prompt followed by the option's tokens. All rows run in one relaxed forward; ``groups`` ties every option
row to its teacher row, so they take the very path sampled (or deployed) for that prompt. An option's score
is its summed log-likelihood, as ``drllm eval``'s ``mc-loglik`` scores it; the loss of a prompt is
``-log softmax(scores)[gold]``, zero for a prompt without options.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from drllm.router import relaxed
from drllm.search.closeness import batch_tensors, per_row_kl


@dataclass
class GoldRows:
    """The option rows of one batch."""

    rows: list[dict]  # {"prompt_ids", "continuation": option ids}, one per option
    owner: torch.Tensor  # [R] the teacher row (index in the batch) each option row belongs to
    gold: torch.Tensor  # [B] the gold option's index among its prompt's option rows; -1 without options

    @property
    def groups(self) -> torch.Tensor:
        """Row -> the row whose path it runs (``Relaxation(groups=...)``): option rows take their prompt's."""
        return torch.cat([torch.arange(len(self.gold)), self.owner])


def gold_rows(chunk: list[dict], gold: dict[str, dict]) -> GoldRows | None:
    """The option rows of the teacher rows ``chunk``; None when no row has options.

    ``gold`` comes from ``drllm.search.gold.gold_options``.
    """
    rows, owner, first = [], [], []
    for b, row in enumerate(chunk):
        entry = gold.get(row["id"])
        if entry is None:
            first.append(-1)
            continue
        first.append(len(rows) + entry["gold"])
        for option in entry["options"]:
            rows.append({"prompt_ids": row["prompt_ids"], "continuation": list(option)})
            owner.append(b)
    if not rows:
        return None
    return GoldRows(rows, torch.tensor(owner, dtype=torch.long), torch.tensor(first, dtype=torch.long))


def step_with_gold(routed, relaxation, chunk: list[dict], extra: GoldRows, teacher, pad_id: int):
    """Per-row KL ``[B]``, option cross-entropy ``[B]`` and gold-option correctness ``[B]`` of one forward.

    Rows without options have cross-entropy 0 and correctness NaN. ``relaxation`` must have been built with
    ``groups=extra.groups``.
    """
    batch = batch_tensors(chunk + extra.rows, pad_id, routed.device)
    with relaxed(routed, relaxation):
        hidden = routed.backbone(batch["ids"], batch["attention"], route_mask=batch["prompt"])
    target = batch["target"].bool()
    student = F.log_softmax(routed.lm_logits(hidden[target]).float(), -1)
    B = len(chunk)
    n_teacher = int(target[:B].sum())
    kl = per_row_kl(student[:n_teacher], teacher, batch["target"][:B])
    ce, correct = option_scores(student[n_teacher:], batch["ids"][B:], target[B:], B, extra)
    return kl, ce, correct


def option_scores(student, ids, target, batch: int, extra: GoldRows) -> tuple[torch.Tensor, torch.Tensor]:
    """Per teacher row, ``-log softmax(option scores)[gold]`` and 1.0 where the gold option scores highest.

    A tie is wrong, as in eval; a row without options gets 0 and NaN.

    ``student`` holds the log-probabilities at the option rows' target positions (row-major), ``ids`` and
    ``target`` are the option rows' ``[R, T]`` ids and target mask.
    """
    ce = torch.zeros(batch, device=student.device)
    correct = torch.full((batch,), float("nan"), device=student.device)
    next_ids = torch.roll(ids, -1, dims=1)[target]  # the token each target position predicts
    token_lp = student.gather(1, next_ids[:, None]).squeeze(1)
    rows_of = target.nonzero()[:, 0]
    scores = torch.zeros(len(extra.rows), device=student.device, dtype=token_lp.dtype)
    scores = scores.index_add(0, rows_of, token_lp)  # summed log-likelihood per option
    for b in range(batch):
        if extra.gold[b] < 0:
            continue
        mine = (extra.owner == b).nonzero()[:, 0].to(student.device)
        gold = int(extra.gold[b]) - int(mine[0])
        ce[b] = -F.log_softmax(scores[mine], 0)[gold]
        others = torch.cat([scores[mine][:gold], scores[mine][gold + 1 :]])
        correct[b] = float(bool((scores[mine][gold] > others).all()))
    return ce, correct
