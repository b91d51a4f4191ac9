"""Routers with sublayer actions (``actions=5``): they may run a layer's MLP alone (3) or its attention alone
(4), and a routed pass runs exactly the paths they choose."""

import json

import pytest
import torch
from tiny_models import explicit_model, prompts, tiny_model

from drllm.router import RoutedModel, Routers
from drllm.router.relaxed import Relaxation, relaxed

PATH = [1, 3, 4, 0]


@pytest.mark.parametrize("kind", ["mlp", "linear", "shared", "static", "knn"])
def test_every_kind_gives_five_logits_and_round_trips(kind, tmp_path):
    routed = RoutedModel(tiny_model("llama"))
    routers = routed.add_routers(kind=kind, actions=5, examples=2 if kind == "knn" else 0)
    ids, mask = prompts(batch=2, length=6)
    hidden = torch.randn(2, 6, routed.hidden_size)
    assert routers(1, hidden, mask).shape == (2, 5)
    routed.save_pretrained(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "router_config.json").read_text())["actions"] == 5
    again = Routers.from_pretrained(tmp_path / "r")
    torch.testing.assert_close(again(1, hidden, mask), routers(1, hidden, mask))


def test_routers_choosing_units_equal_the_explicit_model_and_generate_the_same():
    model = tiny_model("llama")
    explicit = explicit_model(model, PATH)  # built from the plain model, before the wrapper
    routed = RoutedModel(model)
    routers = routed.add_routers(kind="static", actions=5)
    with torch.no_grad():
        routers.static.logits.copy_(torch.nn.functional.one_hot(torch.tensor(PATH), 5) * 4.0)
    ids, mask = prompts(batch=2, length=7)
    with torch.no_grad():
        out = routed(ids, attention_mask=mask).logits
        assert routed.last_decisions.tolist() == [PATH, PATH]
        ref = explicit(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    by_routers = routed.generate(ids, **kw)
    assert torch.equal(by_routers, routed.generate(ids, decisions=torch.tensor(PATH), **kw))


def test_input_conditioned_unit_decisions_per_row_run_as_decided():
    """Linear routers with large weights decide differently per row; each row runs what its routers chose."""
    routed = RoutedModel(tiny_model("llama"))
    routers = routed.add_routers(kind="linear", actions=5, seed=3)
    with torch.no_grad():
        for layer in routers.layers:
            layer.proj.weight.mul_(200.0)
    ids, mask = prompts(batch=3, length=8, pad_rows=2)
    with torch.no_grad():
        out = routed(ids, attention_mask=mask).logits
        chosen = routed.last_decisions.clone()
        assert (chosen >= 3).any(), "the routers chose a unit somewhere"
        fixed = routed(ids, attention_mask=mask, decisions=chosen).logits
    torch.testing.assert_close(out, fixed, atol=1e-5, rtol=0)
    kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(routed.generate(ids, **kw), routed.generate(ids, decisions=chosen, **kw))


def test_unit_actions_are_refused_where_they_do_not_apply(tmp_path):
    routed = RoutedModel(tiny_model("llama"))
    block = routed.add_routers(kind="linear")
    with pytest.raises(ValueError, match="default path must hold 4 values among 0, 1, 2, got"):
        block.set_default_path([1, 3, 1, 1])
    units = routed.add_routers(kind="linear", actions=5)
    units.set_default_path([1, 3, 4, 1], threshold=1.0)
    with pytest.raises(ValueError, match="train with the score-function estimator only"):
        with relaxed(routed, Relaxation(units)):  # straight-through, the default
            pass
    with pytest.raises(ValueError, match="actions must be 3 .* or 5 .*got 4"):
        routed.add_routers(kind="linear", actions=4)
    routed.save_pretrained(tmp_path / "r")
    config = json.loads((tmp_path / "r" / "router_config.json").read_text())
    (tmp_path / "r" / "router_config.json").write_text(json.dumps({**config, "actions": 4}))
    with pytest.raises(ValueError, match="actions must be 3 or 5, got 4"):
        Routers.from_pretrained(tmp_path / "r")


def test_the_budget_prices_a_unit_by_the_compute_it_saves():
    """Budget b adds b to skip and b * (1 - share) to a unit: a unit just below execute wins first."""
    from drllm.router.compute import unit_shares

    routed = RoutedModel(tiny_model("llama"))
    mlp, attention = unit_shares(routed.model.config)
    routers = routed.add_routers(kind="static", actions=5)
    with torch.no_grad():  # execute 1.0; skip 0.0; the MLP alone 0.9; the attention alone 0.9
        routers.static.logits.copy_(torch.tensor([0.0, 1.0, -9.0, 0.9, 0.9]).repeat(4, 1))
    ids = torch.tensor([[5, 6, 7]])
    cheaper = 3 if mlp < attention else 4  # the unit that saves more gains more from the budget
    for budget, want in ((0.0, 1), (0.2 / (1 - min(mlp, attention)), cheaper), (5.0, 0)):
        routed.budget = budget
        with torch.no_grad():
            routed(ids)
        assert routed.last_decisions[0].tolist() == [want] * 4, budget
