"""Router heads (mlp, linear, shared): normalised, first-token-free inputs; routing equals training."""

import json

import pytest
import torch
from tiny_models import ARCHITECTURES, prompts, tiny_model

from drllm.router import RoutedModel, Routers
from drllm.router.pooling import pooling_mask
from drllm.router.routers import CONFIG_NAME, RouterConfig
from drllm.router.surgery import NORM_PATHS, _resolve, final_norm_scale

KINDS = ("mlp", "linear", "shared")


def test_pooling_mask_drops_each_rows_first_real_token_unless_it_is_alone():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 0, 0, 0]])
    dropped = pooling_mask(mask, 4, 5, skip_first=True)
    expected = [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 1], [0, 1, 0, 0, 0]]
    assert dropped.long().tolist() == expected
    assert pooling_mask(mask, 4, 5, skip_first=False) is mask
    assert pooling_mask(None, 2, 3, skip_first=True).long().tolist() == [[0, 1, 1]] * 2


@pytest.mark.parametrize("kind", ["linear", "shared"])
def test_normalised_heads_ignore_the_first_token_and_the_scale_of_their_input(kind):
    torch.manual_seed(0)
    config = RouterConfig(num_layers=3, hidden_size=16, num_windows=2, bottleneck=8, kind=kind)
    config.norm = config.skip_first = True
    routers = Routers(config)
    routers.norm_scale.copy_(torch.rand(16) + 0.5)
    hidden = torch.randn(2, 6, 16)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    logits = routers(1, hidden, mask)
    louder = hidden.clone()
    louder[0, 1] *= 1000.0  # row 0's first real token (the attention sink)
    louder[1, 0] *= -50.0
    torch.testing.assert_close(routers(1, louder, mask), logits)
    torch.testing.assert_close(routers(1, hidden * 37.0, mask), logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(routers(2, hidden, mask), logits), "layers have their own routers"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_final_norm_scale_is_the_gain_of_the_models_own_final_norm(arch):
    model = tiny_model(arch)
    norm = _resolve(model, NORM_PATHS[model.config.model_type])
    with torch.no_grad():  # give the norm a gain (and a bias, where it has one) that is not the default
        for p in norm.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (0.0 if p.dim() == 1 and p is not norm.weight else 1.0))
    d = model.config.hidden_size
    gain = final_norm_scale(model, d)
    x = torch.randn(5, d)
    x = x - x.mean(-1, keepdim=True)  # centred: LayerNorm and RMSNorm normalise it alike
    with torch.no_grad():
        odd = (norm(x) - norm(-x)) / 2  # the norm without its bias
    rms = x.pow(2).mean(-1, keepdim=True).add(getattr(norm, "variance_epsilon", 1e-5)).sqrt()
    torch.testing.assert_close(odd, gain * x / rms, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_routed_decisions_equal_the_training_view_of_the_same_path(arch, kind):
    """What a router reads while routing equals the teacher-forced features it is trained on."""
    routed = RoutedModel(tiny_model(arch))
    routers = routed.add_routers(num_windows=3, bottleneck=8, seed=1, kind=kind)
    assert (routers.config.norm, routers.config.skip_first) == ((kind != "mlp"),) * 2
    ids, mask = prompts()
    for budget in (-2.0, 0.0, 2.0):
        routed.budget = budget
        decisions = routed.route(ids, mask)
        pooled, valid = routed.layer_inputs(ids, mask, decisions=decisions)
        logits = routers.forward_pooled(pooled, valid)
        logits[..., 0] += budget
        assert torch.equal(logits.argmax(-1), decisions), (arch, kind, budget)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_survives_save_and_load(tmp_path, kind):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=2, bottleneck=8, seed=3, kind=kind)
    routed.save_pretrained(tmp_path)
    ids, mask = prompts()
    pooled, valid = routed.layer_inputs(ids, mask)
    expected = routed.routers.forward_pooled(pooled, valid)
    other = RoutedModel.from_pretrained(tiny_model("llama"), routers=tmp_path)
    assert other.routers.config.kind == kind
    torch.testing.assert_close(other.routers.forward_pooled(pooled, valid), expected)
    assert torch.equal(other.route(ids, mask), routed.route(ids, mask))


def test_a_kind_edited_after_saving_or_unknown_is_refused(tmp_path):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=2, bottleneck=8, kind="linear")
    routed.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    for key, value, message in [
        ("kind", "mlp", "does not match"),
        ("kind", "conv", "kind must be one of"),
        ("norm", "yes", "norm must be true or false"),
        (
            "skip_first",
            False,
            "skip_first is False in the config, the weights were saved with skip_first True",
        ),
    ]:
        (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=message):
            Routers.from_pretrained(tmp_path)


def test_linear_and_shared_routers_are_small():
    routed = RoutedModel(tiny_model("llama"))
    sizes = {k: sum(p.numel() for p in routed.add_routers(bottleneck=8, kind=k).parameters()) for k in KINDS}
    d, L = routed.hidden_size, routed.num_layers
    assert sizes["linear"] == L * 3 * (d + 1)
    assert sizes["shared"] == d * 8 + 8 + L * 8 + 8 * 3 + 3
    assert sizes["mlp"] == L * (d * 8 + 8 + 8 * 3 + 3)
