"""Argument checks of ``RoutedModel``: what it wraps, and the inputs of every call."""

from __future__ import annotations

import torch


def check_wrappable(model) -> None:
    """Refuse a model ``RoutedModel`` cannot wrap, before any surgery, saying what to pass instead.

    Raises:
        UnsupportedArchitectureError: for a ``RoutedModel`` (it is wrapped already).
    """
    from .model import RoutedModel
    from .surgery import UnsupportedArchitectureError

    if isinstance(model, RoutedModel):
        raise UnsupportedArchitectureError(
            "the model is already a RoutedModel: use it as it is (routed.model is the causal LM inside it), "
            "or wrap the plain model that routed.unwrap() returns"
        )


def check_inputs(routed, input_ids, attention_mask, inputs_embeds, packed: bool = False) -> int:
    """Refuse bad inputs of a ``RoutedModel`` call in one line; returns the batch size.

    ``packed``: rows carry their own position ids (a prompt and its options side by side), so the
    context bounds the positions, not the row length.
    """
    if routed._unwrapped:
        raise RuntimeError(
            "this RoutedModel was unwrapped (routed.unwrap()); its layers are the plain model's again, "
            "so decisions and routers would be ignored: wrap the model anew with RoutedModel(model)"
        )
    if isinstance(input_ids, torch.Tensor) and input_ids.numel():
        vocab = routed.model.get_input_embeddings().num_embeddings
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab:
            raise ValueError(
                f"input_ids hold token id {high if high >= vocab else low}, outside the model's "
                f"vocabulary of {vocab} (is the tokenizer this model's?)"
            )
    ids = input_ids if input_ids is not None else inputs_embeds
    if ids is None:
        raise ValueError("pass input_ids (or inputs_embeds)")
    if ids.dim() < 2:
        raise ValueError(f"input_ids must be [B, T], got shape {list(ids.shape)}")
    batch, length = ids.shape[0], ids.shape[1]
    if length == 0:
        raise ValueError("the prompt is empty (0 tokens)")
    limit = routed.context_length
    if limit is not None and length > limit and not packed:
        raise ValueError(f"the prompt has {length} tokens, the model's context is {limit} tokens")
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:  # else a 4D mask (or dict)
        if tuple(attention_mask.shape) != (batch, length):
            raise ValueError(
                f"attention_mask has shape {list(attention_mask.shape)}, input_ids {[batch, length]}"
            )
        if bool((attention_mask.sum(1) == 0).any()):
            raise ValueError("a row of attention_mask has no real tokens (an empty prompt)")
    return batch
