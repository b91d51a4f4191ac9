"""Routers: windowed mean pooling of a layer's input, a small head, logits averaged over windows.

Router ``i`` reads the hidden states entering decoder layer ``i`` over the prompt's real (non-padding)
tokens, splits them into W contiguous windows (W clamped to the prompt length), takes each window's mean,
applies a head to each mean and averages the logits over the windows. Heads (``RouterConfig.kind``):

- ``mlp`` (Dr.LLM's): ``Linear(d, h) -> GELU -> Linear(h, 3)`` per layer, on raw window means.
- ``linear``: ``Linear(d, 3)`` per layer (3(d + 1) weights a layer).
- ``shared``: one ``Linear(d, h) -> GELU -> Linear(h, 3)`` for every layer, with a learned layer embedding
  added to its hidden units.
- ``knn``: no weights; the target tables of the k training prompts nearest in the same features
  (``NeighbourRouter``).
- ``static``: one learnable logit vector per layer, no input (``StaticRouter``): a learned static path.

``linear``, ``shared`` and ``knn`` read window means divided by their root mean square and multiplied by the
gain of the model's final norm (``surgery.final_norm_scale``; an RMS norm, also for the LayerNorm models
gpt2 and gpt_neox, whose mean and bias it does not apply) and leave out each prompt's first token,
whose hidden state (the attention sink) is orders of magnitude larger than the others and says nothing of
the prompt. Both are recorded in the config (``norm``, ``skip_first``).
Routers save as ``router_config.json`` + ``routers.safetensors`` (never pickle); the safetensors header
repeats the config, so a config edited after saving (``num_windows``, which no weight shape shows) is refused.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from .atomic import atomic_write, atomic_write_text
from .heads import KINDS, LayerRouter, LinearRouter, NeighbourRouter, SharedRouter, StaticRouter
from .pooling import pooling_mask, window_average, window_pool, window_weights
from .weights_file import HEADER_KEY as _HEADER_KEY
from .weights_file import read_weights as _read_weights

CONFIG_NAME = "router_config.json"
WEIGHTS_NAME = "routers.safetensors"
TRAINED_ON_NAME = "trained_on.json"
"""Beside the router files: ``{"ids": [...]}``, the examples they were fitted on (written by ``drllm train``);
the evaluation calibrates on other examples."""
FORMAT_VERSION = 1  # of router_config.json; the loader refuses others
ACTIONS = (3, 5)  # logits per router: block actions, or block actions and the two sublayer units
_IDENTITY = ("fingerprint", "weight_probe", "base_model")  # base-model records; absent in older files


@dataclasses.dataclass
class RouterConfig:
    """What a router file records about itself and the base model it was trained for."""

    num_layers: int
    hidden_size: int
    num_windows: int = 8
    bottleneck: int = 128
    kind: str = "mlp"
    """The head: ``mlp``, ``linear`` or ``shared`` (see the module docstring)."""
    norm: bool = False
    """Normalise each window mean as the model's final norm does (``Routers.norm_scale`` holds its gain)."""
    skip_first: bool = False
    """Leave each prompt's first real token out of the pooling."""
    neighbours: int = 16
    """``knn``: how many nearest training prompts vote."""
    examples: int = 0
    """``knn``: how many training prompts it remembers."""
    actions: int = 3
    """Logits per router: 3 (skip, execute, repeat), or 5 to also run a layer's MLP alone (decision 3) or
    its attention alone (4), for paths of a ``--units sublayer`` search."""
    read_layer: int | None = None
    """None: router ``i`` reads the input of layer ``i`` (Dr.LLM's). A layer index: every router reads the
    input of that layer and all decide there at once, one router call per prompt instead of one per layer;
    the layers before it follow the default path (execute without one)."""
    fingerprint: str = ""
    weight_probe: list[float] = dataclasses.field(default_factory=list)
    base_model: str = ""
    default_path: list[int] = dataclasses.field(default_factory=list)
    """A static path the routers deviate from (see ``Routers.set_default_path``); empty: each router's
    argmax decides its layer, as in Dr.LLM."""
    threshold: float | None = None
    """With ``default_path``: a router deviates only where ``p[best] - p[default] > threshold``."""
    protected: list[int] = dataclasses.field(default_factory=list)
    """Layers that always follow ``default_path`` (or execute, without one)."""
    stand_ins: bool = False
    """Whether ``stand_ins.safetensors`` was saved beside the routers (a folder without it is refused)."""
    verdict: str = ""
    """What the evaluation that exported these routers found (``drllm eval``: ``routers-at-<level>``)."""
    format_version: int = FORMAT_VERSION


