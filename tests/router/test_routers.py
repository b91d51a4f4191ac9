"""Routers: pooling, decisions made once at prefill, budget, save/load and refusal of mismatched files."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import prompts, tiny_model

from drllm.router import RoutedModel, Routers, UnsupportedArchitectureError, window_pool
from drllm.router.routers import CONFIG_NAME, WEIGHTS_NAME, RouterConfig


def _naive_pool(hidden, mask, w):
    rows, valid = [], []
    for b in range(hidden.shape[0]):
        real = hidden[b][mask[b].bool()]
        n = real.shape[0]
        k = min(w, n)
        means = [real[[r for r in range(n) if r * k // n == j]].mean(0) for j in range(k)]
        means += [torch.zeros(hidden.shape[-1])] * (w - k)
        rows.append(torch.stack(means))
        valid.append([True] * k + [False] * (w - k))
    return torch.stack(rows), torch.tensor(valid)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    windows=st.integers(1, 16),
    left=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_window_pool_matches_naive(lengths, windows, left, seed):
    g = torch.Generator().manual_seed(seed)
    t = max(lengths) + 2
    hidden = torch.randn(len(lengths), t, 5, generator=g)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, t - n :] = 1
        else:
            mask[b, :n] = 1
    pooled, valid = window_pool(hidden, mask, windows)
    ref, ref_valid = _naive_pool(hidden, mask, windows)
    assert torch.equal(valid, ref_valid)
    torch.testing.assert_close(pooled, ref, atol=1e-5, rtol=1e-5)


def test_window_pool_refuses_empty_rows_and_bad_shapes():
    with pytest.raises(ValueError, match="no real"):
        window_pool(torch.randn(2, 3, 4), torch.tensor([[1, 1, 1], [0, 0, 0]]), 2)
    with pytest.raises(ValueError, match=r"\[B, T, d\]"):
        window_pool(torch.randn(3, 4), None, 2)


def test_routers_decide_once_at_prefill_and_reuse_for_every_token():
    model = tiny_model("llama")
    routed = RoutedModel(model)
    routers = routed.add_routers(num_windows=3, bottleneck=8, seed=1)
    calls = []
    for r in routers.layers:
        r.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    ids, mask = prompts(batch=2, length=7)
    out = routed.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert len(calls) == routed.num_layers  # one router call per layer, at prefill only
    decided = routed.last_decisions.clone()
    # the same decisions, given explicitly, reproduce the generation exactly
    again = routed.generate(
        ids, attention_mask=mask, decisions=decided, max_new_tokens=5, do_sample=False, pad_token_id=0
    )
    assert torch.equal(out, again)
    assert torch.equal(routed.route(ids, mask), decided)


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3), windows=st.integers(1, 6))
def test_router_logits_follow_the_spec(lengths, windows):
    """Per valid window Linear -> GELU -> Linear, then the mean over the valid windows."""
    torch.manual_seed(sum(lengths) + windows)
    routers = Routers(RouterConfig(num_layers=1, hidden_size=6, num_windows=windows, bottleneck=5))
    width = max(lengths)
    hidden = torch.randn(len(lengths), width, 6)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    pooled, valid = _naive_pool(hidden, mask, windows)
    net = routers.layers[0].net
    naive = torch.stack([net(pooled[b][valid[b]]).mean(0) for b in range(len(lengths))])
    torch.testing.assert_close(routers(0, hidden, mask), naive, rtol=1e-5, atol=1e-6)


def test_router_decisions_depend_only_on_real_tokens():
    routed = RoutedModel(tiny_model("qwen3"))
    routed.add_routers(num_windows=4, bottleneck=8, seed=3)
    ids, mask = prompts(batch=3, length=9, pad_rows=2)
    batch = routed.route(ids, mask)
    for r in range(3):
        keep = mask[r].bool()
        assert torch.equal(routed.route(ids[r : r + 1, keep])[0], batch[r])


def test_budget_shifts_towards_skipping():
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=2, bottleneck=8)
    ids, mask = prompts()
    routed.budget = 100.0
    assert routed.route(ids, mask).eq(0).all()
    routed.budget = -100.0
    assert routed.route(ids, mask).ne(0).all()


def test_non_finite_router_logit_falls_back_to_execute():
    routed = RoutedModel(tiny_model("llama"))
    routers = routed.add_routers(num_windows=2, bottleneck=8)
    with torch.no_grad():
        routers.layers[1].net[2].bias.fill_(float("nan"))
    ids, mask = prompts()
    with pytest.warns(UserWarning, match="non-finite"):
        decisions = routed.route(ids, mask)
    assert decisions[:, 1].eq(1).all()


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model("llama")
    routed = RoutedModel(model)
    routed.add_routers(num_windows=3, bottleneck=8, seed=5)
    routed.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["num_layers"] == 4 and config["hidden_size"] == 32 and config["num_windows"] == 3
    assert config["bottleneck"] == 8 and config["fingerprint"].startswith("llama-L4-d32")
    ids, mask = prompts()
    expected = routed.route(ids, mask)
    other = RoutedModel.from_pretrained(routed.unwrap(), routers=tmp_path)
    assert torch.equal(other.route(ids, mask), expected)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: tiny_model("llama", num_hidden_layers=3), "layer count 4, this model has 3"),
        (
            lambda: tiny_model("llama", hidden_size=48, intermediate_size=64),
            "hidden size 32, this model has 48",
        ),
        (lambda: tiny_model("mistral"), "fingerprint llama-L4-d32-v96, this model has mistral-L4-d32-v96"),
        (lambda: tiny_model("llama", seed=7), "trained on other weights"),
    ],
)
def test_loading_routers_into_another_model_is_refused(tmp_path, make, message):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=3, bottleneck=8)
    routed.save_pretrained(tmp_path)
    other = RoutedModel(make())
    with pytest.raises(ValueError, match=message):
        other.load_routers(tmp_path)
    assert other.routers is None


@pytest.mark.parametrize("field", ["fingerprint", "weight_probe"])
def test_router_files_without_a_fingerprint_are_refused(tmp_path, field):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=3, bottleneck=8)
    routed.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    del config[field]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    fresh = RoutedModel(routed.unwrap())
    with pytest.raises(ValueError, match="no base-model fingerprint"):
        fresh.load_routers(tmp_path)
    assert fresh.routers is None


def test_router_files_must_be_safetensors(tmp_path):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=3, bottleneck=8)
    routed.save_pretrained(tmp_path)
    torch.save(routed.routers.state_dict(), tmp_path / WEIGHTS_NAME)  # a pickle under the safetensors name
    with pytest.raises(ValueError, match="not a valid safetensors"):
        Routers.from_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        Routers.from_pretrained(tmp_path)


def test_config_that_does_not_match_the_weights_is_refused(tmp_path):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=3, bottleneck=8)
    routed.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["bottleneck"] = 16
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        Routers.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("decisions", "message"),
    [
        ([1, 1, 1], "decisions has 3 columns, the model has 4 layers"),
        ([1, 1, 5, 1], r"got values \[5\]"),  # 3 and 4 are sublayer units (test_units)
        ([[1, 1, 1, 1]] * 2, "decisions has 2 rows, the input batch has 3 rows"),
        ([1.5, 1, 1, 1], "non-integer"),
    ],
)
def test_bad_decisions_are_refused(decisions, message):
    routed = RoutedModel(tiny_model("llama"))
    ids, mask = prompts()
    with pytest.raises(ValueError, match=message):
        routed(ids, attention_mask=mask, decisions=decisions)


def test_bad_prompts_are_refused():
    routed = RoutedModel(tiny_model("llama"))
    with pytest.raises(ValueError, match="empty"):
        routed(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="context is 128 tokens"):
        routed(torch.ones(1, 129, dtype=torch.long))


def test_unknown_architecture_lists_supported_ones():
    from transformers import BertConfig, BertLMHeadModel

    model = BertLMHeadModel(
        BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, is_decoder=True
        )
    )
    with pytest.raises(UnsupportedArchitectureError, match="gpt2, gpt_neox, llama"):
        RoutedModel(model)


def test_wrapping_twice_is_refused():
    routed = RoutedModel(tiny_model("llama"))
    with pytest.raises(ValueError, match="already wrapped"):
        RoutedModel(routed.model)


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.integers(-2, 4), min_size=0, max_size=7), rows=st.integers(1, 3))
def test_check_decisions_accepts_exactly_valid_vectors(values, rows):
    from drllm.router import check_decisions

    valid = len(values) == 4 and all(v in (0, 1, 2) for v in values)
    try:
        out = check_decisions(values, 4, batch_size=rows)
    except ValueError as err:
        assert not valid
        assert "columns" in str(err) or "values" in str(err) or "shape" in str(err)
        return
    assert valid and out.shape == (rows, 4) and out.dtype == torch.long
    assert out.sum(-1).tolist() == [sum(values)] * rows


def test_bool_decisions_are_refused_naming_the_dtype():
    routed = RoutedModel(tiny_model("llama"))
    ids = torch.tensor([[3, 4, 5]])
    for decisions in (torch.tensor([True, True, False, True]), [True, True, False, True]):
        with pytest.raises(ValueError, match="dtype torch.bool"), routed.forced(decisions=decisions):
            pass
        with pytest.raises(ValueError, match="dtype torch.bool"):
            routed(ids, decisions=decisions)


STATIC = [1, 0, 2, 1]


def _routed_with_routers(seed=2):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=2, bottleneck=8, seed=seed)
    with torch.no_grad():  # confident, varied routers: every decision has a real margin
        for r in routed.routers.layers:
            r.net[2].weight.mul_(20.0)
    return routed


def test_a_default_path_with_threshold_one_runs_the_static_path_exactly():
    routed = _routed_with_routers()
    ids, mask = prompts(batch=3, length=8)
    routed.routers.set_default_path(STATIC, threshold=1.0, protected=())
    assert routed.route(ids, mask).eq(torch.tensor(STATIC)).all()
    with torch.no_grad():
        static = routed(ids, attention_mask=mask, decisions=STATIC).logits
        torch.testing.assert_close(routed(ids, attention_mask=mask).logits, static, rtol=0, atol=0)
    routed.budget = 50.0  # skip-more cannot move a router past threshold 1
    assert routed.route(ids, mask).eq(torch.tensor(STATIC)).all()


def test_threshold_zero_is_plain_argmax_and_deviations_shrink_as_it_grows():
    routed = _routed_with_routers()
    ids, mask = prompts(batch=4, length=8, pad_rows=2)
    plain = routed.route(ids, mask)
    routed.routers.set_default_path([1] * 4, threshold=0.0, protected=())
    assert torch.equal(routed.route(ids, mask), plain)
    deviations = []
    for t in (0.0, 0.2, 0.5, 0.8, 0.99, 1.0):
        routed.routers.set_default_path([1] * 4, threshold=t, protected=())
        deviations.append(int(routed.route(ids, mask).ne(1).sum()))
    assert deviations == sorted(deviations, reverse=True) and deviations[-1] == 0 < deviations[0]


def test_protected_layers_keep_the_default_whatever_the_budget():
    routed = _routed_with_routers()
    ids, mask = prompts()
    routed.routers.set_default_path(STATIC, threshold=0.0, protected=(0, -1))
    routed.budget = 100.0
    decided = routed.route(ids, mask)
    assert decided[:, 0].eq(STATIC[0]).all() and decided[:, 3].eq(STATIC[3]).all()
    assert decided[:, 1:3].eq(0).all()
    routed.routers.set_default_path(None, protected=(1,))  # plain argmax: a protected layer executes
    assert routed.route(ids, mask)[:, 1].eq(1).all()


def test_a_default_path_survives_save_and_load_and_bad_ones_are_refused(tmp_path):
    routed = _routed_with_routers()
    routed.routers.set_default_path(STATIC, threshold=0.3)
    routed.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert saved["default_path"] == STATIC and saved["threshold"] == 0.3 and saved["protected"] == [0, 1, 3]
    ids, mask = prompts()
    expected = routed.route(ids, mask)
    other = RoutedModel.from_pretrained(routed.unwrap(), routers=tmp_path)
    assert torch.equal(other.route(ids, mask), expected)
    routers = other.routers
    for kwargs, message in [
        ({"path": [1, 1, 1]}, "default path must hold 4 values among 0, 1, 2, got"),
        ({"path": [1, 3, 1, 1]}, "default path must hold 4 values"),
        ({"path": [1, True, 1, 1]}, "default path must hold 4 values"),
        ({"path": STATIC, "threshold": 1.5}, r"threshold must lie in \[0, 1\], got 1.5"),
        ({"path": STATIC, "threshold": float("nan")}, "threshold must lie in"),
        ({"path": STATIC, "protected": (4,)}, "protected layer 4 does not exist in a 4-layer model"),
    ]:
        with pytest.raises(ValueError, match=message):
            routers.set_default_path(**kwargs)
    for key, value, message in [
        ("threshold", 2, "threshold must lie in"),
        ("default_path", [1, 1], "default path must hold 4 values"),
        ("protected", [3, 0], "protected layers must be sorted"),
    ]:
        (tmp_path / CONFIG_NAME).write_text(json.dumps({**saved, key: value}))
        with pytest.raises(ValueError, match=f"{CONFIG_NAME}: {message}"):
            Routers.from_pretrained(tmp_path)
