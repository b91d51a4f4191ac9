"""Router heads: what turns a layer's window means into skip / execute / repeat logits.

Each head gives ``actions`` logits: 3 (skip, execute, repeat), or 5 with the sublayer units of a
``--units sublayer`` search (3: the MLP alone, 4: the attention alone), in decision-value order.

``mlp`` (``LayerRouter``), ``linear`` (``LinearRouter``), ``shared`` (``SharedRouter``), ``knn``
(``NeighbourRouter``) and ``static`` (``StaticRouter``, no input); ``Routers`` holds one per layer or one for
all (see ``drllm.router.routers``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .pooling import window_average


class LayerRouter(nn.Module):
    """``Linear(d, h) -> GELU -> Linear(h, A)`` applied to each window mean, logits averaged over windows."""

    def __init__(self, hidden_size: int, bottleneck: int = 128, actions: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, bottleneck), nn.GELU(), nn.Linear(bottleneck, actions)
        )

    def forward(
        self, pooled: torch.Tensor, valid: torch.Tensor, average: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[B, A]`` from window means ``[B, W, d]`` and their validity ``[B, W]``.

        ``average`` is ``window_average(valid)``; pass it when the same windows serve many routers.
        The last Linear is affine and each row's averaging weights sum to 1, so averaging its outputs over
        the valid windows equals averaging its inputs; applying it per window first keeps this at five
        kernels (this runs once per layer at prefill, where each tiny kernel's launch costs more than its
        arithmetic).
        """
        first, _, last = self.net
        b, w, d = pooled.shape
        if average is None:
            average = window_average(valid)
        hidden = F.gelu(F.linear(pooled.reshape(b * w, d).to(first.weight.dtype), first.weight, first.bias))
        per_window = F.linear(hidden, last.weight, last.bias).view(b, w, -1)
        return torch.bmm(average.to(per_window.dtype), per_window)[:, 0].float()


