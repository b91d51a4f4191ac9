"""Relaxed routing: the forward value is the hard path's, and the gradient reaches the routers."""

import pytest
import torch
from tiny_models import ARCHITECTURES, prompts, tiny_model

from drllm.router import Relaxation, RoutedModel, relaxed


def _static(routed, path, margin=5.0):
    routers = routed.add_routers(kind="static")
    with torch.no_grad():
        for i, d in enumerate(path):
            routers.static.logits[i] = torch.full((3,), -margin)
            routers.static.logits[i, d] = margin
    return routers


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_relaxed_forward_equals_hard_path_and_has_gradient(arch):
    routed = RoutedModel(tiny_model(arch))
    routed.model.requires_grad_(False)
    path = [1, 0, 1, 1]
    routers = _static(routed, path)
    ids, mask = prompts()
    with torch.no_grad():
        ref = routed.lm_logits(routed.backbone(ids, mask, torch.tensor(path)))
    relaxation = Relaxation(routers, tau=0.5, fixed=[0])
    with relaxed(routed, relaxation):
        out = routed.lm_logits(routed.backbone(ids, mask))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert relaxation.decisions().tolist() == [path] * ids.shape[0]
    assert relaxation.layers().tolist() == [3.0] * ids.shape[0]
    out.float().pow(2).mean().backward()
    grad = routers.static.logits.grad
    assert grad is not None and grad[1:].abs().sum() > 0  # the fixed layer 0 gets none
    assert grad[0].abs().sum() == 0


def test_mixed_rows_match_each_row_alone_and_repeats_count_two():
    routed = RoutedModel(tiny_model("llama"))
    routed.model.requires_grad_(False)
    routers = routed.add_routers(kind="linear", seed=3)
    ids, mask = prompts(batch=4)
    relaxation = Relaxation(routers, tau=1.0, allow_repeat=True, generator=torch.Generator().manual_seed(0))
    with relaxed(routed, relaxation), torch.no_grad():
        out = routed.lm_logits(routed.backbone(ids, mask))
    decisions = relaxation.decisions()
    assert torch.equal(relaxation.layers(), decisions.sum(1).float())
    with torch.no_grad():
        ref = routed.lm_logits(routed.backbone(ids, mask, decisions))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_relaxed_refuses_foreign_routers_bad_tau_and_a_cache():
    routed = RoutedModel(tiny_model("llama"))
    other = RoutedModel(tiny_model("llama")).add_routers(kind="static")
    with pytest.raises(ValueError, match="temperature"):
        Relaxation(other, tau=0)
    with pytest.raises(ValueError, match="own routers"), relaxed(routed, Relaxation(other)):
        pass
    routers = routed.add_routers(kind="static")
    ids, mask = prompts()
    with pytest.raises(ValueError, match="without a KV cache"), relaxed(routed, Relaxation(routers)):
        routed(ids, mask, use_cache=True)


def test_deployed_layers_count_the_argmax_path_not_the_noisy_sample():
    routed = RoutedModel(tiny_model("llama"))
    routers = _static(routed, [1, 0, 1, 1], margin=0.01)  # a sample flips often at so small a margin
    ids, mask = prompts(batch=8)
    relaxation = Relaxation(routers, tau=1.0, generator=torch.Generator().manual_seed(0))
    with relaxed(routed, relaxation), torch.no_grad():
        routed.backbone(ids, mask)
    assert relaxation.deployed_layers().tolist() == [3.0] * 8
    assert relaxation.layers().tolist() != [3.0] * 8  # the sample itself did flip some
