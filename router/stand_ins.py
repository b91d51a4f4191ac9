"""Stand-ins: what a path runs in place of a plain skip (a linear map) or a plain repeat (a damped one).

- **Linear stand-in of layer i.** When a row skips layer ``i``, its hidden state ``h`` (each position alone)
  becomes ``h + h @ down_i @ up_i + bias_i`` instead of ``h``: a cheap linear imitation of the block's
  update, fitted in closed form on calibration prompts (``drllm.search.stand_ins``), in the spirit of
  ReplaceMe (arXiv 2505.02819). Full rank stores ``down_i`` ``[d, d]`` and no ``up_i``; rank ``r`` stores
  ``[d, r]`` and ``[r, d]``. A layer without a map is skipped plainly. A run of skipped layers applies each
  layer's map in turn, so one set of maps serves a static path and per-input routers alike. A stand-in acts
  on each position alone, so it writes no KV cache entry and routed generation with a cache stays exact.
- **Linear stand-in of a switched-off unit.** The attention or MLP of layer ``i`` switched off (decisions 3
  and 4) returns a linear map of its own input instead of zeros (``unit_stand_ins``).
- **Damped repeat of layer i.** A repeat runs the block a second time on its own output ``h1`` and keeps
  ``h1 + alpha_i * (f(h1) - h1)``; ``alpha_i = 1`` is the plain repeat, ``0`` a single execution.

All are saved as one ``stand_ins.safetensors`` (no pickle) whose header records the base model's
fingerprint, so they are refused on another model, as routers are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .atomic import atomic_write
from .unit_stand_ins import CarriesUnitMaps
from .weights_file import read_weights

STAND_INS_NAME = "stand_ins.safetensors"
HEADER = "stand_ins"
FORMAT_VERSION = 1


class StandIns(CarriesUnitMaps, nn.Module):
    """Linear stand-ins for skipped layers and switched-off units, and repeat scales (see the docstring)."""

    def __init__(self, num_layers: int, hidden_size: int, rank: int | None = None, info: dict | None = None):
        super().__init__()
        for what, value in (("num_layers", num_layers), ("hidden_size", hidden_size)):
            if not _whole(value) or value < 1:
                raise ValueError(f"stand-in {what} must be a whole number >= 1, got {value!r}")
        if rank is not None and not (_whole(rank) and 1 <= rank < hidden_size):
            raise ValueError(f"stand-in rank must lie in 1..{hidden_size - 1} (or None: full), got {rank!r}")
        self.num_layers, self.hidden_size, self.rank = num_layers, hidden_size, rank
        self.info = dict(info or {})  # fingerprint, weight_probe, how they were fitted
        self.register_buffer("repeat_scale", torch.ones(num_layers))
        self.mapped: list[int] = []
        self.unit_mapped: dict[str, list[int]] = {"attention": [], "mlp": []}

    def set_map(self, index: int, down: torch.Tensor, bias: torch.Tensor, up: torch.Tensor | None = None):
        """Give layer ``index`` the stand-in ``h + h @ down @ up + bias`` (``up`` None: full rank)."""
        self._check_layer(index)
        self._store(f"layer {index}", "", index, down, bias, up)
        if index not in self.mapped:
            self.mapped = sorted([*self.mapped, index])

    def _check_layer(self, index: int) -> None:
        if not (_whole(index) and 0 <= index < self.num_layers):
            raise ValueError(f"layer {index!r} is not in 0..{self.num_layers - 1}")

    def _store(self, where: str, prefix: str, index: int, down, bias, up) -> None:
        """Check one map's shapes and values (``where`` names it in errors), then keep it as buffers."""
        d, r = self.hidden_size, self.rank or self.hidden_size
        want = {"down": (d, r), "bias": (d,), "up": (r, d) if self.rank else None}
        for name, tensor in (("down", down), ("bias", bias), ("up", up)):
            shape = None if tensor is None else tuple(tensor.shape)
            if shape != want[name]:
                raise ValueError(f"stand-in {name} of {where} must be {want[name]}, got {shape}")
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"stand-in {name} of {where} holds non-finite values (NaN or inf)")
        for name, tensor in (("down", down), ("bias", bias), ("up", up)):
            if tensor is not None:
                self.register_buffer(f"{prefix}{name}_{index}", tensor.detach().float().clone())

    def _map(self, prefix: str, index: int, x: torch.Tensor, residual: bool = False) -> torch.Tensor:
        """``x @ down @ up + bias`` of one stored map (``up`` at low rank only), in ``x``'s dtype.

        With ``residual``, ``x + x @ down @ up + bias`` (a skipped layer's stand-in), summed in that order.
        """
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"stand-ins of hidden size {self.hidden_size} got states of size {x.shape[-1]}")
        out = x @ getattr(self, f"{prefix}down_{index}").to(x.dtype)
        if self.rank:
            out = out @ getattr(self, f"{prefix}up_{index}").to(x.dtype)
        if residual:
            out = x + out
        return out + getattr(self, f"{prefix}bias_{index}").to(x.dtype)

    def _map_macs(self) -> int:
        """Multiply-adds per token of one map: ``d * d`` at full rank, ``2 * d * r`` at rank ``r``."""
        d = self.hidden_size
        return 2 * d * self.rank if self.rank else d * d

    def has_map(self, index: int) -> bool:
        """Whether a skip of layer ``index`` runs a linear stand-in."""
        return index in self.mapped

    def apply(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Skipped layer ``index``'s stand-in on ``hidden`` ``[..., d]`` (``hidden`` itself without a map)."""
        if index not in self.mapped:
            return hidden
        return self._map("", index, hidden, residual=True)

    def damp(self, index: int, once: torch.Tensor, twice: torch.Tensor) -> torch.Tensor:
        """A repeat's result: ``once + alpha * (twice - once)`` (``twice`` itself when alpha is 1)."""
        alpha = float(self.repeat_scale[index])
        return twice if alpha == 1.0 else once + alpha * (twice - once)

    def macs_per_token(self, index: int) -> int:
        """Multiply-adds per token of layer ``index``'s stand-in (0 without one)."""
        return self._map_macs() if index in self.mapped else 0

    def config(self) -> dict:
        """What the file header records: shapes, the mapped layers and units, the base model's identity."""
        return {
            "format_version": FORMAT_VERSION,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "rank": self.rank,
            "mapped": self.mapped,
            **self._unit_header(),
            **self.info,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``stand_ins.safetensors`` (atomically) into ``directory``; returns its path."""
        if Path(directory).exists() and not Path(directory).is_dir():
            raise ValueError(f"{directory} is a file; stand-ins are saved into a folder")
        path = Path(directory) / STAND_INS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        header = {"format": "pt", HEADER: json.dumps(self.config())}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=header))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> StandIns:
        """Load ``stand_ins.safetensors`` from ``directory`` (or that file itself), checking every shape."""
        path = Path(directory)
        path = path if path.is_file() else path / STAND_INS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {STAND_INS_NAME} in {directory}")
        state, _ = read_weights(path)
        config = _header(path)
        if config.get("format_version") != FORMAT_VERSION:
            got = config.get("format_version")
            raise ValueError(f"{path}: stand-in format {got!r}, this drllm reads {FORMAT_VERSION}")
        info = {k: v for k, v in config.items() if k not in ("format_version", "num_layers", "hidden_size")}
        rank, mapped, units = info.pop("rank"), info.pop("mapped"), info.pop("unit_mapped", None)
        if not isinstance(mapped, list) or not all(_whole(i) for i in mapped):
            raise ValueError(f"{path}: the header's 'mapped' must be a list of layer numbers, got {mapped!r}")
        try:
            out = cls(config["num_layers"], config["hidden_size"], rank, info)
            for i in mapped:
                out.set_map(i, state.pop(f"down_{i}"), state.pop(f"bias_{i}"), state.pop(f"up_{i}", None))
            out._load_unit_maps(units, state)
            scale = state.pop("repeat_scale")
            if scale.shape != out.repeat_scale.shape or not bool(((scale >= 0) & (scale <= 1)).all()):
                raise ValueError(f"repeat scales must be {out.num_layers} values in [0, 1]")
            out.repeat_scale.copy_(scale)
        except (KeyError, ValueError, RuntimeError) as err:
            raise ValueError(f"{path} does not match its own header: {err}") from err
        if state:
            raise ValueError(f"{path} holds tensors its header does not name: {sorted(state)[:4]}")
        return out


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _header(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if HEADER not in meta:
        raise ValueError(f"{path} has no '{HEADER}' header entry: not a drllm stand-in file")
    try:
        config = json.loads(meta[HEADER])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the '{HEADER}' header entry is not valid JSON: {err}") from err
    if not isinstance(config, dict) or not {"num_layers", "hidden_size", "rank", "mapped"} <= set(config):
        raise ValueError(f"{path}: the '{HEADER}' header entry lacks num_layers, hidden_size, rank or mapped")
    return config


class CarriesStandIns:
    """``RoutedModel``'s part: attach, load and read its stand-ins (checked against the base model)."""

    @property
    def stand_ins(self) -> StandIns | None:
        """The attached stand-ins (None: skips and repeats are plain)."""
        return self._state.stand_ins

    def set_stand_ins(self, stand_ins: StandIns | None) -> None:
        """Attach ``stand_ins`` (every later forward and generate uses them), or detach with None."""
        if stand_ins is not None and not isinstance(stand_ins, StandIns):
            raise TypeError(
                f"set_stand_ins takes StandIns (or None), got {type(stand_ins).__name__}; "
                "to read a folder use load_stand_ins(directory)"
            )
        if stand_ins is not None:
            from types import SimpleNamespace

            record = SimpleNamespace(
                num_layers=stand_ins.num_layers,
                hidden_size=stand_ins.hidden_size,
                fingerprint=stand_ins.info.get("fingerprint"),
                weight_probe=stand_ins.info.get("weight_probe"),
            )
            self.check_compatible(record, source="stand-ins")
            stand_ins = stand_ins.to(self.device)
        self._state.stand_ins = stand_ins

    def new_stand_ins(self, rank: int | None = None, **info) -> StandIns:
        """Empty stand-ins (no maps, every repeat plain) that record this model's identity; not attached."""
        identity = {"fingerprint": self.fingerprint, "weight_probe": self.weight_probe}
        return StandIns(self.num_layers, self.hidden_size, rank, {**identity, **info})

    def load_stand_ins(self, directory: str | os.PathLike) -> StandIns:
        """Load and attach the ``stand_ins.safetensors`` saved in ``directory``."""
        stand_ins = StandIns.from_pretrained(directory)
        self.set_stand_ins(stand_ins)
        return stand_ins
