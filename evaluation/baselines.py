"""Static layer-skipping baselines, each expressed as one decision vector shared by every prompt.

    drop_last(8, 2)                  # [1, 1, 1, 1, 1, 0, 0, 1]: the 2 layers before the final one skipped
    random_skips(8, 2, seed=0)       # 2 distinct random layers skipped, the final layer kept
    angular_block(routed, ids, mask, 2)  # the 2-layer block that changes the hidden state least

``angular_block`` follows Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers":
for every start ``l`` it measures the angular distance ``arccos(cos(h_l, h_{l+n})) / pi`` between the
hidden state entering layer ``l`` and the one entering layer ``l + n`` at the last real token of each
calibration prompt, averages it over prompts, and skips the block ``l .. l+n-1`` with the smallest
distance. The state "entering layer L" is the output of the last decoder layer, before the final norm.
"""

from __future__ import annotations

import random

import torch

from drllm.router import all_execute


def _check_n(num_layers: int, n: int, most: int) -> None:
    if not 0 <= n <= most:
        raise ValueError(f"cannot skip {n} layers of a {num_layers}-layer model; expected 0..{most}")


def drop_last(num_layers: int, n: int) -> list[int]:
    """Skip the ``n`` layers just before the final one (the final layer always executes).

    Args:
        num_layers: Layers ``L`` of the model.
        n: Layers to skip, ``0 <= n <= L - 1``.

    Returns:
        A decision vector of length ``L`` with ``n`` zeros.
    """
    _check_n(num_layers, n, num_layers - 1)
    decisions = [1] * num_layers
    for i in range(num_layers - 1 - n, num_layers - 1):
        decisions[i] = 0
    return decisions


def random_skips(num_layers: int, n: int, seed: int) -> list[int]:
    """Skip ``n`` distinct layers drawn with ``random.Random(seed)``, never the final one.

    Args:
        num_layers: Layers ``L`` of the model.
        n: Layers to skip, ``0 <= n <= L - 1``.
        seed: Seed of the draw.

    Returns:
        A decision vector of length ``L`` with ``n`` zeros.
    """
    _check_n(num_layers, n, num_layers - 1)
    decisions = [1] * num_layers
    for i in random.Random(seed).sample(range(num_layers - 1), n):
        decisions[i] = 0
    return decisions


def layers_to_drop(mean_layers: float, num_layers: int) -> int:
    """Layers a static baseline skips to match ``mean_layers`` per prompt: ``max(0, round(L - mean))``."""
    return max(0, round(num_layers - mean_layers))


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
    cos = torch.nn.functional.cosine_similarity(states[:, : num_layers - n + 1], states[:, n:], dim=-1)
    return (torch.arccos(cos.clamp(-1.0, 1.0)) / torch.pi).mean(0)


def angular_block(routed, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, n: int) -> list[int]:
    """Skip the ``n`` consecutive layers whose input and output differ least (Gromov et al. 2024).

    Args:
        routed: A ``RoutedModel``.
        input_ids: Calibration prompts ``[B, T]`` (never the evaluation questions).
        attention_mask: Their attention mask.
        n: Block length, ``0 <= n <= L``; 0 skips nothing.

    Returns:
        A decision vector of length ``L`` with ``n`` consecutive zeros.
    """
    num_layers = routed.num_layers
    _check_n(num_layers, n, num_layers)
    decisions = [1] * num_layers
    if n == 0:
        return decisions
    start = int(angular_distances(last_token_hidden(routed, input_ids, attention_mask), n).argmin())
    for i in range(start, start + n):
        decisions[i] = 0
    return decisions