class Routers(nn.Module):
    """A router per decoder layer (``mlp``, ``linear``) or one shared head, the config saved beside them."""

    def __init__(self, config: RouterConfig):
        super().__init__()
        if config.kind not in KINDS:
            raise ValueError(f"router kind must be one of {KINDS}, got {config.kind!r}")
        for name in ("num_layers", "hidden_size", "num_windows", "bottleneck", "neighbours"):
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not _valid_read_layer(config):
            raise ValueError(
                f"read_layer must be None or a layer in [0, {config.num_layers}), got {config.read_layer!r}"
            )
        if config.actions not in ACTIONS or isinstance(config.actions, bool):
            raise ValueError(
                f"actions must be 3 (skip, execute, repeat) or 5 (and the MLP or the attention alone), "
                f"got {config.actions!r}"
            )
        self.config = config
        d, h, L, A = config.hidden_size, config.bottleneck, config.num_layers, config.actions
        if config.kind == "shared":
            self.shared = SharedRouter(d, h, L, A)
        elif config.kind == "static":
            self.static = StaticRouter(L, A)
        elif config.kind == "knn":
            if config.examples < 1:
                raise ValueError(f"a knn router needs examples >= 1, got {config.examples!r}")
            self.knn = NeighbourRouter(d, L, config.examples, config.neighbours, A)
        else:
            make = (lambda: LayerRouter(d, h, A)) if config.kind == "mlp" else (lambda: LinearRouter(d, A))
            self.layers = nn.ModuleList(make() for _ in range(L))
        if config.norm:
            self.register_buffer("norm_scale", torch.ones(d))  # set from the model by RoutedModel.add_routers

    def pool_weights(self, mask: torch.Tensor | None, batch: int, length: int, device=None) -> tuple:
        """``(matrix [B, W, T], valid [B, W], average [B, 1, W])`` of a prompt, shared by every router."""
        mask = pooling_mask(mask, batch, length, self.config.skip_first, device)
        matrix, valid = window_weights(mask, batch, length, self.config.num_windows, device)
        return matrix, valid, window_average(valid)

    def head(self, index: int, pooled: torch.Tensor, valid: torch.Tensor, average=None) -> torch.Tensor:
        """Logits ``[B, A]`` of router ``index`` from raw window means ``[B, W, d]`` (normalised here)."""
        pooled = self.normalize(pooled)
        if self.config.kind in ("shared", "knn", "static"):
            return getattr(self, self.config.kind)(index, pooled, valid, average)
        return self.layers[index](pooled, valid, average)

    def normalize(self, pooled: torch.Tensor) -> torch.Tensor:
        """Window means as the routers read them: RMS-normalised times the final norm's gain with ``norm``."""
        if not self.config.norm:
            return pooled
        scale = self.norm_scale.to(pooled.dtype)
        return F.rms_norm(pooled, (pooled.shape[-1],), scale, eps=1e-6)

    def forward(
        self, index: int, hidden: torch.Tensor, mask: torch.Tensor | None, weights=None
    ) -> torch.Tensor:
        """Logits ``[B, A]`` of router ``index`` for hidden states ``[B, T, d]`` entering layer ``index``.

        ``weights`` is ``self.pool_weights(...)`` for this mask (it leaves out the first token with
        ``skip_first``, as training did); precompute it once when one prompt feeds every router.
        """
        if weights is None:
            weights = self.pool_weights(mask, hidden.shape[0], hidden.shape[1], hidden.device)
        pooled, valid = window_pool(hidden, mask, self.config.num_windows, weights[:2])
        average = weights[2] if len(weights) > 2 else None
        return self.head(index, pooled, valid, average)

    def forward_all(self, hidden: torch.Tensor, mask: torch.Tensor | None, weights=None) -> torch.Tensor:
        """Logits ``[B, L, A]`` of every router from the hidden states ``[B, T, d]`` entering ``read_layer``.

        One router call per prompt; ``weights`` as in ``forward``.
        """
        if weights is None:
            weights = self.pool_weights(mask, hidden.shape[0], hidden.shape[1], hidden.device)
        pooled, valid = window_pool(hidden, mask, self.config.num_windows, weights[:2])
        return self.forward_pooled(pooled[:, None], valid[:, None])

    def set_default_path(self, path, threshold: float | None = 0.5, protected=(0, 1, -1)) -> None:
        """Route as deviations from a static ``path``.

        Layer ``i`` follows ``path[i]`` unless its router's most likely decision beats it by more than
        ``threshold`` in probability (after the budget shifts the skip logit). ``threshold=1.0`` never
        deviates: the model runs ``path``. ``protected`` layers (default: the first two and the last;
        negative counts from the end) always follow ``path``. ``path=None`` restores plain argmax routing
        (protected layers then execute).

        Raises:
            ValueError: naming the problem, for a path of the wrong length or with values the routers cannot
                output (0/1/2, and 3/4 with ``actions=5``), a
                threshold outside [0, 1] or a protected layer that does not exist.
        """
        L = self.config.num_layers
        values: list = [] if path is None else list(path.tolist() if hasattr(path, "tolist") else path)
        allowed = tuple(range(self.config.actions))
        if path is not None and (
            len(values) != L
            or any(
                isinstance(v, bool) or not isinstance(v, numbers.Integral) or v not in allowed for v in values
            )
        ):
            raise ValueError(
                f"default path must hold {L} values among {', '.join(map(str, allowed))}, got {values!r}"
            )
        values = [int(v) for v in values]
        if threshold is not None and (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not 0.0 <= threshold <= 1.0
        ):
            raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
        layers = []
        for p in protected or ():
            if isinstance(p, bool) or not isinstance(p, int) or not -L <= p < L:
                raise ValueError(f"protected layer {p!r} does not exist in a {L}-layer model")
            layers.append(p % L)
        self.config.default_path = values
        self.config.threshold = None if threshold is None else float(threshold)
        self.config.protected = sorted(set(layers))

    def fit_neighbours(self, pooled: torch.Tensor, valid: torch.Tensor, tables: torch.Tensor) -> None:
        """Fill a ``knn`` router from raw window means ``[N, L, W, d]`` and target tables ``[N, L, A]``."""
        if self.config.kind != "knn":
            raise ValueError(f"fit_neighbours is for knn routers; these are {self.config.kind}")
        c = self.config
        if (
            pooled.shape[0] != c.examples
            or tuple(pooled.shape[1:]) != (c.num_layers, c.num_windows, c.hidden_size)
            or tuple(valid.shape) != tuple(pooled.shape[:3])
            or tuple(tables.shape) != (c.examples, c.num_layers, c.actions)
        ):
            raise ValueError(
                f"a knn router for {c.examples} examples, {c.num_layers} layers, {c.num_windows} windows and "
                f"width {c.hidden_size} got features {list(pooled.shape)}, validity {list(valid.shape)} "
                f"and tables {list(tables.shape)}"
            )
        self.knn.fit(
            self.normalize(pooled.to(self.knn.keys.device)),
            valid.to(self.knn.keys.device),
            tables.to(self.knn.keys.device),
        )

    def forward_pooled(self, pooled: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, L, A]`` of every router for pooled inputs ``[N, L, W, d]`` and ``valid [N, L, W]``.

        With ``read_layer`` every router reads that layer's inputs (the others are ignored); a layer
        dimension of 1 holds the read layer's alone.
        """
        read = self.config.read_layer
        if read is not None and pooled.shape[1] != 1:
            pooled, valid = pooled[:, read : read + 1], valid[:, read : read + 1]
        if self.config.kind in ("shared", "knn", "static"):  # each broadcasts a layer dimension of 1
            return getattr(self, self.config.kind)(None, self.normalize(pooled), valid)
        one = pooled.shape[1] == 1
        if one and self.config.kind == "linear":
            return self._linear_all(pooled[:, 0], valid[:, 0])
        return torch.stack(
            [
                self.head(i, pooled[:, 0 if one else i], valid[:, 0 if one else i])
                for i in range(len(self.layers))
            ],
            dim=1,
        )

    def _linear_all(self, pooled: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Every linear router on the same window means ``[N, W, d]``: one matrix product, ``[N, L, A]``."""
        mean = NeighbourRouter.mean(self.normalize(pooled), valid)  # [N, d]
        weight = torch.stack([layer.proj.weight for layer in self.layers])  # [L, A, d]
        bias = torch.stack([layer.proj.bias for layer in self.layers])  # [L, A]
        return (torch.einsum("nd,lcd->nlc", mean.to(weight.dtype), weight) + bias).float()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``router_config.json`` and ``routers.safetensors`` (each atomically) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        config = dataclasses.asdict(self.config)
        header = {"format": "pt", _HEADER_KEY: json.dumps(config)}
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=header))
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Routers:
        """Load routers saved by ``save_pretrained``; refuses anything but safetensors weights."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a drllm router directory")
        if not weights_path.is_file():
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory} (routers load from safetensors only)")
        config, written = _read_config(config_path)
        state, saved = _read_weights(weights_path)
        _check_consistent(config, written, state, saved, config_path, weights_path)
        routers = cls(config)
        shapes = {k: tuple(v.shape) for k, v in routers.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != got:
            diff = sorted(set(shapes.items()) ^ set(got.items()))[:4]
            raise ValueError(f"{weights_path} does not match {config_path}: differing tensors {diff}")
        routers.load_state_dict(state)
        return routers


def _valid_read_layer(config: RouterConfig) -> bool:
    read = config.read_layer
    return read is None or (
        isinstance(read, int) and not isinstance(read, bool) and 0 <= read < config.num_layers
    )


def _check_consistent(
    config: RouterConfig, written: set, state, saved: dict, config_path, weights_path
) -> None:
    """Refuse a config that disagrees with the weight shapes or with ``saved``, the config in their header.

    ``written`` are the keys the config file sets. A file without a base-model fingerprint passes here: the
    model refuses it when the routers are loaded into one.
    """
    first = state.get("layers.0.net.0.weight")
    if config.kind == "mlp" and first is not None and first.dim() == 2:
        layers = {k.split(".")[1] for k in state if k.startswith("layers.")}
        found = {"num_layers": len(layers), "hidden_size": first.shape[1], "bottleneck": first.shape[0]}
        for key, value in found.items():
            if getattr(config, key) != value:
                raise ValueError(
                    f"{config_path} does not match {weights_path}: {key} is {getattr(config, key)} in the "
                    f"config, the weights have {key} {value}"
                )
    for key, value in saved.items():
        if (key in _IDENTITY and key not in written) or getattr(config, key, value) == value:
            continue
        unset = "" if key in written else " (not set: the default)"
        raise ValueError(
            f"{config_path} does not match {weights_path}: {key} is {getattr(config, key)!r}{unset} in the "
            f"config, the weights were saved with {key} {value!r}"
        )


def _read_config(path: Path) -> tuple[RouterConfig, set[str]]:
    """The config and the keys the file sets (the others take their defaults)."""
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
    version = raw.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ValueError(
            f"{path}: format_version is {version!r}; this drllm reads router files of format_version "
            f"{FORMAT_VERSION}"
        )
    config = RouterConfig(**raw)
    for name in ("num_layers", "hidden_size", "num_windows", "bottleneck", "neighbours"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{path}: {name} must be a positive integer, got {value!r}")
    if config.kind not in KINDS:
        raise ValueError(f"{path}: kind must be one of {KINDS}, got {config.kind!r}")
    if config.actions not in ACTIONS or isinstance(config.actions, bool):
        raise ValueError(f"{path}: actions must be 3 or 5, got {config.actions!r}")
    if not isinstance(config.examples, int) or isinstance(config.examples, bool) or config.examples < 0:
        raise ValueError(f"{path}: examples must be a whole number >= 0, got {config.examples!r}")
    if config.kind == "knn" and config.examples < 1:
        raise ValueError(f"{path}: a knn router needs examples >= 1, got {config.examples!r}")
    if not _valid_read_layer(config):
        raise ValueError(
            f"{path}: read_layer must be null or a layer in [0, {config.num_layers}), "
            f"got {config.read_layer!r}"
        )
    for name in ("norm", "skip_first"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{path}: {name} must be true or false, got {getattr(config, name)!r}")
    for name, kind in (("fingerprint", str), ("base_model", str), ("weight_probe", list), ("verdict", str)):
        if not isinstance(getattr(config, name), kind):
            raise ValueError(f"{path}: {name} must be a {kind.__name__}, got {getattr(config, name)!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in config.weight_probe):
        raise ValueError(f"{path}: weight_probe must be a list of numbers, got {config.weight_probe!r}")
    try:
        if not isinstance(config.default_path, list) or not isinstance(config.protected, list):
            raise ValueError("default_path and protected must be lists")
        check = Routers.__new__(Routers)
        check.config = dataclasses.replace(config)
        check.set_default_path(config.default_path or None, config.threshold, config.protected)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None
    if check.config.protected != config.protected:
        raise ValueError(f"{path}: protected layers must be sorted, distinct and counted from 0")
    return check.config, set(raw)
