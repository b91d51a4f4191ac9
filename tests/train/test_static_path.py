"""``fit_static_path``: a KL-trained static path over blocks or sublayer units at a multiply-add budget."""

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import RoutedModel, path_macs
from drllm.search.closeness import path_kl
from drllm.search.teacher import Prompt, build_teacher
from drllm.train.static_path import BLOCK_ACTIONS, UNIT_ACTIONS, PathSettings, action_costs, fit_static_path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    routed = RoutedModel(tiny_model("llama", num_hidden_layers=8))
    tok = tiny_tokenizer()
    prompts = [Prompt(f"p{k}", "t", f"count {k} then {k + 1} and") for k in range(12)]
    rows = build_teacher(routed, tok, prompts, tmp_path_factory.mktemp("teacher"), tokens=4, progress=False)
    return routed, rows, tok.pad_token_id or 0


@pytest.mark.parametrize("actions", [BLOCK_ACTIONS, UNIT_ACTIONS])
def test_the_deployed_path_meets_the_budget_and_is_what_val_kl_measures(setup, actions):
    routed, rows, pad = setup
    start = (1, 1, 1, 1, 1, 0, 0, 1)
    settings = PathSettings(0.75, actions, epochs=2, batch_size=4)
    path, history = fit_static_path(routed, rows[:8], rows[8:], settings, pad, start)
    assert len(path) == 8 and set(path) <= set(actions)
    assert path[0] == path[1] == path[-1] == 1  # protected
    tokens = round(sum(len(r["prompt_ids"]) for r in rows[:8]) / 8)
    compute = path_macs(routed.config, path, tokens)["fraction"]
    assert compute <= 0.75 + 1e-6 and history[-1]["compute"] == pytest.approx(compute)
    if actions == BLOCK_ACTIONS:
        assert compute == pytest.approx(0.75)  # blocks cost alike: exactly 6 of 8 layers
    assert history[-1]["val_kl"] == pytest.approx(sum(path_kl(routed, rows[8:], path, 4, pad)) / 4, rel=1e-4)
    again, _ = fit_static_path(routed, rows[:8], rows[8:], settings, pad, start)
    assert again == path  # seeded


def test_costs_and_refusals(setup):
    routed, rows, pad = setup
    costs = action_costs(routed.config, 8, UNIT_ACTIONS, 10)
    assert costs[:, 0].eq(0).all() and costs[:, 1].sum() == pytest.approx(8.0)
    assert torch.allclose(costs[:, 2] + costs[:, 3], costs[:, 1])  # MLP alone + attention alone = block
    with pytest.raises(ValueError, match="target_compute must lie in"):
        fit_static_path(routed, rows, [], PathSettings(1.0), pad, (1,) * 8)
    with pytest.raises(ValueError, match="actions must include skip and execute"):
        fit_static_path(routed, rows, [], PathSettings(0.5, (1, 3)), pad, (1,) * 8)
    with pytest.raises(ValueError, match="start path"):
        fit_static_path(routed, rows, [], PathSettings(0.5), pad, (1, 3, 1, 1, 1, 1, 1, 1))


def test_greedy_kl_path_takes_the_best_single_skip_each_round(setup):
    from drllm.search.closeness import greedy_kl_path

    routed, rows, pad = setup
    fixed = [0, 1, 7]
    path, trace = greedy_kl_path(routed, rows, 6, fixed, 4, pad)
    assert sum(path) == 6 and all(path[i] == 1 for i in fixed) and len(trace) == 2
    singles = {
        i: sum(path_kl(routed, rows, [0 if k == i else 1 for k in range(8)], 4, pad)) / 12
        for i in range(2, 7)
    }
    first = min(singles, key=lambda i: (singles[i], i))
    assert path[first] == 0 and trace[0] == pytest.approx(singles[first], rel=1e-5)
    assert trace[1] == pytest.approx(sum(path_kl(routed, rows, path, 4, pad)) / 12, rel=1e-5)
