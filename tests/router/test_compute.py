"""Compute accounting: the config's multiply-adds equal the weights of each block's real matrices."""

import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_model
from transformers.pytorch_utils import Conv1D

from drllm.router import RoutedModel, layer_list
from drllm.router.compute import block_macs, mean_context, path_macs


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_projection_and_mlp_macs_equal_the_blocks_matrices(arch):
    model = tiny_model(arch)
    for i, layer in enumerate(layer_list(model)):
        weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
        parts = block_macs(model.config, i, prompt_tokens=10)
        assert parts["attention_projections"] + parts["mlp"] == weights


def test_mean_context_counts_each_tokens_positions():
    for tokens, window in [(1, None), (7, None), (7, 3), (3, 8)]:
        explicit = sum(min(t + 1, window or tokens) for t in range(tokens)) / tokens
        assert mean_context(tokens, window) == pytest.approx(explicit)
    with pytest.raises(ValueError, match="prompt_tokens must be >= 1"):
        mean_context(0)


def test_sliding_layers_attend_to_fewer_positions():
    config = tiny_model("gemma3_text").config  # sliding, full, sliding, full; window 5
    sliding, full = (block_macs(config, i, 40)["attention_context"] for i in (0, 1))
    assert sliding < full


def test_path_macs_count_repeats_twice_and_stand_ins_at_their_rank():
    routed = RoutedModel(tiny_model("llama"))
    one = block_macs(routed.config, 0, 12)["total"]
    plain = path_macs(routed.config, [1, 0, 2, 1], 12)
    assert plain["blocks"] == pytest.approx(4 * one) and plain["fraction"] == pytest.approx(1.0)
    stand_ins = routed.new_stand_ins(rank=4)
    stand_ins.set_map(1, torch.zeros(32, 4), torch.zeros(32), torch.zeros(4, 32))
    with_maps = path_macs(routed.config, [1, 0, 1, 1], 12, stand_ins)
    assert with_maps["stand_ins"] == 2 * 32 * 4 and with_maps["total"] == pytest.approx(3 * one + 256)


def test_path_macs_refuses_paths_that_do_not_fit_the_config():
    routed = RoutedModel(tiny_model("llama"))
    for bad, problem in (
        ([1, 1], "2 columns"),
        ([5, 1, 1, 1], "got values \\[5\\]"),
        ([0.7, 1, 1, 1], "non-integer"),
    ):
        with pytest.raises(ValueError, match=problem):
            path_macs(routed.config, bad, 10)
    with pytest.raises(ValueError, match="one path"):
        path_macs(routed.config, torch.ones(2, 4, dtype=torch.long), 10)
    other = RoutedModel(tiny_model("llama", num_hidden_layers=6)).new_stand_ins()
    with pytest.raises(ValueError, match="stand-ins for 6 layers, the config has 4"):
        path_macs(routed.config, [1, 0, 1, 1], 10, other)
