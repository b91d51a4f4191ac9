"""Fitting unit stand-ins: least squares of a unit's output on its input, over the full model's tokens."""

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import RoutedModel, all_execute, batch_prompts, layer_list
from drllm.search.stand_ins import fit_linear_stand_ins
from drllm.search.unit_stand_ins import fit_unit_stand_ins, units_to_fit

PROMPTS = [
    f"the {w} is number {k} of {k * 7 % 13} here" for k, w in enumerate(["cat", "dog", "sun", "sky"] * 5)
]
UNITS = [("attention", i) for i in range(4)] + [("mlp", i) for i in range(4)]


def _setup(model=None):
    return RoutedModel(model if model is not None else tiny_model("llama")), tiny_tokenizer()


@torch.no_grad()
def _recorded(routed, tok, units):
    """Every unit's input and output over every real token of ``PROMPTS`` (float64)."""
    ids, mask = batch_prompts(tok, PROMPTS)
    seen = {}
    with routed.watching_units(units, lambda key, x, y: seen.__setitem__(key, (x, y))):
        routed.backbone(ids, mask, all_execute(routed.num_layers))
    keep = mask.bool()
    return {key: (x[keep].double(), y[keep].double()) for key, (x, y) in seen.items()}


@torch.no_grad()
def test_unit_maps_are_least_squares_and_beat_a_plain_switch_off():
    routed, tok = _setup()
    stand_ins = fit_unit_stand_ins(routed, tok, PROMPTS, ridge=0.0, batch_size=7)
    assert stand_ins.unit_mapped == {"attention": [0, 1, 2, 3], "mlp": [0, 1, 2, 3]} and not stand_ins.mapped
    assert routed.stand_ins is None  # fitted, not attached
    recorded = _recorded(routed, tok, UNITS)
    for (unit, i), (x, y) in recorded.items():
        xs = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        best = xs @ torch.linalg.lstsq(xs, y).solution  # least squares (its weights need not be unique)
        fitted = stand_ins.apply_unit(unit, i, x.float()).double()
        torch.testing.assert_close(fitted, best, atol=2e-3, rtol=2e-3)
        assert (fitted - y).pow(2).mean() < 0.9 * y.pow(2).mean(), (unit, i)  # better than zeros
    fit = stand_ins.info["unit_fit"]
    assert fit["path"] is None and fit["tokens"] == sum(len(p) for p in PROMPTS) and fit["ridge"] == 0.0