class LinearRouter(nn.Module):
    """``Linear(d, A)`` on the average of the valid window means (a linear map commutes with the average)."""

    def __init__(self, hidden_size: int, actions: int = 3):
        super().__init__()
        self.proj = nn.Linear(hidden_size, actions)

    def forward(
        self, pooled: torch.Tensor, valid: torch.Tensor, average: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[B, A]`` from window means ``[B, W, d]`` and their validity ``[B, W]``."""
        if average is None:
            average = window_average(valid)
        mean = torch.bmm(average.to(pooled.dtype), pooled)[:, 0]
        return F.linear(mean.to(self.proj.weight.dtype), self.proj.weight, self.proj.bias).float()


class SharedRouter(nn.Module):
    """One ``Linear(d, h) -> GELU -> Linear(h, A)`` for all layers; layer ``i`` adds its embedding to h."""

    def __init__(self, hidden_size: int, bottleneck: int, num_layers: int, actions: int = 3):
        super().__init__()
        self.first = nn.Linear(hidden_size, bottleneck)
        self.layer_embedding = nn.Parameter(torch.randn(num_layers, bottleneck) * 0.02)
        self.last = nn.Linear(bottleneck, actions)

    def forward(
        self, index, pooled: torch.Tensor, valid: torch.Tensor, average: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[..., A]`` of layer(s) ``index`` from window means ``[..., W, d]`` and ``valid [..., W]``.

        ``index`` is one layer (``pooled [B, W, d]``) or None for every layer at once (``pooled
        [B, L, W, d]``, the layers on dim 1).
        """
        weight = self.first.weight
        hidden = F.linear(pooled.to(weight.dtype), weight, self.first.bias)  # [..., W, h]
        embedding = self.layer_embedding[index] if index is not None else self.layer_embedding[:, None]
        per_window = self.last(F.gelu(hidden + embedding))  # [..., W, A]
        if average is None:
            weights = valid.to(per_window.dtype)
            average = weights / weights.sum(-1, keepdim=True).clamp(min=1)
            return (average[..., None] * per_window).sum(-2).float()
        return torch.bmm(average.to(per_window.dtype), per_window)[:, 0].float()


class NeighbourRouter(nn.Module):
    """k nearest training prompts: the log of the average of their target tables.

    A prompt's feature at layer ``i`` is the average of its valid (normalised) window means, centred with
    the training prompts' mean at that layer and scaled to unit length; neighbours are the ``k`` training
    prompts of highest cosine similarity. Its state is data, not weights: ``keys [L, N, d]``, ``centre
    [L, d]`` and ``tables [N, L, A]`` (each row a distribution over skip / execute / repeat), set by ``fit``.
    """

    def __init__(self, hidden_size: int, num_layers: int, examples: int, neighbours: int, actions: int = 3):
        super().__init__()
        self.neighbours = neighbours
        self.register_buffer("keys", torch.zeros(num_layers, examples, hidden_size))
        self.register_buffer("centre", torch.zeros(num_layers, hidden_size))
        self.register_buffer("tables", torch.full((examples, num_layers, actions), 1 / actions))

    @staticmethod
    def mean(pooled: torch.Tensor, valid: torch.Tensor, average: torch.Tensor | None = None) -> torch.Tensor:
        """The average of the valid window means: ``[..., d]`` from ``[..., W, d]``."""
        if average is not None:
            return torch.bmm(average.to(pooled.dtype), pooled)[:, 0]
        weights = valid.to(pooled.dtype)
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1)
        return (weights[..., None] * pooled).sum(-2)

    @torch.no_grad()
    def fit(self, pooled: torch.Tensor, valid: torch.Tensor, tables: torch.Tensor) -> None:
        """Remember N training prompts.

        Args: normalised window means ``[N, L, W, d]``, ``valid [N, L, W]`` and target tables ``[N, L, A]``.
        """
        mean = self.mean(pooled.float(), valid).transpose(0, 1)  # [L, N, d]
        self.centre.copy_(mean.mean(1))
        self.keys.copy_(F.normalize(mean - self.centre[:, None], dim=-1))
        self.tables.copy_(tables.float() / tables.float().sum(-1, keepdim=True).clamp(min=1e-12))

    def forward(self, index, pooled: torch.Tensor, valid: torch.Tensor, average=None) -> torch.Tensor:
        """Logits ``[B, A]`` of layer ``index``; ``index=None``: ``[B, L, A]`` from ``[B, L, W, d]``."""
        k = min(self.neighbours, self.keys.shape[1])
        if index is None:
            feature = F.normalize(self.mean(pooled, valid) - self.centre, dim=-1)  # [B, L, d]
            top = torch.einsum("bld,lnd->bln", feature, self.keys).topk(k, -1).indices  # [B, L, k]
            layer = torch.arange(self.keys.shape[0], device=top.device)[None, :, None]
            probs = self.tables[top, layer.expand_as(top)].mean(-2)
        else:
            feature = F.normalize(self.mean(pooled, valid, average) - self.centre[index], dim=-1)  # [B, d]
            top = (feature @ self.keys[index].T).topk(k, -1).indices  # [B, k]
            probs = self.tables[:, index][top].mean(-2)
        # a tie (8 of 16 votes each, or an unfitted router's uniform tables) goes to execute, never to skip
        tie = probs.new_zeros(probs.shape[-1])
        tie[1] = 1e-6
        probs = probs + tie
        return probs.clamp(min=1e-4).log().float()


class StaticRouter(nn.Module):
    """One learnable logit vector per layer and no input: the same decisions for every prompt.

    The control of every input-conditioned router trained on the same objective (a learned static path),
    and a product of its own when the prompt says nothing about which layers it can lose.
    """

    def __init__(self, num_layers: int, actions: int = 3):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers, actions))

    def forward(self, index, pooled: torch.Tensor, valid: torch.Tensor, average=None) -> torch.Tensor:
        """Logits ``[B, A]`` of layer ``index`` (``[B, L, A]`` for ``index=None``); the input sets only B."""
        batch = pooled.shape[0]
        if index is None:
            return self.logits.float()[None].expand(batch, -1, -1)
        return self.logits[index].float()[None].expand(batch, -1)


KINDS = ("mlp", "linear", "shared", "knn", "static")
