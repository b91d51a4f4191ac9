"""Misuse of the wrapper is refused with one line naming the problem (each of these once ran silently)."""

import pytest
import torch
from tiny_models import prompts, tiny_model

from drllm.router import RoutedModel


def test_a_call_after_unwrap_is_refused():
    routed = RoutedModel(tiny_model("llama"))
    ids, mask = prompts()
    plain = routed.unwrap()
    with pytest.raises(RuntimeError, match="unwrapped"):
        routed(ids, mask, decisions=[1, 0, 1, 1])
    with pytest.raises(RuntimeError, match="unwrapped"):
        routed.generate(ids, attention_mask=mask, decisions=[1, 0, 1, 1], max_new_tokens=2)
    assert plain(input_ids=ids, attention_mask=mask).logits.shape[0] == ids.shape[0]  # the plain model works


@pytest.mark.parametrize("bad", [10_000, -1])
def test_token_ids_outside_the_vocabulary_are_refused(bad):
    routed = RoutedModel(tiny_model("llama"))
    ids, mask = prompts()
    ids[0, -1] = bad
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        routed(ids, mask)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        routed.backbone(ids, mask, torch.ones(4, dtype=torch.long))


@pytest.mark.parametrize("field", ["num_windows", "bottleneck"])
def test_routers_no_loader_could_read_are_refused_when_made(field, tmp_path):
    routed = RoutedModel(tiny_model("llama"))
    with pytest.raises(ValueError, match=f"{field} must be a whole number >= 1"):
        routed.add_routers(**{field: 0})
    assert routed.routers is None
