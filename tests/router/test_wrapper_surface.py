"""``RoutedModel`` answers what transformers and peft users ask of a model, and loads like AutoPeftModel."""

import pytest
import torch
from tiny_models import prompts, tiny_model

from drllm.router import RoutedModel, load_routed
from drllm.router.fingerprint import UNKNOWN, probe_mismatch, weight_probe


def test_config_dtype_generation_and_parameter_counts_are_the_base_models():
    model = tiny_model("llama")
    routed = RoutedModel(model)
    assert routed.config is model.config and routed.generation_config is model.generation_config
    assert routed.dtype == torch.float32 and routed.can_generate()
    base = sum(p.numel() for p in model.parameters())
    assert routed.num_parameters() == base
    routed.model.requires_grad_(False)
    routers = routed.add_routers(kind="linear")
    assert routed.num_parameters(only_trainable=True) == sum(p.numel() for p in routers.parameters())


def test_save_pretrained_takes_transformers_arguments_writes_a_card_and_load_routed_finds_the_base(
    tmp_path, tiny_model_dir
):
    routed = load_routed(tiny_model_dir, device="cpu")
    routed.add_routers(kind="linear", seed=1)
    routed.save_pretrained(tmp_path / "r", safe_serialization=True, max_shard_size="5GB")
    card = (tmp_path / "r" / "README.md").read_text()
    assert "library_name: drllm" in card and tiny_model_dir in card
    again = load_routed(routers=tmp_path / "r", device="cpu")  # the base model comes from router_config.json
    ids, mask = prompts()
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask).logits, routed(ids, mask).logits)
    with pytest.raises(ValueError, match="safetensors only"):
        routed.save_pretrained(tmp_path / "x", safe_serialization=False)
    with pytest.raises(ValueError, match="needs a model"):
        load_routed()


def test_offloaded_weights_on_meta_are_not_read_and_not_compared():
    model = tiny_model("llama")
    with torch.device("meta"):
        offloaded = tiny_model("llama")
    from drllm.router import layer_list

    probe = weight_probe(offloaded, list(layer_list(offloaded)))
    assert probe == [UNKNOWN] * (len(layer_list(offloaded)) + 3)  # every layer, the head and the final norm
    assert not probe_mismatch(probe, weight_probe(model, list(layer_list(model))))


def test_a_layer_skipping_draft_in_assisted_generation_keeps_the_full_models_output(tiny_model_dir):
    from tiny_models import tiny_tokenizer
    from transformers import pipeline

    tok = tiny_tokenizer()
    full = tiny_model("llama")
    draft = RoutedModel(tiny_model("llama"))
    routers = draft.add_routers(kind="static")
    with torch.no_grad():
        routers.static.logits.copy_(torch.tensor([[-9.0, 9.0, -9.0]] * 4))
        routers.static.logits[2] = torch.tensor([9.0, -9.0, -9.0])  # the draft skips layer 2
    ids = torch.tensor([tok("hello world")["input_ids"]])
    want = full.generate(ids, max_new_tokens=8, do_sample=False)
    got = full.generate(ids, assistant_model=draft, max_new_tokens=8, do_sample=False)
    assert got.tolist() == want.tolist()
    assert draft.last_decisions[0].tolist() == [1, 1, 0, 1]  # the draft did run its own path
    text = pipeline("text-generation", model=RoutedModel(tiny_model("llama")), tokenizer=tok)(
        "hello", max_new_tokens=3
    )
    assert text[0]["generated_text"].startswith("hello")
    with pytest.raises(ValueError, match="cache_implementation='static' is not supported"):
        draft.generate(ids, max_new_tokens=2, cache_implementation="static")