class ExactMLP(torch.nn.Module):
    """A linear MLP (its class name ends in MLP, so drllm takes it for the layer's MLP)."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = torch.nn.Parameter(weight), torch.nn.Parameter(bias)

    def forward(self, x):
        return x @ self.weight + self.bias


class ExactAttention(ExactMLP):
    """A linear attention: each position alone, returning ``(output, weights)`` as HF attentions do."""

    def forward(self, hidden_states, *args, **kwargs):
        return super().forward(hidden_states), None


def _linear_units(rank=None, seed=0):
    """A tiny llama whose MLP of layer 1 and attention of layer 2 are linear maps (of rank ``rank``)."""
    g = torch.Generator().manual_seed(seed)
    model, d = tiny_model("llama"), 32
    maps = {}
    for unit, i in (("mlp", 1), ("attention", 2)):
        r = rank or d
        u, v = torch.randn(d, r, generator=g) / d**0.5, torch.randn(r, d, generator=g) / r**0.5
        weight, bias = u @ v, 0.1 * torch.randn(r, generator=g) @ v  # the bias in the row space of the map
        maps[unit, i] = (weight, bias)
        cls, name = (ExactMLP, "mlp") if unit == "mlp" else (ExactAttention, "self_attn")
        setattr(layer_list(model)[i], name, cls(weight, bias))
    return model, maps


@pytest.mark.parametrize("rank", [None, 3])
@torch.no_grad()
def test_linear_units_are_recovered_and_their_maps_run_the_full_model(rank):
    model, maps = _linear_units(rank)
    routed, tok = _setup(model)
    path = [1, 4, 3, 1]  # the MLP of layer 1 and the attention of layer 2 off: both linear
    stand_ins = fit_unit_stand_ins(routed, tok, PROMPTS, path, rank=rank, ridge=0.0)
    assert stand_ins.unit_mapped == {"attention": [2], "mlp": [1]} and stand_ins.rank == rank
    for (unit, i), (weight, bias) in maps.items():
        down = getattr(stand_ins, f"{unit}_down_{i}")
        full = down if rank is None else down @ getattr(stand_ins, f"{unit}_up_{i}")
        torch.testing.assert_close(full, weight, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(getattr(stand_ins, f"{unit}_bias_{i}"), bias, atol=1e-3, rtol=1e-3)
    ids, mask = batch_prompts(tok, PROMPTS[:4])
    reference = routed(ids, attention_mask=mask).logits
    switched_off = routed(ids, attention_mask=mask, decisions=path).logits
    routed.set_stand_ins(stand_ins)
    for use_cache in (False, True):
        out = routed(ids, attention_mask=mask, decisions=path, use_cache=use_cache).logits
        torch.testing.assert_close(out, reference, atol=1e-3, rtol=0)
    assert (switched_off - reference).abs().max() > 1e-2  # without the maps the path differs


@torch.no_grad()
def test_block_maps_of_a_unit_path_are_fitted_with_the_unit_maps_in_place():
    routed, tok = _setup()
    path = [1, 3, 0, 4]
    stand_ins = fit_unit_stand_ins(routed, tok, PROMPTS, path, rank=4)
    assert stand_ins.info["unit_fit"]["units"] == [["attention", 1], ["mlp", 3]]
    both = fit_linear_stand_ins(routed, tok, PROMPTS, path, stand_ins=stand_ins)
    assert both is stand_ins and both.mapped == [2] and both.unit_mapped == {"attention": [1], "mlp": [3]}
    assert both.up_2.shape == (4, 32) and "unit_fit" in both.info and "fitted_on" in both.info
    # the block map was fitted on the states the path reaches with the unit map of layer 1 in place
    routed.set_stand_ins(both)
    with routed.recording() as states:
        routed.backbone(*batch_prompts(tok, PROMPTS), torch.tensor(path))
    routed.set_stand_ins(None)
    with routed.recording() as plain:
        routed.backbone(*batch_prompts(tok, PROMPTS), torch.tensor(path))
    assert not torch.allclose(states[2], plain[2])


def test_units_to_fit_and_bad_fits_are_refused():
    assert units_to_fit([1, 3, 0, 4], 4) == [("attention", 1), ("mlp", 3)]
    assert units_to_fit(None, 4, protected=(0, -1)) == [
        ("attention", 1),
        ("mlp", 1),
        ("attention", 2),
        ("mlp", 2),
    ]
    routed, tok = _setup()
    with pytest.raises(ValueError, match="protected layers are for path=None"):
        fit_unit_stand_ins(routed, tok, PROMPTS, [1, 3, 1, 1], protected=(0,))
    with pytest.raises(ValueError, match="protected layers must lie in -4..3"):
        fit_unit_stand_ins(routed, tok, PROMPTS, protected=(4,))
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        fit_unit_stand_ins(routed, tok, PROMPTS, ridge=-1.0)
    with pytest.raises(ValueError, match="decisions must be 0 .* got values \\[7\\]"):
        fit_unit_stand_ins(routed, tok, PROMPTS, [1, 7, 1, 1])
    with pytest.raises(ValueError, match="calibration tokens for maps of 32 inputs"):
        fit_unit_stand_ins(routed, tok, PROMPTS[:1], [1, 3, 1, 1])
    with pytest.raises(ValueError, match="needs calibration prompts"):
        fit_unit_stand_ins(routed, tok, [], [1, 3, 1, 1])
    with pytest.raises(ValueError, match="rank 2 was asked for stand-ins of rank 4"):
        fit_unit_stand_ins(routed, tok, PROMPTS, [1, 3, 1, 1], rank=2, stand_ins=routed.new_stand_ins(4))
