"""Routed inference: decisions, model surgery, routed layers, routers and ``RoutedModel``.

Imports torch and transformers only (no Lightning, search or train code).
"""

from .auto import load_routed
from .cache import RoutedCache
from .compute import block_macs, path_macs
from .decisions import (
    EXECUTE,
    REPEAT,
    SKIP,
    all_execute,
    check_budget,
    check_decisions,
    expand_path,
    parse_decisions,
)
from .heads import LayerRouter
from .loading import (
    DEFAULT_MODEL,
    batch_prompts,
    encode_prompt,
    load_model,
    load_tokenizer,
    resolve_device,
)
from .model import RoutedModel
from .pooling import window_pool
from .relaxed import Relaxation, relaxed
from .routers import RouterConfig, Routers
from .stand_ins import StandIns
from .surgery import UnsupportedArchitectureError, layer_list, supported_architectures

__all__ = [
    "DEFAULT_MODEL",
    "EXECUTE",
    "REPEAT",
    "SKIP",
    "LayerRouter",
    "RoutedCache",
    "Relaxation",
    "RoutedModel",
    "RouterConfig",
    "Routers",
    "StandIns",
    "UnsupportedArchitectureError",
    "all_execute",
    "batch_prompts",
    "block_macs",
    "check_budget",
    "encode_prompt",
    "check_decisions",
    "expand_path",
    "layer_list",
    "load_model",
    "load_routed",
    "load_tokenizer",
    "parse_decisions",
    "path_macs",
    "relaxed",
    "resolve_device",
    "supported_architectures",
    "window_pool",
]
