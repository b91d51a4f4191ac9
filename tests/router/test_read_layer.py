"""``read_layer``: every router reads one layer's input and all decide there, in one call per prompt."""

import json

import pytest
import torch
from tiny_models import prompts, tiny_model

from drllm.router import RoutedModel, Routers
from drllm.router.decisions import EXECUTE
from drllm.router.routers import CONFIG_NAME, RouterConfig

KINDS = ("mlp", "linear", "shared", "knn")


def one_shot(arch: str, kind: str, read: int, seed: int = 1) -> RoutedModel:
    routed = RoutedModel(tiny_model(arch))
    routers = routed.add_routers(
        num_windows=3, bottleneck=8, seed=seed, kind=kind, examples=6 if kind == "knn" else 0, read_layer=read
    )
    if kind == "knn":  # remember 6 random prompts with random target tables
        g = torch.Generator().manual_seed(seed)
        L, d = routed.num_layers, routed.hidden_size
        routers.fit_neighbours(
            torch.randn(6, L, 3, d, generator=g),
            torch.ones(6, L, 3, dtype=torch.bool),
            torch.rand(6, L, 3, generator=g),
        )
    return routed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_call_decides_every_layer_as_training_sees_it(arch, kind, monkeypatch):
    routed = one_shot(arch, kind, read=1)
    routers, L = routed.routers, routed.num_layers
    calls = {"forward": 0, "forward_all": 0}
    for name in calls:
        original = getattr(Routers, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Routers, name, counted)
    ids, mask = prompts()
    for budget in (-2.0, 0.0, 2.0):
        routed.budget = budget
        decisions = routed.route(ids, mask)
        assert (decisions[:, 0] == EXECUTE).all(), "the layer before read_layer keeps the default"
        pooled, valid = routed.layer_inputs(ids, mask, decisions=decisions)
        logits = routers.forward_pooled(pooled, valid)
        logits[..., 0] += budget
        assert torch.equal(logits.argmax(-1)[:, 1:], decisions[:, 1:]), (arch, kind, budget)
    assert calls == {"forward": 0, "forward_all": 3}, "one router call per prompt, none per layer"
    assert L > 2


@pytest.mark.parametrize("kind", KINDS)
def test_forward_pooled_reads_only_the_read_layer(kind):
    routed = one_shot("llama", kind, read=2)
    ids, mask = prompts()
    pooled, valid = routed.layer_inputs(ids, mask)
    logits = routed.routers.forward_pooled(pooled, valid)
    assert logits.shape == (3, routed.num_layers, 3)
    torch.testing.assert_close(routed.routers.forward_pooled(pooled[:, 2:3], valid[:, 2:3]), logits)
    other = pooled.clone()
    other[:, [0, 1, 3]] = torch.randn_like(other[:, [0, 1, 3]])
    torch.testing.assert_close(routed.routers.forward_pooled(other, valid), logits)
    # the same as per-layer routers all reading layer 2
    routed.routers.config.read_layer = None
    copied = pooled[:, 2:3].expand_as(pooled).contiguous()
    torch.testing.assert_close(routed.routers.forward_pooled(copied, valid[:, 2:3].expand_as(valid)), logits)


def test_layers_before_read_layer_follow_the_default_path_and_generate_agrees():
    routed = one_shot("llama", "shared", read=2)
    L = routed.num_layers
    path = [0, 2] + [1] * (L - 2)
    routed.routers.set_default_path(path, threshold=0.0, protected=())
    ids, mask = prompts()
    decisions = routed.route(ids, mask)
    assert decisions[:, :2].tolist() == [[0, 2]] * 3
    out = routed.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + 3
    assert torch.equal(routed.last_decisions, decisions)


def test_read_layer_is_saved_checked_and_refused_when_out_of_range(tmp_path):
    routed = one_shot("llama", "linear", read=1)
    routed.save_pretrained(tmp_path)
    other = RoutedModel.from_pretrained(tiny_model("llama"), routers=tmp_path)
    assert other.routers.config.read_layer == 1
    ids, mask = prompts()
    assert torch.equal(other.route(ids, mask), routed.route(ids, mask))
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    L = config["num_layers"]
    for value, message in [
        (L, "read_layer must be null or a layer"),
        (True, "read_layer must"),
        (2, "does not match"),
    ]:
        (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "read_layer": value}))
        with pytest.raises(ValueError, match=message):
            Routers.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"read_layer must be None or a layer in \[0, 4\)"):
        Routers(RouterConfig(num_layers=4, hidden_size=8, read_layer=4))
