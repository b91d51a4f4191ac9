"""Fitting stand-ins: the streamed closed form equals least squares on the recorded states."""

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import RoutedModel, all_execute, batch_prompts
from drllm.search.stand_ins import fit_linear_stand_ins, fit_repeat_scales

PROMPTS = [
    f"the {w} is number {k} of {k * 7 % 13} here" for k, w in enumerate(["cat", "dog", "sun", "sky"] * 5)
]


def _setup(hidden=32):
    routed = RoutedModel(tiny_model("llama", hidden_size=hidden, intermediate_size=2 * hidden))
    return routed, tiny_tokenizer()


def _recorded(routed, tok, decisions, layer):
    ids, mask = batch_prompts(tok, PROMPTS)
    with routed.recording() as states:
        routed.backbone(ids, mask, torch.tensor(decisions))
    keep = mask.bool()
    return [s[keep].double() for s in states], layer


def _lstsq(x, y):
    xs = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return torch.linalg.lstsq(xs, y - x).solution


@torch.no_grad()
def test_maps_along_a_path_are_least_squares_with_earlier_maps_in_place():
    routed, tok = _setup()
    path = [1, 0, 0, 1]
    stand_ins = fit_linear_stand_ins(routed, tok, PROMPTS, path, ridge=0.0, batch_size=7)
    assert stand_ins.mapped == [1, 2] and routed.stand_ins is None  # fitted, not attached
    full, _ = _recorded(routed, tok, all_execute(4).tolist(), None)
    routed.set_stand_ins(stand_ins)
    along, _ = _recorded(routed, tok, path, None)  # state entering layer 1, then layer 2 (after map 1)
    for i in (1, 2):
        w = _lstsq(along[i], full[i + 1])
        torch.testing.assert_close(
            stand_ins.down_1 if i == 1 else stand_ins.down_2, w[:-1].float(), atol=2e-3, rtol=2e-3
        )
    # the map's output is closer to the full model's state than a plain skip (zero map is feasible)
    after_map = stand_ins.apply(1, along[1].float()).double()
    assert (after_map - full[2]).pow(2).sum() < (along[1] - full[2]).pow(2).sum()


@torch.no_grad()
def test_low_rank_lies_between_zero_and_full_rank():
    routed, tok = _setup()
    path = [1, 1, 0, 1]
    errors = {}
    for rank in (None, 4, 1):
        stand_ins = fit_linear_stand_ins(routed, tok, PROMPTS, path, rank=rank, ridge=0.0)
        full, _ = _recorded(routed, tok, all_execute(4).tolist(), None)
        x = _recorded(routed, tok, path, None)[0][2]
        errors[rank] = float((stand_ins.apply(2, x.float()).double() - full[3]).pow(2).sum())
        if rank:
            up = stand_ins.up_2
            torch.testing.assert_close(up @ up.T, torch.eye(rank), atol=1e-4, rtol=0)  # orthonormal rows
    plain = float((x - full[3]).pow(2).sum())
    assert errors[None] <= errors[4] <= errors[1] <= plain


@torch.no_grad()
def test_without_a_path_every_unprotected_layer_is_fitted_on_the_full_model():
    routed, tok = _setup()
    stand_ins = fit_linear_stand_ins(routed, tok, PROMPTS, None, ridge=0.0, protected=(0, -1))
    assert stand_ins.mapped == [1, 2]
    full, _ = _recorded(routed, tok, all_execute(4).tolist(), None)
    w = _lstsq(full[2], full[3])
    torch.testing.assert_close(stand_ins.bias_2, w[-1].float(), atol=2e-3, rtol=2e-3)
    assert stand_ins.info["fitted_on"]["path"] is None and stand_ins.info["fitted_on"]["tokens"] > 32


def test_bad_fits_are_refused():
    routed, tok = _setup()
    with pytest.raises(ValueError, match="calibration prompts, got none"):
        fit_linear_stand_ins(routed, tok, [], [1, 0, 1, 1])
    with pytest.raises(ValueError, match="calibration tokens for maps of 32 inputs"):
        fit_linear_stand_ins(routed, tok, ["ab"], [1, 0, 1, 1])
    for ridge in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
            fit_linear_stand_ins(routed, tok, PROMPTS, [1, 0, 1, 1], ridge=ridge)
    with pytest.raises(ValueError, match="protected layers must lie in -4..3"):
        fit_linear_stand_ins(routed, tok, PROMPTS, None, protected=(10,))
    with pytest.raises(ValueError, match=r"repeat scales must lie in \[0, 1\]"):
        fit_repeat_scales(routed, tok, PROMPTS, [1, 2, 1, 1], grid=(0.5, 2.0))


@torch.no_grad()
def test_repeat_scales_take_the_grid_value_with_the_lowest_lm_loss():
    routed, tok = _setup()
    stand_ins = fit_repeat_scales(routed, tok, PROMPTS, [1, 2, 1, 2], grid=(0.0, 0.5, 1.0))
    losses = stand_ins.info["repeat_fit"]["lm_loss"]
    assert set(losses) == {"1", "3"} and stand_ins.repeat_scale[0] == 1.0 and routed.stand_ins is None
    for i, tried in losses.items():
        best = min(tried, key=tried.get)
        assert float(stand_ins.repeat_scale[int(i)]) == best
