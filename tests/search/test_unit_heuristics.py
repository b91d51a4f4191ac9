"""Unit-level static baselines: LLM-Drop's influence per attention and MLP, and paths at a compute target."""

import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_model, tiny_tokenizer
from torch.nn import functional as F

from drllm.router import RoutedModel, batch_prompts, path_macs
from drllm.search.unit_heuristics import attention_drop_path, mlp_drop_path, unit_drop_path, unit_influence

PROMPTS = [f"a {w} and {k} more words here" for k, w in enumerate(["cat", "dog", "sun"] * 3)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@torch.no_grad()
def test_attention_influence_equals_the_routed_path_with_that_mlp_off(arch):
    routed, tok = RoutedModel(tiny_model(arch)), tiny_tokenizer()
    influence = unit_influence(routed, tok, PROMPTS, batch_size=4)
    ids, mask = batch_prompts(tok, PROMPTS)
    keep = mask.bool() & (mask.cumsum(1) > 1)
    i = 2
    with routed.recording() as full:
        routed.backbone(ids, mask, [1, 1, 1, 1])
    with routed.recording() as half:
        routed.backbone(ids, mask, [1, 1, 4, 1])  # layer 2 runs its attention alone
    expected = (1 - F.cosine_similarity(full[i], half[i + 1], dim=-1))[keep].mean()
    assert float(influence["attention"][i]) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    expected_mlp = (1 - F.cosine_similarity(half[i + 1], full[i + 1], dim=-1))[keep].mean()
    assert float(influence["mlp"][i]) == pytest.approx(float(expected_mlp), rel=1e-4, abs=1e-6)


def test_unit_paths_meet_their_compute_target_and_keep_protected_layers():
    config = tiny_model("llama", num_hidden_layers=8).config
    influence = {"attention": torch.linspace(0.1, 0.8, 8), "mlp": torch.linspace(0.9, 0.2, 8)}
    path = unit_drop_path(influence, config, 0.1, prompt_tokens=20)
    assert path[0] == path[1] == path[-1] == 1 and 1 - path_macs(config, path, 20)["fraction"] >= 0.1
    attention_only = attention_drop_path(influence, config, 0.05, prompt_tokens=20)
    assert set(attention_only) <= {1, 3} and attention_only[2] == 3  # the least influential attention
    with pytest.raises(ValueError, match="saves .* less than 90.0%"):
        attention_drop_path(influence, config, 0.9, prompt_tokens=20)
    mlp_only = mlp_drop_path(influence, config, 0.05, prompt_tokens=20)
    assert (
        set(mlp_only) <= {1, 4} and mlp_only[6] == 4
    )  # the least influential droppable MLP (7 is protected)
    assert 1 - path_macs(config, mlp_only, 20)["fraction"] >= 0.05
