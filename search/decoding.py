"""Decoding helpers of the generate scoring: end-of-sequence ids, cutting at them, greedy new tokens."""

from __future__ import annotations

import torch


def eos_ids(tokenizer, model) -> set[int]:
    """Every end-of-sequence token id of a tokenizer and its model's generation config."""
    ids = set()
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Generated tokens up to and including the first EOS (all of them when there is none)."""
    for k, t in enumerate(tokens):
        if t in eos:
            return tokens[: k + 1]
    return tokens


def greedy_new_tokens(
    routed, ids, mask, decisions, max_new_tokens: int, pad_token_id, streamer=None
) -> torch.Tensor:
    """Greedy routed generation for left-padded prompts; returns only the new tokens ``[B, n]``.

    ``decisions`` None lets the routers decide at prefill; a ``streamer`` gets the tokens as they come.
    """
    out = routed.generate(
        ids,
        attention_mask=mask,
        decisions=decisions,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id,
        streamer=streamer,
    )
    return out[:, ids.shape[1] :]
