"""drllm: dynamic layer routing (skip / execute / repeat) for frozen Hugging Face causal LMs.

The packages are ``drllm.router`` (inference: ``RoutedModel``, routers), ``drllm.search``, ``drllm.train``,
``drllm.evaluation`` and ``drllm.cli``; the names most people need are importable from here too
(``from drllm import RoutedModel, load_routed``), loaded on first use so ``import drllm`` stays light.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("drllm")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

_FROM_ROUTER = ("RoutedModel", "Routers", "RouterConfig", "load_routed", "load_tokenizer", "load_model")


def __getattr__(name: str):
    if name in _FROM_ROUTER:
        from drllm import router

        return getattr(router, name)
    raise AttributeError(f"module 'drllm' has no attribute {name!r}")


__all__ = ["__version__", *_FROM_ROUTER]
