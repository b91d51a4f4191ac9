"""A fingerprint of a base model, so routers are never loaded into a model they were not trained for.

The fingerprint has two parts: an architecture string (model type, layer count, hidden size, vocabulary)
that must match exactly, and a few weight statistics that must match within a tolerance (so the same
weights loaded in bf16 or float32 still match, while another checkpoint of the same shape does not).
"""

from __future__ import annotations

import math

import torch
from torch import nn

PROBE_RTOL = 0.02


def architecture_string(config, num_layers: int) -> str:
    """``"llama-L30-d576-v49152"``: what must match exactly."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return f"{text.model_type}-L{num_layers}-d{text.hidden_size}-v{text.vocab_size}"


UNKNOWN = -1.0  # a probe of weights that are not in memory (offloaded to meta); a mean |w| is never negative


LEGACY_PROBES = 3
"""Probes in files written before every layer, the head and the final norm were probed."""


@torch.no_grad()
def weight_probe(model: nn.Module, layers: list[nn.Module]) -> list[float]:
    """Mean absolute value of sampled weights, one value per module.

    In order: the input embeddings, the first and the last decoder layer (what files before drllm 0.3
    recorded), then every other decoder layer, the output embeddings and the final norm, so that a model
    changed in any layer or in its head does not pass for the one routers were made for.
    """
    from .surgery import final_norm

    modules = [model.get_input_embeddings(), layers[0], layers[-1], *layers[1:-1]]
    modules.append(model.get_output_embeddings() or model.get_input_embeddings())
    try:
        modules.append(final_norm(model))
    except Exception:  # noqa: BLE001 - a model without a findable final norm keeps the other probes
        modules.append(nn.Identity())
    probes = []
    for module in modules:
        real = [p for p in module.parameters() if not p.is_meta]  # offloaded weights sit on meta
        values = [p.detach().flatten()[:4096].float() for p in real if p.dim() >= 2][:4]
        if not values:
            values = [p.detach().flatten()[:4096].float() for p in real]
        if not values and any(True for _ in module.parameters()):
            probes.append(UNKNOWN)  # every weight offloaded: nothing to read, nothing compared
            continue
        flat = torch.cat([v.cpu() for v in values]) if values else torch.zeros(1)
        probes.append(round(float(flat.abs().mean()), 6))
    return probes


def probe_mismatch(saved: list[float], current: list[float]) -> bool:
    """True when two weight probes differ by more than the tolerance."""
    if not saved:
        return False
    if len(saved) < len(current) and len(saved) != LEGACY_PROBES:
        return True
    if len(saved) > len(current):
        return True
    return any(  # a file from before every layer was probed carries the first three: those are compared
        not math.isclose(a, b, rel_tol=PROBE_RTOL, abs_tol=1e-6)
        for a, b in zip(saved, current, strict=False)
        if a != UNKNOWN and b != UNKNOWN
    )


def base_model_name(config) -> str:
    """The base model as routers record it: a hub name as given, a local folder as an absolute path."""
    from pathlib import Path

    name = str(getattr(config, "name_or_path", "") or "")
    return str(Path(name).resolve()) if name and Path(name).is_dir() else name


def check_compatible(config, model, source: str = "routers") -> None:
    """Raise ``ValueError`` naming both values when router ``config`` was made for another ``model``."""
    if not config.fingerprint or not config.weight_probe:
        raise ValueError(
            f"{source} record no base-model fingerprint (fingerprint and weight_probe), so they "
            "cannot be checked against this model; routers saved by drllm always carry both"
        )
    checks = [
        ("layer count", config.num_layers, model.num_layers),
        ("hidden size", config.hidden_size, model.hidden_size),
        ("model fingerprint", config.fingerprint, model.fingerprint),
    ]
    for what, saved, current in checks:
        if saved != current:
            raise ValueError(f"{source} were made for a model with {what} {saved}, this model has {current}")
    if probe_mismatch(config.weight_probe, model.weight_probe):
        raise ValueError(
            f"{source} were trained on other weights: weight fingerprint {config.weight_probe}, "
            f"this model has {model.weight_probe}"
        )
