"""Model surgery: the only module that knows where an architecture keeps its decoder layers.

``wrap_layers`` replaces, in place, each decoder layer ``i`` of a causal LM by a
``RoutedLayer(layer, index=i)``; ``put_layers`` puts the original objects back. The layer list keeps
its length, so the model's own loop, masks, rotary embeddings and per-layer attention types stay correct.

The other config facts that routed code needs live here too: which layers attend through a sliding
window (``additive_masks``) and the final logit softcapping (``softcap_logits``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# model_type -> dotted path from the *ForCausalLM object to its nn.ModuleList of decoder layers.
# Every entry here is exercised by tests/router/test_parity.py with a tiny random config.
LAYER_PATHS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma3_text": "model.layers",
    "phi3": "model.layers",
    "olmo2": "model.layers",
    "gpt_neox": "gpt_neox.layers",
    "gpt2": "transformer.h",
}


# model_type -> dotted path to the final norm (applied after the last layer, before the LM head).
NORM_PATHS: dict[str, str] = {
    **{k: "model.norm" for k in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "olmo2")},
    "gpt_neox": "gpt_neox.final_layer_norm",
    "gpt2": "transformer.ln_f",
}


class UnsupportedArchitectureError(ValueError):
    """Raised for a model whose layer layout drllm does not know."""


def supported_architectures() -> list[str]:
    """The ``config.model_type`` values drllm can wrap."""
    return sorted(LAYER_PATHS)


def _resolve(model: nn.Module, path: str) -> nn.Module:
    obj = model
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def final_norm(model: nn.Module) -> nn.Module:
    """The model's final norm (applied after the last decoder layer, before the LM head).

    Raises:
        UnsupportedArchitectureError: for a model type drllm does not know.
    """
    model = causal_lm(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in NORM_PATHS:
        raise UnsupportedArchitectureError(
            f"drllm does not know where model_type {model_type!r} keeps its final norm; supported "
            f"architectures: {', '.join(supported_architectures())}"
        )
    return _resolve(model, NORM_PATHS[model_type])


@torch.no_grad()
def final_norm_scale(model: nn.Module, hidden_size: int) -> torch.Tensor:
    """The per-channel gain ``[d]`` (float32, CPU) of the model's final norm, read by probing it.

    The norm is applied to ``x`` and ``-x`` for ``x`` of alternating ones (mean 0, root mean square 1), so
    ``(norm(x) - norm(-x)) / 2x`` is the gain whatever the norm's form: ``w`` for RMSNorm and LayerNorm,
    ``1 + w`` for Gemma's RMSNorm; a bias cancels. Routers that normalise their inputs multiply by it.
    """
    norm = final_norm(model)
    like = next(norm.parameters(), torch.ones(()))
    x = torch.ones(hidden_size, device=like.device, dtype=like.dtype)
    x[1::2] = -1
    gain = (norm(x[None]) - norm(-x[None]))[0].float() / (2 * x.float())
    return gain.cpu()


def causal_lm(model) -> nn.Module:
    """The transformers causal LM to wrap: ``model`` itself, or the one inside a PEFT model.

    A ``PeftModel`` (anything with ``get_base_model()``) holds the causal LM, its LoRA layers injected in
    place, behind two wrappers; its decoder layers are that model's.

    Raises:
        UnsupportedArchitectureError: for something that is not a module, saying what to pass.
    """
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        model = get_base_model()
    if not isinstance(model, nn.Module):
        raise UnsupportedArchitectureError(
            f"RoutedModel takes a transformers *ForCausalLM model or a PEFT model around one "
            f"(AutoModelForCausalLM.from_pretrained(...)), got {type(model).__name__}"
        )
    return model


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a causal LM.

    Raises:
        UnsupportedArchitectureError: for an unknown ``config.model_type``, listing the supported ones.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYER_PATHS:
        raise UnsupportedArchitectureError(
            f"drllm does not know where model_type {model_type!r} ({type(model).__name__}) keeps its decoder "
            f"layers; supported architectures: {', '.join(supported_architectures())}"
        )
    try:
        layers = _resolve(model, LAYER_PATHS[model_type])
    except AttributeError as err:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no {LAYER_PATHS[model_type]!r}; pass the *ForCausalLM model (or a "
            f"PEFT model around one), not the bare backbone"
        ) from err
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(
            f"{LAYER_PATHS[model_type]} of {type(model).__name__} is not a ModuleList"
        )
    return layers


def wrap_layers(model: nn.Module, make_wrapper: Callable[[nn.Module, int], nn.Module]) -> list[nn.Module]:
    """Replace every decoder layer ``i`` by ``make_wrapper(layer, i)`` in place.

    Returns:
        The original layer objects, in order, for ``put_layers``.

    Raises:
        ValueError: when the model's layers are already wrapped.
    """
    layers = layer_list(model)
    originals = list(layers)
    if any(hasattr(layer, "routed_index") for layer in originals):
        raise ValueError("this model's layers are already wrapped by drllm; call unwrap() first")
    for i, layer in enumerate(originals):
        layers[i] = make_wrapper(layer, i)
    return originals


def put_layers(model: nn.Module, layers: list[nn.Module]) -> nn.Module:
    """Put these layer objects (the originals, or the wrappers again) in the layer list, in place."""
    current = layer_list(model)
    if len(current) != len(layers):
        raise ValueError(f"model has {len(current)} layers but {len(layers)} were given")
    for i, layer in enumerate(layers):
        current[i] = layer
    return model


def additive_masks(config, allowed: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """Additive attention masks ``[B, 1, T, T]`` from ``allowed [B, T, T]``, with the config's sliding window.

    A sliding-window layer also hides keys ``config.sliding_window`` or more positions behind the query
    (by ``positions [B, T]``; a query always sees itself). Models that mix full and sliding layers
    (``config.layer_types``) take a dict with one mask per layer type.
    """

    def additive(ok: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(ok.shape[0], 1, *ok.shape[1:], dtype=dtype, device=ok.device)
        return mask.masked_fill_(~ok[:, None], torch.finfo(dtype).min)

    types = set(getattr(config, "layer_types", None) or [])
    window = getattr(config, "sliding_window", None)
    if not window or types == {"full_attention"}:
        return additive(allowed)
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    slid = allowed & ((positions[:, :, None] - positions[:, None, :] < window) | eye)
    if "sliding_attention" in types and len(types) > 1:
        return {t: additive(slid if t == "sliding_attention" else allowed) for t in types}
    return additive(slid)


def softcap_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """``tanh(logits / cap) * cap`` with the config's ``final_logit_softcapping`` (Gemma), else unchanged."""
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def sublayer(layer: nn.Module, unit: str) -> nn.Module:
    """The attention (``unit="attention"``) or MLP (``"mlp"``) module of one decoder layer.

    Found by class name, not attribute name: the one child whose class ends in ``Attention`` (``self_attn``,
    ``attn``, ``attention`` across the supported architectures) or in ``MLP``. Both add their output to the
    residual stream (after a post-norm in gemma3 and olmo2, which maps zero to zero), so a skipped unit is
    one that returns zeros.

    Raises:
        UnsupportedArchitectureError: when the layer has not exactly one such child.
    """
    suffix = {"attention": "Attention", "mlp": "MLP"}[unit]
    found = [m for m in layer.children() if type(m).__name__.endswith(suffix)]
    if len(found) != 1:
        raise UnsupportedArchitectureError(
            f"{type(layer).__name__} has {len(found)} children whose class ends in {suffix!r}; sublayer "
            "units need exactly one"
        )
    return found[0]
