"""Parity: the routed model equals the plain model and an explicit unrolled model, for every architecture."""

import pytest
import torch
from tiny_models import ARCHITECTURES, assert_rows_generate_alone, explicit_model, prompts, tiny_model

from drllm.router import RoutedModel, layer_list

PATHS = [
    [1, 1, 1, 1],
    [1, 0, 2, 1],
    [2, 1, 0, 0],
    [0, 2, 2, 1],
]
ATOL = 1e-5


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_all_execute_equals_unwrapped_and_unwrap_restores(arch):
    model = tiny_model(arch)
    ids, mask = prompts()
    ref = _logits(model, ids, mask)
    originals = list(layer_list(model))
    routed = RoutedModel(model)
    assert routed.num_layers == 4
    torch.testing.assert_close(_logits(routed, ids, mask), ref, atol=ATOL, rtol=0)
    plain = routed.unwrap()
    assert all(a is b for a, b in zip(layer_list(plain), originals, strict=False))
    torch.testing.assert_close(_logits(plain, ids, mask), ref, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("path", PATHS[1:])
def test_decisions_equal_explicit_unrolled_model(arch, path):
    model = tiny_model(arch)
    ids, mask = prompts()
    ref = _logits(explicit_model(model, path), ids, mask)
    routed = RoutedModel(model)
    with torch.no_grad():
        out = routed(ids, attention_mask=mask, decisions=torch.tensor(path)).logits
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert routed.last_decisions.tolist() == [path] * ids.shape[0]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_generation_equals_uncached_and_explicit(arch):
    model = tiny_model(arch)
    ids, mask = prompts(batch=2, length=7)
    path = [2, 0, 1, 2]
    explicit = explicit_model(model, path)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ref = explicit.generate(ids, **kw)
    routed = RoutedModel(model)
    cached = routed.generate(ids, decisions=path, **kw)
    uncached = routed.generate(ids, decisions=path, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, ref)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_batch_equals_each_row_alone(arch):
    model = tiny_model(arch)
    ids, mask = prompts(batch=3, length=9, pad_rows=2)
    decisions = torch.tensor(PATHS[1:])
    routed = RoutedModel(model)
    with torch.no_grad():
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # absolute position embeddings (GPT-2) need these
        batch = routed(ids, attention_mask=mask, decisions=decisions, position_ids=positions).logits
    for r in range(3):
        keep = mask[r].bool()
        with torch.no_grad():
            alone = routed(ids[r : r + 1, keep], decisions=decisions[r]).logits
        torch.testing.assert_close(batch[r, keep], alone[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_mixed_batch_generation_equals_rows_alone(arch):
    model = tiny_model(arch)
    ids, mask = prompts(batch=3, length=8, pad_rows=2)
    decisions = torch.tensor(PATHS[1:])
    routed = RoutedModel(model)
    assert_rows_generate_alone(routed, ids, mask, decisions, new_tokens=6)


def test_without_cache_a_layer_runs_only_on_rows_that_execute_it():
    model = tiny_model("llama")
    seen = []
    for i, layer in enumerate(layer_list(model)):
        layer.register_forward_hook(lambda mod, args, out, i=i: seen.append((i, args[0].shape[0])))
    routed = RoutedModel(model)
    ids, mask = prompts(batch=3)
    decisions = torch.tensor([[1, 0, 2, 0], [0, 0, 2, 1], [1, 0, 1, 0]])
    with torch.no_grad():
        routed(ids, attention_mask=mask, decisions=decisions)
    # layer 0: rows 0, 2; layer 1: none; layer 2: all three, then rows 0, 1 again; layer 3: row 1
    assert seen == [(0, 2), (2, 3), (2, 2), (3, 1)]


def test_repeat_uses_its_own_cache_slot():
    model = tiny_model("llama")
    routed = RoutedModel(model)
    ids, mask = prompts(batch=1, pad_rows=0)
    cache = routed.new_cache()
    with torch.no_grad():
        routed(ids, decisions=[2, 1, 0, 1], use_cache=True, past_key_values=cache)
    lengths = [layer.get_seq_length() if layer.is_initialized else 0 for layer in cache.layers]
    t = ids.shape[1]
    assert lengths == [t, t, 0, t, t, 0, 0, 0]  # slots 0..3 first passes, 4..7 repeats (only layer 0)
    assert cache.get_seq_length() == t


def test_skipping_layer_zero_keeps_cache_length_right():
    model = tiny_model("llama")
    routed = RoutedModel(model)
    ids, _ = prompts(batch=1, pad_rows=0)
    path = [0, 1, 1, 1]
    a = routed.generate(ids, decisions=path, max_new_tokens=6, do_sample=False)
    b = routed.generate(ids, decisions=path, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


def test_beam_search_and_sampling_follow_the_explicit_model():
    model = tiny_model("llama")
    ids, mask = prompts(batch=2, length=7)
    path = [1, 2, 0, 1]
    explicit = explicit_model(model, path)
    routed = RoutedModel(model)
    beams = dict(
        attention_mask=mask,
        max_new_tokens=5,
        num_beams=3,
        num_return_sequences=2,
        do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(routed.generate(ids, decisions=path, **beams), explicit.generate(ids, **beams))
    sample = dict(attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=5, pad_token_id=0)
    torch.manual_seed(11)
    ours = routed.generate(ids, decisions=path, **sample)
    torch.manual_seed(11)
    assert torch.equal(ours, explicit.generate(ids, **sample))


def test_router_decisions_are_expanded_per_beam():
    model = tiny_model("llama")
    routed = RoutedModel(model)
    routed.add_routers(num_windows=2, bottleneck=8, seed=4)
    ids, mask = prompts(batch=2, length=7)
    decided = routed.route(ids, mask)
    kw = dict(attention_mask=mask, max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0)
    assert torch.equal(routed.generate(ids, **kw), routed.generate(ids, decisions=decided, **kw))
    assert torch.equal(routed.last_decisions, decided)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_cached_equals_uncached(dtype):
    model = tiny_model("qwen3").to(dtype)
    ids, mask = prompts(batch=2, length=7)
    routed = RoutedModel(model)
    routed.add_routers(num_windows=2, bottleneck=8)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = routed.generate(ids, decisions=[1, 2, 0, 1], **kw)
    assert torch.equal(cached, routed.generate(ids, decisions=[1, 2, 0, 1], use_cache=False, **kw))
    routed.generate(ids, **kw)  # routers (float32) read half-precision hidden states
    assert routed.last_decisions.shape == (2, 4)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_generate_takes_either_cache_name_and_warns_nothing(name):
    """transformers 5.24 renamed ``past_key_values`` to ``cache``: both spellings work, neither warns."""
    import warnings

    model = tiny_model("llama")
    ids, mask = prompts()
    routed = RoutedModel(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        plain = routed.generate(
            ids, attention_mask=mask, decisions=[1, 2, 0, 1], max_new_tokens=4, do_sample=False
        )
        given = routed.generate(
            ids,
            attention_mask=mask,
            decisions=[1, 2, 0, 1],
            max_new_tokens=4,
            do_sample=False,
            **{name: routed.new_cache()},
        )
    assert torch.equal(plain, given)
    with pytest.raises(ValueError, match="not both"):
        routed(ids, mask, use_cache=True, cache=routed.new_cache(), past_key_values=routed.new_cache())
