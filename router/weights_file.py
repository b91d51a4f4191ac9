"""Reading a router safetensors file: floating-point tensors only, and the config its header repeats."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

HEADER_KEY = "router_config"  # safetensors metadata entry holding the config as saved


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a router safetensors file (floating point only) and the config saved in its header."""
    try:  # safetensors never unpickles: a pickle here fails as a bad header
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a valid safetensors file: {_one_line(err)}") from err
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise ValueError(
                f"{path}: tensor {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                "router weights must be floating point"
            )
    if HEADER_KEY not in header:
        return state, {}  # saved before the header carried the config
    try:
        saved = json.loads(header[HEADER_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the {HEADER_KEY} header entry is not valid JSON: {err}") from err
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: the {HEADER_KEY} header entry is not a JSON object")
    return state, saved
