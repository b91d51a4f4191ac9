"""Sublayer units: a layer with its attention or its MLP off equals an explicit model without that unit."""

import pytest
import torch
from tiny_models import (
    ARCHITECTURES,
    assert_equals_explicit,
    assert_rows_generate_alone,
    explicit_model,
    prompts,
    tiny_model,
)

from drllm.router import RoutedCache, RoutedModel, check_decisions, layer_list, parse_decisions
from drllm.router.compute import block_macs, path_macs
from drllm.router.decisions import expand_path, layer_applications

PATH = [3, 1, 4, 0]
ROWS = torch.tensor([[3, 1, 4, 0], [1, 4, 3, 2], [4, 0, 1, 3]])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_unit_paths_equal_the_explicit_model_with_and_without_cache(arch):
    model = tiny_model(arch)
    ids, mask = prompts(batch=2, length=7)
    explicit = explicit_model(model, PATH)
    # the explicit model's own DynamicCache would read its length from slot 0, which a layer without
    # attention never writes; RoutedCache reads a written slot (as for skipped layers, tested elsewhere)
    explicit_cache = RoutedCache(explicit.config, len(expand_path(PATH)))
    assert_equals_explicit(RoutedModel(model), explicit, ids, mask, PATH, explicit_cache)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_unit_rows_equal_each_row_alone(arch):
    model = tiny_model(arch)
    ids, mask = prompts(batch=3, length=8, pad_rows=2)
    assert_rows_generate_alone(RoutedModel(model), ids, mask, ROWS)


def test_a_switched_off_attention_computes_nothing_and_writes_no_cache():
    model = tiny_model("llama")
    calls = []
    for i, layer in enumerate(layer_list(model)):
        # the units' inner projections run only when the unit computes
        layer.self_attn.q_proj.register_forward_hook(lambda m, a, o, i=i: calls.append(("attention", i)))
        layer.mlp.gate_proj.register_forward_hook(lambda m, a, o, i=i: calls.append(("mlp", i)))
    routed = RoutedModel(model)
    ids, _ = prompts(batch=1, pad_rows=0)
    cache = routed.new_cache()
    with torch.no_grad():
        routed(ids, decisions=[3, 4, 1, 1], use_cache=True, past_key_values=cache)
    assert ("attention", 0) not in calls and ("mlp", 1) not in calls and ("mlp", 0) in calls
    assert not cache.layers[0].is_initialized and cache.layers[1].get_seq_length() == ids.shape[1]
    assert (
        type(layer_list(model)[0].layer.self_attn).forward
        is layer_list(model)[0].layer.self_attn.forward.__func__
    )


def test_units_are_refused_where_only_block_decisions_are_spoken():
    with pytest.raises(ValueError, match="3 and 4 \\(sublayer units\\) run in RoutedModel forward"):
        check_decisions([1, 3, 1, 1], 4)
    assert check_decisions([1, 3, 4, 1], 4, units=True).tolist() == [[1, 3, 4, 1]]
    assert parse_decisions("1,3,4,1", 4, units=True) == [1, 3, 4, 1]
    with pytest.raises(ValueError, match="3 \\(MLP only\\) or 4 \\(attention only\\)"):
        check_decisions([1, 5, 1, 1], 4, units=True)
    assert expand_path([3, 0, 2, 4]) == [0, 2, 2, 3] and int(layer_applications([3, 0, 2, 4])) == 4


def test_unit_paths_cost_their_units_only():
    config = tiny_model("llama").config
    part = block_macs(config, 0, 10)
    attention = part["attention_projections"] + part["attention_context"]
    costs = path_macs(config, [3, 4, 1, 1], 10)
    assert costs["blocks"] == pytest.approx(part["mlp"] + attention + 2 * part["total"])
