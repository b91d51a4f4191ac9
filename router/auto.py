"""Loading a routed model by name, like ``AutoPeftModelForCausalLM``: one loader every command uses.

routed = load_routed("HuggingFaceTB/SmolLM2-135M-Instruct", routers="runs/routers")
routed = load_routed(routers="runs/routers")   # the base model named in router_config.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from .loading import check_model_name, load_tokenizer, resolve_device, resolve_dtype
from .model import RoutedModel
from .routers import CONFIG_NAME


def load_routed(model=None, device=None, dtype=None, routers=None, **from_pretrained_kwargs):
    """The one loader every command uses: a ``RoutedModel`` on the device every command agrees on.

    Args:
        model: a hub name, a local folder, the embedded ``"smollm2-135m-instruct"``, a causal LM module or a
            ``RoutedModel``; None: the base model ``routers`` were trained for (their ``base_model``).
        device: ``None``/``"auto"`` (CUDA when available, else the CPU), or a device such as ``"cpu"`` or
            ``"cuda:1"``. A model object you pass stays where it is unless a device is given.
        dtype: ``None`` or ``"auto"`` keeps the checkpoint's dtype; else a dtype or its name (``"bfloat16"``).
        routers: a router folder to load (``router_config.json`` + ``routers.safetensors``).
        **from_pretrained_kwargs: passed to ``from_pretrained`` when loading by name.

    Returns:
        The ``RoutedModel`` in eval mode.
    """
    if model is None:
        model = base_model_of(routers)
    dtype = resolve_dtype(dtype)
    if isinstance(model, RoutedModel):
        routed = model
        if routers is not None:
            routed.load_routers(routers)
    elif isinstance(model, nn.Module):
        routed = RoutedModel.from_pretrained(model, routers=routers)
    elif isinstance(model, (str, os.PathLike)):
        if dtype is not None:
            from_pretrained_kwargs.setdefault("dtype", dtype)
        routed = RoutedModel.from_pretrained(str(model), routers=routers, **from_pretrained_kwargs)
        device = "auto" if device is None else device
    else:
        raise TypeError(f"model must be a name, a folder or a model, got {type(model).__name__}")
    mapped = getattr(routed.model, "hf_device_map", None)  # placed by accelerate (device_map=...): stays put
    if device is not None and not mapped:
        routed.to(resolve_device(device))
    if dtype is not None and dtype != "auto":
        routed.model.to(dtype)
    return routed.eval()


def base_model_of(routers) -> str:
    """The base model a router folder records (``base_model`` in ``router_config.json``).

    Raises:
        ValueError: without a router folder, or when the folder records no base model.
        FileNotFoundError: when the recorded base model is a local folder that no longer exists (moved),
            naming the file it comes from and ``--model``.
    """
    if routers is None:
        raise ValueError("load_routed needs a model, or a routers folder that names its base model")
    path = Path(routers) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {routers}: not a drllm router directory")
    try:
        name = json.loads(path.read_text()).get("base_model", "")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path} is not a JSON object: {err}") from None
    if not name:
        raise ValueError(f"{path} records no base_model; pass the model it was trained for")
    try:
        check_model_name(name)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the routers' base model {name}, recorded as base_model in {path}, does not exist (moved or "
            "deleted?); pass the base model with --model (model= from Python)"
        ) from None
    return name


def load_with_tokenizer(model, tokenizer=None, device=None, routers=None, caller: str = "drllm", dtype=None):
    """``(RoutedModel, tokenizer, display name)`` for a model name or folder, or a given ``RoutedModel``.

    A ``RoutedModel`` must come with its tokenizer; a name loads both (``load_routed``, ``load_tokenizer``).

    Raises:
        ValueError: for a ``RoutedModel`` without its tokenizer, naming ``caller``.
    """
    if isinstance(model, RoutedModel):
        if tokenizer is None:
            raise ValueError(f"{caller} got a RoutedModel without its tokenizer; pass tokenizer=")
        name = str(getattr(model.model.config, "name_or_path", "") or "model")
        return load_routed(model, device=device, routers=routers, dtype=dtype), tokenizer, name
    routed = load_routed(model, device=device, routers=routers, dtype=dtype)
    return routed, tokenizer if tokenizer is not None else load_tokenizer(str(model)), str(model)
