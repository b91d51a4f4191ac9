"""Hidden states along a routed path and what the logit lens reads from them.

Per-layer KL to the final distribution, top-5 overlap, effective depth and the residual geometry that
``drllm analyze`` reports (``drllm.evaluation.analysis``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drllm.router import RoutedModel, batch_prompts, check_decisions, expand_path, surgery

TOP_K = 5
OVERLAP_THRESHOLD = 0.3


# ---------------------------------------------------------------------- states along a path
def final_norm(routed: RoutedModel) -> nn.Module:
    """The model's final norm (``drllm.router.surgery.final_norm``)."""
    return surgery.final_norm(routed.model)


def _last_positions(mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of each row's last real token (left or right padding)."""
    return mask.shape[1] - 1 - mask.flip(1).long().argmax(1)


@torch.no_grad()
def path_states(
    routed: RoutedModel, input_ids, attention_mask, decisions, states: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """States at each row's last real token after every layer application of its path.

    Row ``r`` gets ``[K_r + 1, d]``: the embedding, then the state after each application in
    ``expand_path(decisions[r])`` order (``K_r = sum(decisions[r])``; a repeat adds the state between its
    two passes). The recorded states entering every layer give all but those between passes, which come
    from one more forward started at the repeated layer (``starting_at``) that runs it once.

    Args:
        routed: the model.
        input_ids: ``[B, T]`` prompts (left- or right-padded).
        attention_mask: ``[B, T]``, 1 on real tokens.
        decisions: ``[L]`` or ``[B, L]``.
        states: the states ``recording`` gave for this very forward, when the caller has them.
    """
    L, batch = routed.num_layers, input_ids.shape[0]
    d = check_decisions(decisions, L, batch).to(routed.device)
    ids, mask = input_ids.to(routed.device), attention_mask.to(routed.device)
    if states is None:
        with routed.recording() as states:
            routed.backbone(ids, mask, d)
    last, rows = _last_positions(mask), torch.arange(batch, device=routed.device)
    entering = torch.stack([h[rows, last] for h in states], 1)  # [B, L + 1, d]
    between = _between_passes(routed, ids, mask, d, states, last)
    out = []
    for r, path in enumerate(d.tolist()):
        seq = [entering[r, 0]]
        for i, decision in enumerate(path):
            if decision == 2:
                seq.append(between[(r, i)])
            if decision:
                seq.append(entering[r, i + 1])
        out.append(torch.stack(seq))
    return out


def _between_passes(routed, ids, mask, d, states, last) -> dict[tuple[int, int], torch.Tensor]:
    """``{(row, layer): state after the first pass}`` at the last token, for every repeat of ``d``."""
    L = routed.num_layers
    pairs = [tuple(p) for p in (d == 2).nonzero().tolist()]
    found = {}
    for k in range(0, len(pairs), ids.shape[0]):
        chunk = pairs[k : k + ids.shape[0]]
        rows = torch.tensor([r for r, _ in chunk], device=ids.device)
        layers = [i for _, i in chunk]
        hidden = torch.stack([states[i][r] for r, i in chunk])  # [b, T, d] entering the repeated layer
        once = torch.zeros(len(chunk), L, dtype=torch.long)
        once[torch.arange(len(chunk)), layers] = 1  # that layer once, nothing after it
        with routed.recording() as after, routed.starting_at(layers, hidden):
            routed.backbone(ids[rows], mask[rows], once)
        picked = after[L][torch.arange(len(chunk), device=ids.device), last[rows]]
        found.update({pair: picked[j] for j, pair in enumerate(chunk)})
    return found


@torch.no_grad()
def lens_logits(routed: RoutedModel, states: torch.Tensor) -> torch.Tensor:
    """Logit-lens logits ``[..., V]`` of states ``[..., d]``: final norm, LM head, softcapping."""
    return routed.lm_logits(final_norm(routed)(states))


def lens_metrics(logits: torch.Tensor) -> dict[str, list[float]]:
    """Per state, the lens metrics of the module docstring against the last state's distribution.

    Args:
        logits: ``[K + 1, V]`` lens logits along one path; the last row is the model's output.
    """
    logq = logits.float().log_softmax(-1)  # [K + 1, V]
    logp = logq[-1]
    p, q = logp.exp(), logq.exp()
    k = min(TOP_K, logq.shape[-1])
    winner = int(logp.argmax())
    overlap = torch.isin(logq.topk(k, dim=-1).indices, logp.topk(k).indices).sum(-1) / k
    values = {
        "kl_final_to_lens": (p * (logp - logq)).sum(-1).clamp(min=0),
        "kl_lens_to_final": (q * (logq - logp)).sum(-1).clamp(min=0),
        "top5_overlap": overlap,
        "entropy": -(q * logq).sum(-1),
        "final_top1_rank": (logq > logq[:, winner : winner + 1]).sum(-1),
    }
    values["top1_agreement"] = (values["final_top1_rank"] == 0).float()
    return {key: [float(x) for x in v.tolist()] for key, v in values.items()}


def effective_depth(kl, overlap, layers=None) -> dict:
    """Effective depth by the KL and top-5 criteria of the module docstring.

    Args:
        kl: ``KL(p || q_l)`` for states ``l = 0 .. K``.
        overlap: top-5 overlap for the same states.
        layers: the layer each application ran (``expand_path`` of the path; default ``0 .. K - 1``).

    Returns:
        ``{"kl": {...}, "top5": {...}}``, each with ``layer`` (the layer whose output reaches it),
        ``depth`` (applications to reach it) and ``ratio`` (``depth / K``).
    """
    kl, overlap = np.asarray(kl, dtype=float), np.asarray(overlap, dtype=float)
    K = len(kl) - 1
    if K < 1 or len(overlap) != K + 1:
        raise ValueError(
            f"effective depth needs two curves of the same length >= 2, got {len(kl)}, {len(overlap)}"
        )
    layers = list(range(K)) if layers is None else list(layers)
    out = {}
    for name, ok in (("kl", kl <= kl[1:].max() / 2), ("top5", overlap > OVERLAP_THRESHOLD)):
        depth = K + 1
        while depth > 1 and ok[depth - 1]:
            depth -= 1
        if depth > K:  # the last state always qualifies; only non-finite curves get here
            out[name] = {"layer": None, "depth": None, "ratio": None}
        else:
            out[name] = {"layer": layers[depth - 1], "depth": depth, "ratio": depth / K}
    return out


class _Geometry:
    """Sums of the residual geometry of 1 over batches (real tokens but each prompt's first)."""

    def __init__(self, num_layers: int):
        self.norm = torch.zeros(num_layers, dtype=torch.float64)
        self.cosine = torch.zeros(num_layers, dtype=torch.float64)
        self.tokens = 0

    def add(self, states: list[torch.Tensor], mask: torch.Tensor) -> None:
        keep = mask.bool() & (mask.cumsum(1) > 1)  # [B, T]
        self.tokens += int(keep.sum())
        for i in range(len(self.norm)):
            h = states[i].float()[keep]  # [n, d]
            update = states[i + 1].float()[keep] - h
            self.norm[i] += float((update.norm(dim=-1) / h.norm(dim=-1).clamp(min=1e-12)).sum())
            self.cosine[i] += float(F.cosine_similarity(update, h, dim=-1).sum())

    def result(self) -> dict:
        if self.tokens == 0:
            raise ValueError("residual geometry needs prompts of 2 or more tokens (each first is left out)")
        return {
            "relative_update_norm": (self.norm / self.tokens).tolist(),
            "update_cosine": (self.cosine / self.tokens).tolist(),
            "tokens": self.tokens,
        }


@torch.no_grad()
def depth_pass(routed, tokenizer, prompts, decisions, batch_size: int = 16, geometry=None) -> list[dict]:
    """Per prompt, the lens metrics and effective depth along its path (one recorded forward per batch).

    Returns:
        One ``{"metrics", "depth", "layers"}`` per prompt: ``lens_metrics`` along the path,
        ``effective_depth`` and the layers the path executes.
    """
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = batch_prompts(tokenizer, prompts[start : start + batch_size], routed.device)
        d = torch.tensor(decisions[start : start + batch_size], dtype=torch.long)
        with routed.recording() as states:
            routed.backbone(ids, mask, d)
        if geometry is not None:
            geometry.add(states, mask)
        for path, seq in zip(d.tolist(), path_states(routed, ids, mask, d, states), strict=True):
            metrics = lens_metrics(lens_logits(routed, seq))
            order = expand_path(path)
            depth = effective_depth(metrics["kl_final_to_lens"], metrics["top5_overlap"], order)
            out.append({"metrics": metrics, "depth": depth, "layers": len(order)})
    return out
