"""Compute accounting from a model's config: multiply-adds per prompt token of a path.

One decoder block costs, per token:
- attention projections: ``d * (H + 2 K) * hd`` for q, k, v and ``H * hd * d`` for the output, with ``H``
  query heads, ``K`` key-value heads and head size ``hd``;
- attention over the context: ``2 * H * hd * c`` (scores and the weighted sum), ``c`` being the positions
  the token attends to: on average ``(T + 1) / 2`` for a prompt of ``T`` tokens, fewer in a sliding-window
  layer;
- MLP: ``3 * d * f`` for the gated MLPs (llama, mistral, qwen, gemma, phi3, olmo2) and ``2 * d * f`` for
  gpt2 and gpt_neox, with ``f`` the intermediate size.
Norms, activations, rotary embeddings and biases are left out (a few ``d`` per token). A linear stand-in
(of a skipped layer, or of a switched-off unit) costs ``d * d`` (full rank) or ``2 * d * r``. The embedding
and the LM head are the same for every path and are left out, so a fraction is one of the decoder stack.
"""

from __future__ import annotations

from .decisions import UNIT_OFF, check_decisions

UNGATED = ("gpt2", "gpt_neox")


def _get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _shape(config) -> tuple[int, int, int, int, int]:
    """``(d, H, K, hd, f)`` of the config, whatever each architecture calls them."""
    d = _get(config, "hidden_size", "n_embd")
    heads = _get(config, "num_attention_heads", "n_head")
    kv = _get(config, "num_key_value_heads", default=heads)
    head_dim = _get(config, "head_dim", default=d // heads)
    ff = _get(config, "intermediate_size", "n_inner", default=4 * d)
    return d, heads, kv, head_dim, ff


def _window(config, layer: int) -> int | None:
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types is not None:
        return window if types[layer] == "sliding_attention" else None
    if config.model_type == "mistral":
        return window
    return window if getattr(config, "use_sliding_window", False) else None


def mean_context(prompt_tokens: int, window: int | None = None) -> float:
    """Mean positions a prompt token attends to (itself and those before it, at most ``window``)."""
    if prompt_tokens < 1:
        raise ValueError(f"prompt_tokens must be >= 1, got {prompt_tokens}")
    w = prompt_tokens if window is None else min(window, prompt_tokens)
    # tokens 1..w attend to 1..w positions, the rest to w each
    return (w * (w + 1) / 2 + (prompt_tokens - w) * w) / prompt_tokens


def block_macs(config, layer: int, prompt_tokens: int) -> dict[str, float]:
    """Multiply-adds per prompt token of decoder block ``layer`` (see the module docstring)."""
    d, heads, kv, hd, ff = _shape(config)
    parts = {
        "attention_projections": float(d * (heads + 2 * kv) * hd + heads * hd * d),
        "attention_context": 2.0 * heads * hd * mean_context(prompt_tokens, _window(config, layer)),
        "mlp": float((2 if config.model_type in UNGATED else 3) * d * ff),
    }
    parts["total"] = sum(parts.values())
    return parts


def path_macs(config, decisions, prompt_tokens: int, stand_ins=None) -> dict[str, float]:
    """Multiply-adds per prompt token of a path (blocks as often as they run, units, the stand-ins it uses).

    Returns ``blocks``, ``stand_ins``, ``total``, ``full`` (every block once) and ``fraction`` (of full).
    """
    layers = _get(config, "num_hidden_layers", "n_layer")
    decisions = check_decisions(decisions, layers, units=True)
    if decisions.shape[0] != 1:
        raise ValueError(f"path_macs takes one path [L], got {decisions.shape[0]} rows")
    decisions = decisions[0].tolist()
    if stand_ins is not None and stand_ins.num_layers != layers:
        raise ValueError(f"stand-ins for {stand_ins.num_layers} layers, the config has {layers}")
    parts = [block_macs(config, i, prompt_tokens) for i in range(len(decisions))]
    block = [p["total"] for p in parts]
    attention = [p["attention_projections"] + p["attention_context"] for p in parts]
    blocks = 0.0
    for i, n in enumerate(decisions):  # 0/1/2 blocks; 3 the MLP alone, 4 the attention alone
        blocks += {3: parts[i]["mlp"], 4: attention[i]}.get(n, n * block[i])
    extra = 0.0
    if stand_ins is not None:  # a skipped layer's map; a switched-off unit's (3: the attention, 4: the MLP)
        extra = float(sum(stand_ins.macs_per_token(i) for i, n in enumerate(decisions) if n == 0))
        units = [(UNIT_OFF[n], i) for i, n in enumerate(decisions) if n in UNIT_OFF]
        extra += float(sum(stand_ins.unit_macs_per_token(unit, i) for unit, i in units))
    full = sum(block)
    total = blocks + extra
    return {"blocks": blocks, "stand_ins": extra, "total": total, "full": full, "fraction": total / full}


def unit_shares(config, prompt_tokens: int = 128) -> tuple[float, float]:
    """``(MLP, attention)``: each unit's mean share of a block's multiply-adds at ``prompt_tokens`` tokens.

    That share is the cost, in layers, of a layer that runs the unit alone.
    """
    layers = _get(config, "num_hidden_layers", "n_layer")
    parts = [block_macs(config, i, prompt_tokens) for i in range(layers)]
    mlp = sum(p["mlp"] / p["total"] for p in parts) / layers
    return mlp, 1.0 - mlp
