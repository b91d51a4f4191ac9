"""Closeness to the base model: KL(base || path) over the base model's own greedy continuation.

Rows come from ``drllm.search.teacher`` (``prompt_ids`` and ``continuation``). ``batch_tensors`` right-pads
prompt + continuation; the targets are the prompt's last position and every continuation position but the
last (each predicts the next continuation token). ``teacher_log_probs`` runs the base model once per batch,
without gradient; ``per_row_kl`` averages the per-position KL over each row's targets. The static heuristics
(``heuristic_paths``) are the trainer's start and the signal test's controls.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from drllm.router import all_execute


def heuristic_paths(stats, num_layers: int, level: int, fixed: list[int]) -> dict[str, tuple[int, ...]]:
    """Angular and block-influence paths at ``level`` layers that never skip a ``fixed`` layer.

    ``stats`` is ``drllm.search.heuristics.calibration_statistics`` on calibration prompts.
    """
    n = num_layers - level
    free = [i for i in range(num_layers) if i not in fixed]
    if not 0 <= n <= len(free):
        raise ValueError(f"level {level} needs {n} skipped layers; {len(free)} layers may be skipped")
    order = sorted(free, key=lambda i: (float(stats.block_influence[i]), i))
    paths = {"block-influence": tuple(0 if i in order[:n] else 1 for i in range(num_layers))}
    starts = [s for s in range(num_layers - n + 1) if all(i in free for i in range(s, s + n))]
    if n > 0 and starts:
        best = min(starts, key=lambda s: float(stats.angular[n, s]))
        paths["angular"] = tuple(0 if best <= i < best + n else 1 for i in range(num_layers))
    elif n == 0:
        paths["angular"] = (1,) * num_layers
    return paths


@torch.no_grad()
def path_kl(routed, rows: list[dict], path, batch_size: int, pad_id: int) -> list[float]:
    """Per-row KL to the base model of one static path (teacher-forced over each continuation)."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = batch_tensors(rows[start : start + batch_size], pad_id, routed.device)
        teacher = teacher_log_probs(routed, batch)
        hidden = routed.backbone(batch["ids"], batch["attention"], torch.tensor(list(path)))
        student = F.log_softmax(routed.lm_logits(hidden[batch["target"].bool()]).float(), -1)
        out += per_row_kl(student, teacher, batch["target"]).tolist()
    return out


def batch_tensors(rows: list[dict], pad_id: int, device) -> dict:
    """Right-padded prompt + continuation ids and the masks a KL step needs.

    Returns ``ids``, ``attention`` ``[B, T]``, ``prompt`` ``[B, T]`` (1 on prompt tokens: what the routers
    pool) and ``target`` ``[B, T]`` (1 where the next token is a continuation token: the prompt's last
    position and every continuation position but the last).
    """
    seqs = [r["prompt_ids"] + r["continuation"] for r in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    prompt = torch.zeros_like(attention)
    target = torch.zeros_like(attention)
    for b, (row, seq) in enumerate(zip(rows, seqs, strict=True)):
        p, c = len(row["prompt_ids"]), len(row["continuation"])
        ids[b, : len(seq)] = torch.tensor(seq)
        attention[b, : len(seq)] = 1
        prompt[b, :p] = 1
        target[b, p - 1 : p - 1 + c] = 1
    return {
        k: v.to(device) for k, v in dict(ids=ids, attention=attention, prompt=prompt, target=target).items()
    }


def teacher_log_probs(routed, batch: dict) -> torch.Tensor:
    """The base model's log-probabilities ``[N, V]`` at the target positions (row-major), no gradient."""
    with torch.no_grad():
        hidden = routed.backbone(batch["ids"], batch["attention"], all_execute(routed.num_layers))
        return F.log_softmax(routed.lm_logits(hidden[batch["target"].bool()]).float(), -1)


def per_row_kl(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over each row's target positions of ``KL(teacher || student)``; ``[B]``."""
    kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)  # [N]
    return per_row_mean(kl, target)


def per_row_mean(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per row ``[B]`` of per-position values ``[N]`` at ``target [B, T]``'s ones (row-major)."""
    rows = target.bool().nonzero()[:, 0]
    total = torch.zeros(target.shape[0], device=values.device, dtype=values.dtype).index_add(0, rows, values)
    return total / target.sum(1).clamp(min=1).to(values.dtype)


@torch.no_grad()
def greedy_kl_path(routed, rows: list[dict], level: int, fixed, batch_size: int, pad_id: int, start=None):
    """The greedy static path on the dense objective: skip, one at a time, the layer that least raises KL.

    From the full path (or ``start``, a greedy path at a higher level: greedy paths are nested, so a lower
    level continues from a higher one), each round tries skipping every executed layer that is not ``fixed``
    and keeps the skip of least mean KL on ``rows`` (ties: the lower layer), until ``level`` layers remain.
    The base model's log-probabilities are computed once. Returns the path and the mean KL after each round.
    """
    L = routed.num_layers
    if not 1 <= level <= L:
        raise ValueError(f"level must lie in 1..{L}, got {level}")
    path, trace = [1] * L if start is None else [int(d) for d in start], []
    if len(path) != L or set(path) - {0, 1} or sum(path) < level:
        raise ValueError(f"start must be a 0/1 path of {L} layers running at least {level}, got {start!r}")
    batches = [
        batch_tensors(rows[s : s + batch_size], pad_id, routed.device)
        for s in range(0, len(rows), batch_size)
    ]
    teachers = [teacher_log_probs(routed, b) for b in batches]

    def mean_kl(path) -> float:
        total = 0.0
        for batch, teacher in zip(batches, teachers, strict=True):
            hidden = routed.backbone(batch["ids"], batch["attention"], torch.tensor(path))
            student = F.log_softmax(routed.lm_logits(hidden[batch["target"].bool()]).float(), -1)
            total += float(per_row_kl(student, teacher, batch["target"]).sum())
        return total / len(rows)

    while sum(path) > level:
        free = [i for i in range(L) if path[i] == 1 and i not in fixed]
        if not free:
            raise ValueError(f"level {level} needs more skips than the free layers allow")
        scores = {i: mean_kl(path[:i] + [0] + path[i + 1 :]) for i in free}
        best = min(free, key=lambda i: (scores[i], i))
        path[best] = 0
        trace.append(scores[best])
    return tuple(path), trace
