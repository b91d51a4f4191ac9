"""Router MLPs: windowed mean pooling of a layer's input, a bottleneck MLP, logits averaged over windows.

Router ``i`` reads the hidden states entering decoder layer ``i`` over the prompt's real (non-padding)
tokens, splits them into W contiguous windows (W clamped to the prompt length), takes each window's mean,
applies ``Linear(d, h) -> GELU -> Linear(h, 3)`` to each mean and averages the logits over the windows.
Routers save as ``router_config.json`` + ``routers.safetensors`` (never pickle).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

CONFIG_NAME = "router_config.json"
WEIGHTS_NAME = "routers.safetensors"


def window_weights(
    mask: torch.Tensor | None, batch: int, length: int, num_windows: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooling weights ``[B, W, T]`` (each valid row averages one window of real tokens) and ``valid [B, W]``.

    A row with n real tokens uses ``min(W, n)`` windows; real token r (in order) falls in window
    ``floor(r * W_row / n)``. Padding may sit anywhere. Compute once per batch, reuse for every layer.
    """
    if num_windows < 1:
        raise ValueError(f"num_windows must be >= 1, got {num_windows}")
    real = (
        torch.ones(batch, length, dtype=torch.bool, device=device) if mask is None else mask.to(device).bool()
    )
    if real.shape != (batch, length):
        raise ValueError(f"mask has shape {list(real.shape)}, hidden states need [{batch}, {length}]")
    n = real.sum(1)  # [B]
    if (n == 0).any():
        raise ValueError("a row has no real (non-padding) tokens; cannot pool an empty prompt")
    windows = n.clamp(max=num_windows)  # [B]
    rank = real.long().cumsum(1) - 1  # [B, T] order of each real token
    slot = torch.div(rank * windows[:, None], n[:, None], rounding_mode="floor")  # [B, T]
    member = (slot[:, None, :] == torch.arange(num_windows, device=real.device)[None, :, None]) & real[
        :, None, :
    ]
    counts = member.sum(-1, keepdim=True)  # [B, W, 1]
    weights = member.float() / counts.clamp(min=1)
    return weights, counts[..., 0] > 0


def window_pool(
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    num_windows: int,
    weights: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pool each row's real tokens over W contiguous windows.

    Args:
        hidden: ``[B, T, d]`` hidden states.
        mask: ``[B, T]`` 1 for real tokens, 0 for padding (any position), or None (all real).
        num_windows: W; a row with n real tokens uses ``min(W, n)`` windows.
        weights: precomputed ``window_weights`` for this mask (optional).

    Returns:
        ``(means [B, W, d] float32, valid [B, W] bool)``; windows past a row's clamped count are zero and
        invalid.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden states must be [B, T, d], got shape {list(hidden.shape)}")
    b, t, _ = hidden.shape
    matrix, valid = weights if weights is not None else window_weights(mask, b, t, num_windows, hidden.device)
    return torch.bmm(matrix, hidden.float()), valid


class LayerRouter(nn.Module):
    """``Linear(d, h) -> GELU -> Linear(h, 3)`` applied to each window mean, logits averaged over windows."""

    def __init__(self, hidden_size: int, bottleneck: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, bottleneck), nn.GELU(), nn.Linear(bottleneck, 3))

    def forward(
        self, pooled: torch.Tensor, valid: torch.Tensor, average: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[B, 3]`` from window means ``[B, W, d]`` and their validity ``[B, W]``.

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
        per_window = F.linear(hidden, last.weight, last.bias).view(b, w, 3)
        return torch.bmm(average.to(per_window.dtype), per_window)[:, 0].float()


def window_average(valid: torch.Tensor) -> torch.Tensor:
    """Weights ``[B, 1, W]`` that average each row over its valid windows (``valid [B, W]``)."""
    weights = valid.float()
    return (weights / weights.sum(1, keepdim=True).clamp(min=1))[:, None, :]


@dataclasses.dataclass
class RouterConfig:
    """What a router file records about itself and the base model it was trained for."""

    num_layers: int
    hidden_size: int
    num_windows: int = 8
    bottleneck: int = 128
    fingerprint: str = ""
    weight_probe: list[float] = dataclasses.field(default_factory=list)
    base_model: str = ""
    format_version: int = 1


class Routers(nn.Module):
    """One ``LayerRouter`` per decoder layer, with the config saved beside the weights."""

    def __init__(self, config: RouterConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            LayerRouter(config.hidden_size, config.bottleneck) for _ in range(config.num_layers)
        )

    def forward(
        self, index: int, hidden: torch.Tensor, mask: torch.Tensor | None, weights=None
    ) -> torch.Tensor:
        """Logits ``[B, 3]`` of router ``index`` for hidden states ``[B, T, d]`` entering layer ``index``.

        ``weights`` is ``window_weights(...)`` for this mask, optionally with ``window_average(valid)``
        appended; precompute it once when one prompt feeds every router.
        """
        pooled, valid = window_pool(hidden, mask, self.config.num_windows, weights and weights[:2])
        average = weights[2] if weights is not None and len(weights) > 2 else None
        return self.layers[index](pooled, valid, average)

    def forward_pooled(self, pooled: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, L, 3]`` of every router for pooled inputs ``[N, L, W, d]`` and ``valid [N, L, W]``."""
        return torch.stack([r(pooled[:, i], valid[:, i]) for i, r in enumerate(self.layers)], dim=1)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``router_config.json`` and ``routers.safetensors`` (each atomically) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = directory / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, directory / WEIGHTS_NAME)
        tmp = directory / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        os.replace(tmp, directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Routers:
        """Load routers saved by ``save_pretrained``; refuses anything but safetensors weights."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a drllm router directory")
        if not weights_path.is_file():
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory} (routers load from safetensors only)")
        config = _read_config(config_path)
        routers = cls(config)
        try:
            state = load_file(str(weights_path))
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise ValueError(f"{weights_path} is not a valid safetensors file: {err}") from err
        expected = routers.state_dict()
        shapes = {k: tuple(v.shape) for k, v in expected.items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != got:
            diff = sorted(set(shapes.items()) ^ set(got.items()))[:4]
            raise ValueError(f"{weights_path} does not match {config_path}: differing tensors {diff}")
        routers.load_state_dict(state)
        return routers


def _read_config(path: Path) -> RouterConfig:
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    fields = {f.name for f in dataclasses.fields(RouterConfig)}
    if not isinstance(raw, dict) or not {"num_layers", "hidden_size"} <= raw.keys():
        raise ValueError(f"{path} must be a JSON object with at least num_layers and hidden_size")
    unknown = set(raw) - fields
    if unknown:
        raise ValueError(f"{path} has unknown keys {sorted(unknown)}")
    config = RouterConfig(**raw)
    for name in ("num_layers", "hidden_size", "num_windows", "bottleneck"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {name} must be a positive integer, got {value!r}")
    return config
