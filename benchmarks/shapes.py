"""Shapes shared by the benchmarks: real-size random-weight Llama models (speed does not depend on values)."""

from __future__ import annotations

import torch

SHAPES = {
    "llama-3.2-3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
    ),
}


def random_llama(shape: str, device: str | torch.device = "cpu"):
    """A seeded random-weight ``LlamaForCausalLM`` of a named shape (bf16 on CUDA, else float32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape])).to(dtype)
    return model.eval()


def sync() -> None:
    """Wait for queued CUDA work, so wall-clock timings are real."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
