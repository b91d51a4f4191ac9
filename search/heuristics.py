"""Static paths from layer statistics of the base model: angular distance, block influence, drop-last, random.

Pure functions of one all-execute pass over calibration prompts (never evaluation ones); the evaluation's
baselines (``drllm.evaluation.baselines``) and the KL trainer's starting path (``drllm.train.kl``) both
use them. A level is a count ``c`` of executed layers; a skip-only path at level ``c`` skips ``n = L - c``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from drllm.router import all_execute, batch_prompts


def _check_n(num_layers: int, n: int, most: int) -> None:
    if not 0 <= n <= most:
        raise ValueError(f"cannot skip {n} layers of a {num_layers}-layer model; expected 0..{most}")


def _skipping(num_layers: int, skipped: Iterable[int]) -> tuple[int, ...]:
    skipped = set(skipped)
    return tuple(0 if i in skipped else 1 for i in range(num_layers))


def drop_last(num_layers: int, n: int, keep_last: bool = True) -> list[int]:
    """Skip the ``n`` layers just before the final one (the last ``n`` layers when ``keep_last=False``).

    Args:
        num_layers: Layers ``L`` of the model.
        n: Layers to skip, ``0 <= n <= L - 1`` (``<= L`` without ``keep_last``).
        keep_last: Never skip the final layer.

    Returns:
        A decision vector of length ``L`` with ``n`` zeros.
    """
    end = num_layers - 1 if keep_last else num_layers
    _check_n(num_layers, n, end)
    return list(_skipping(num_layers, range(end - n, end)))


def random_skips(num_layers: int, n: int, seed: int, keep_last: bool = True) -> list[int]:
    """Skip ``n`` distinct layers drawn with ``random.Random(seed)``, never the final one by default.

    Args:
        num_layers: Layers ``L`` of the model.
        n: Layers to skip, ``0 <= n <= L - 1`` (``<= L`` without ``keep_last``).
        seed: Seed of the draw.
        keep_last: Never skip the final layer.

    Returns:
        A decision vector of length ``L`` with ``n`` zeros.
    """
    end = num_layers - 1 if keep_last else num_layers
    _check_n(num_layers, n, end)
    return list(_skipping(num_layers, random.Random(seed).sample(range(end), n)))


def layers_to_drop(mean_layers: float, num_layers: int) -> int:
    """Layers a static baseline skips to match ``mean_layers`` per prompt: ``max(0, round(L - mean))``."""
    return max(0, round(num_layers - mean_layers))


# ---------------------------------------------------------------------- calibration statistics
@dataclass(frozen=True)
class CalibrationStats:
    """Layer statistics of one all-execute pass over calibration prompts (see the module docstring).

    Attributes:
        angular: ``[L + 1, L + 1]`` float32; ``angular[n, l]`` is the mean over prompts of
            ``arccos(cos(h_l, h_{l+n})) / pi`` at the last token (NaN where ``l + n > L``).
        block_influence: ``[L]`` float32; ``1 - mean cos(h_l, h_{l+1})`` over the tokens of every prompt
            but each prompt's first.
        prompts: Prompts averaged over.
        tokens: Tokens ``block_influence`` averages over.
    """

    angular: torch.Tensor
    block_influence: torch.Tensor
    prompts: int
    tokens: int

    @property
    def num_layers(self) -> int:
        """Layers ``L`` of the model the statistics were taken on."""
        return int(self.block_influence.shape[0])


@torch.no_grad()
def calibration_statistics(routed, tokenizer, prompts: list[str], batch_size: int = 16) -> CalibrationStats:
    """Angular distances and block influence from one recorded all-execute pass over ``prompts``.

    Sums are accumulated batch by batch, so only one batch of hidden states is held at a time.

    Args:
        routed: A ``RoutedModel``; every layer executes once whatever its routers would say.
        tokenizer: Its tokenizer; prompts are encoded with ``encode_prompt`` and left-padded.
        prompts: Calibration prompts from a training split (128 or more for stable statistics).
        batch_size: Prompts per forward.

    Raises:
        ValueError: when there are no prompts, or no prompt has a token after its first.
    """
    if not prompts:
        raise ValueError("calibration_statistics needs at least one prompt, got none")
    L = routed.num_layers
    angular = torch.zeros(L + 1, L + 1, dtype=torch.float64)
    influence = torch.zeros(L, dtype=torch.float64)
    tokens = 0
    for start in range(0, len(prompts), batch_size):
        ids, mask = batch_prompts(tokenizer, prompts[start : start + batch_size], routed.device)
        with routed.recording() as states:  # states[i] [B, T, d] enters layer i; states[L]: last output
            routed.backbone(ids, mask, all_execute(L))
        last = torch.stack([h[:, -1].float() for h in states], 1)  # [B, L + 1, d]; left padding
        for n in range(1, L + 1):
            cos = F.cosine_similarity(last[:, : L + 1 - n], last[:, n:], dim=-1)  # [B, L + 1 - n]
            angular[n, : L + 1 - n] += (torch.arccos(cos.clamp(-1.0, 1.0)) / torch.pi).sum(0).double().cpu()
        keep = mask.bool() & (mask.cumsum(1) > 1)  # [B, T] real tokens after each row's first
        tokens += int(keep.sum())
        for i in range(L):
            cos = F.cosine_similarity(states[i].float(), states[i + 1].float(), dim=-1)  # [B, T]
            influence[i] += float((1.0 - cos)[keep].sum())
    if tokens == 0:
        raise ValueError(
            "block influence needs prompts of 2 or more tokens (each prompt's first is left out)"
        )
    angular /= len(prompts)
    undefined = torch.arange(L + 1)[None, :] + torch.arange(L + 1)[:, None] > L  # l + n > L
    angular[undefined] = float("nan")
    return CalibrationStats(angular.float(), (influence / tokens).float(), len(prompts), tokens)


def angular_path(stats: CalibrationStats, n: int, keep_last: bool = True) -> tuple[int, ...]:
    """Skip the block of ``n`` consecutive layers with the smallest angular distance (Gromov et al.).

    Args:
        stats: From ``calibration_statistics``.
        n: Block length; ``0 <= n <= L - 1`` (``<= L`` without ``keep_last``).
        keep_last: The block may not contain the final layer.
    """
    L = stats.num_layers
    end = L - 1 if keep_last else L
    _check_n(L, n, end)
    if n == 0:
        return all_execute_path(L)
    start = int(stats.angular[n, : end - n + 1].argmin())
    return _skipping(L, range(start, start + n))


def block_influence_path(stats: CalibrationStats, n: int, keep_last: bool = True) -> tuple[int, ...]:
    """Skip the ``n`` layers of lowest block influence (ShortGPT); ties go to the earlier layer.

    Args:
        stats: From ``calibration_statistics``.
        n: Layers to skip; ``0 <= n <= L - 1`` (``<= L`` without ``keep_last``).
        keep_last: Never skip the final layer.
    """
    L = stats.num_layers
    end = L - 1 if keep_last else L
    _check_n(L, n, end)
    order = sorted(range(end), key=lambda i: (float(stats.block_influence[i]), i))
    return _skipping(L, order[:n])


def all_execute_path(num_layers: int) -> tuple[int, ...]:
    """``(1,) * L``: every layer once."""
    return (1,) * num_layers


@torch.no_grad()
def last_token_hidden(
    routed, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Hidden states at each prompt's last real token entering every layer, and leaving the last one.

    Args:
        routed: A ``RoutedModel``; every layer executes once.
        input_ids: Left- or right-padded prompts ``[B, T]``.
        attention_mask: ``[B, T]`` with 1 on real tokens (None: no padding).

    Returns:
        ``[B, L + 1, d]`` float32; index ``L`` is the last layer's output before the final norm.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    device = routed.device
    ids, mask = input_ids.to(device), attention_mask.to(device)
    last = ids.shape[1] - 1 - mask.flip(1).argmax(1)  # [B] index of each row's last real token
    rows = torch.arange(ids.shape[0], device=device)
    with routed.recording() as states:  # L + 1 states: entering each layer, then the last layer's output
        routed.backbone(ids, mask, all_execute(routed.num_layers))
    return torch.stack([h[rows, last].float() for h in states], 1)


def angular_distances(states: torch.Tensor, n: int) -> torch.Tensor:
    """Mean angular distance ``arccos(cos(h_l, h_{l+n})) / pi`` over prompts, for every start ``l``.

    Args:
        states: ``[B, L + 1, d]`` from ``last_token_hidden``.
        n: Block length, ``1 <= n <= L``.

    Returns:
        ``[L - n + 1]`` distances in [0, 1].
    """
    num_layers = states.shape[1] - 1
    _check_n(num_layers, n, num_layers)
    cos = F.cosine_similarity(states[:, : num_layers - n + 1], states[:, n:], dim=-1)
    return (torch.arccos(cos.clamp(-1.0, 1.0)) / torch.pi).mean(0)


def angular_block(
    routed, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, n: int, keep_last: bool = True
) -> list[int]:
    """``angular_path`` from already tokenized calibration prompts (their last tokens only).

    Args:
        routed: A ``RoutedModel``.
        input_ids: Calibration prompts ``[B, T]`` (never the evaluation questions).
        attention_mask: Their attention mask.
        n: Block length, ``0 <= n <= L - 1`` (``<= L`` without ``keep_last``); 0 skips nothing.
        keep_last: The block may not contain the final layer.

    Returns:
        A decision vector of length ``L`` with ``n`` consecutive zeros.
    """
    L = routed.num_layers
    end = L - 1 if keep_last else L
    _check_n(L, n, end)
    if n == 0:
        return [1] * L
    distances = angular_distances(last_token_hidden(routed, input_ids, attention_mask), n)
    start = int(distances[: end - n + 1].argmin())
    return list(_skipping(L, range(start, start + n)))
