"""Unit stand-ins: a switched-off attention or MLP returning a map of its input equals doing so by hand."""

import copy

import pytest
import torch
from tiny_models import ARCHITECTURES, ATTENTION_NAMES, assert_rows_generate_alone, prompts, tiny_model

from drllm.router import RoutedModel, layer_list, path_macs
from drllm.router.compute import block_macs
from drllm.router.stand_ins import StandIns

ATOL = 1e-5
# mixed rows: attention off (3), MLP off (4) and skips (0); unit maps on some of those units, not all
ROWS = torch.tensor([[3, 1, 4, 0], [4, 3, 0, 1], [1, 4, 3, 3]])
PATH = [3, 4, 0, 3]  # one path for every row: units switched off for the whole batch
UNIT_MAPS = [("attention", 0), ("attention", 1), ("attention", 3), ("mlp", 0), ("mlp", 1)]
BLOCK_MAPS = (2,)  # layer 3 skips plainly, the attention and the MLP of layer 2 are switched off plainly


def _maps(routed, rank=None, seed=0):
    """Stand-ins with small random unit maps (``UNIT_MAPS``) and block maps (``BLOCK_MAPS``)."""
    g = torch.Generator().manual_seed(seed)
    d, r = routed.hidden_size, rank or routed.hidden_size
    stand_ins = routed.new_stand_ins(rank)

    def draw():
        up = 0.2 * torch.randn(r, d, generator=g) if rank else None
        return 0.2 * torch.randn(d, r, generator=g), 0.1 * torch.randn(d, generator=g), up

    for unit, i in UNIT_MAPS:
        stand_ins.set_unit_map(unit, i, *draw())
    for i in BLOCK_MAPS:
        stand_ins.set_map(i, *draw())
    return stand_ins


def _by_hand(x, down, bias, up):
    out = x @ down
    return (out if up is None else out @ up) + bias


def _tensors(stand_ins, prefix, i):
    return tuple(getattr(stand_ins, f"{prefix}{n}_{i}", None) for n in ("down", "bias", "up"))


def _unit(layer, unit):
    if unit == "mlp":
        return layer.mlp
    return next(getattr(layer, n) for n in ATTENTION_NAMES if hasattr(layer, n))


def _explicit(model, rows, stand_ins):
    """A plain copy of ``model`` whose hooks put, per row, the maps (or zeros) in place of what it runs.

    Every layer runs for every row; a row's switched-off unit has its output replaced (its cache entries are
    never read by that row), a skipped row's layer output becomes the block stand-in of its input.
    """
    clone = copy.deepcopy(model)

    def replace(chosen, fn):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            first = output[0] if isinstance(output, tuple) else output
            new = torch.where(chosen.view(-1, 1, 1), fn(x), first)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    for i, layer in enumerate(layer_list(clone)):
        for unit, value in (("attention", 3), ("mlp", 4)):
            maps = _tensors(stand_ins, f"{unit}_", i)
            fn = torch.zeros_like if maps[0] is None else lambda x, m=maps: _by_hand(x, *m)
            _unit(layer, unit).register_forward_hook(replace(rows[:, i] == value, fn), with_kwargs=True)
        maps = _tensors(stand_ins, "", i)
        fn = (lambda x: x) if maps[0] is None else lambda x, m=maps: x + _by_hand(x, *m)
        layer.register_forward_hook(replace(rows[:, i] == 0, fn), with_kwargs=True)
    return clone


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("rank", [None, 3])
@pytest.mark.parametrize("shared", [False, True], ids=["mixed-rows", "one-path"])
def test_unit_maps_equal_the_maps_put_by_hand_with_and_without_cache(arch, rank, shared):
    model = tiny_model(arch)
    ids, mask = prompts(batch=3, length=8, pad_rows=2)
    routed = RoutedModel(model)
    stand_ins = _maps(routed, rank)
    routed.set_stand_ins(stand_ins)
    rows = torch.tensor(PATH).expand(3, -1) if shared else ROWS
    decisions = torch.tensor(PATH) if shared else ROWS
    explicit = _explicit(model, rows, stand_ins)
    with torch.no_grad():
        ref = explicit(input_ids=ids, attention_mask=mask).logits
        for use_cache in (False, True):
            out = routed(ids, attention_mask=mask, decisions=decisions, use_cache=use_cache).logits
            torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = routed.generate(ids, decisions=decisions, **kw)
    assert torch.equal(cached, routed.generate(ids, decisions=decisions, use_cache=False, **kw))
    assert torch.equal(cached, explicit.generate(ids, **kw))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_rows_with_unit_maps_generate_as_each_row_alone(arch):
    routed = RoutedModel(tiny_model(arch))
    routed.set_stand_ins(_maps(routed, rank=2))
    ids, mask = prompts(batch=3, length=8, pad_rows=2)
    assert_rows_generate_alone(routed, ids, mask, ROWS)


def test_zero_unit_maps_and_no_unit_maps_are_plain_switched_off_units():
    routed = RoutedModel(tiny_model("llama"))
    ids, mask = prompts()
    with torch.no_grad():
        plain = routed(ids, attention_mask=mask, decisions=ROWS).logits
        routed.set_stand_ins(routed.new_stand_ins())  # no maps at all
        assert torch.equal(routed(ids, attention_mask=mask, decisions=ROWS).logits, plain)
        zeros = routed.new_stand_ins()
        d = routed.hidden_size
        for unit in ("attention", "mlp"):
            for i in range(4):
                zeros.set_unit_map(unit, i, torch.zeros(d, d), torch.zeros(d))
        routed.set_stand_ins(zeros)
        for use_cache in (False, True):
            out = routed(ids, attention_mask=mask, decisions=ROWS, use_cache=use_cache).logits
            torch.testing.assert_close(out, plain, atol=0, rtol=0)


def test_a_mapped_attention_still_computes_nothing_and_writes_no_cache():
    model = tiny_model("llama")
    calls = []
    for i, layer in enumerate(layer_list(model)):
        layer.self_attn.q_proj.register_forward_hook(lambda m, a, o, i=i: calls.append(("attention", i)))
        layer.mlp.gate_proj.register_forward_hook(lambda m, a, o, i=i: calls.append(("mlp", i)))
    routed = RoutedModel(model)
    routed.set_stand_ins(_maps(routed))
    ids, _ = prompts(batch=1, pad_rows=0)
    cache = routed.new_cache()
    with torch.no_grad():
        routed(ids, decisions=[3, 4, 1, 1], use_cache=True, past_key_values=cache)
    assert ("attention", 0) not in calls and ("mlp", 1) not in calls and ("mlp", 0) in calls
    assert not cache.layers[0].is_initialized and cache.layers[1].get_seq_length() == ids.shape[1]
    attention = layer_list(model)[0].layer.self_attn
    assert type(attention).forward is attention.forward.__func__  # nothing left patched


@pytest.mark.parametrize("rank", [None, 2])
def test_unit_maps_save_and_load_with_the_block_maps(tmp_path, rank):
    routed = RoutedModel(tiny_model("llama"))
    stand_ins = _maps(routed, rank)
    stand_ins.repeat_scale[1] = 0.25
    stand_ins.save_pretrained(tmp_path)
    loaded = StandIns.from_pretrained(tmp_path)
    assert loaded.rank == rank and loaded.mapped == [2]
    assert loaded.unit_mapped == {"attention": [0, 1, 3], "mlp": [0, 1]}
    assert loaded.state_dict().keys() == stand_ins.state_dict().keys()
    for name, tensor in stand_ins.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    x = torch.randn(2, 5, routed.hidden_size)
    assert torch.equal(loaded.apply_unit("attention", 3, x), stand_ins.apply_unit("attention", 3, x))
    assert torch.equal(loaded.apply_unit("mlp", 3, x), torch.zeros_like(x))  # no map: switched off plainly
    assert loaded.has_unit_map("mlp", 1) and not loaded.has_unit_map("mlp", 2)


def test_files_without_unit_maps_keep_their_header_and_load(tmp_path):
    from safetensors import safe_open

    routed = RoutedModel(tiny_model("llama"))
    stand_ins = routed.new_stand_ins()
    stand_ins.set_map(1, torch.zeros(32, 32), torch.ones(32))
    path = stand_ins.save_pretrained(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        assert "unit_mapped" not in f.metadata()["stand_ins"]  # what files before unit maps held
    loaded = StandIns.from_pretrained(tmp_path)
    assert loaded.mapped == [1] and loaded.unit_mapped == {"attention": [], "mlp": []}


def test_bad_unit_maps_are_refused_naming_the_unit_and_layer():
    routed = RoutedModel(tiny_model("llama"))
    full, low = routed.new_stand_ins(), routed.new_stand_ins(rank=4)
    d = torch.zeros(32, 32)
    with pytest.raises(
        ValueError, match=r"down of the attention of layer 1 must be \(32, 32\), got \(32, 4\)"
    ):
        full.set_unit_map("attention", 1, torch.zeros(32, 4), torch.zeros(32))
    with pytest.raises(ValueError, match=r"up of the mlp of layer 2 must be \(4, 32\), got None"):
        low.set_unit_map("mlp", 2, torch.zeros(32, 4), torch.zeros(32))
    with pytest.raises(ValueError, match="bias of the mlp of layer 0 holds non-finite values"):
        full.set_unit_map("mlp", 0, d, torch.full((32,), float("inf")))
    with pytest.raises(ValueError, match="a unit map is for 'attention' or 'mlp', got 'ffn'"):
        full.set_unit_map("ffn", 0, d, torch.zeros(32))
    with pytest.raises(ValueError, match=r"layer 4 is not in 0..3"):
        full.set_unit_map("mlp", 4, d, torch.zeros(32))
    full.set_unit_map("mlp", 0, d, torch.zeros(32))
    with pytest.raises(ValueError, match="hidden size 32 got states of size 16"):
        full.apply_unit("mlp", 0, torch.zeros(2, 16))
    assert full.unit_mapped == {"attention": [], "mlp": [0]}  # the refused maps left nothing behind


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"unit_mapped": {"ffn": [1]}}, "'unit_mapped' must map 'attention'/'mlp' to layers"),
        ({"unit_mapped": {"mlp": "1"}}, "'unit_mapped' 'mlp' must be a list of layer numbers"),
        ({"unit_mapped": {"mlp": [0, 1, 2]}}, "does not match its own header: 'mlp_down_2'"),
        ({"unit_mapped": {"attention": [0, 1, 3]}}, "holds tensors its header does not name: .*mlp_bias_0"),
    ],
)
def test_a_damaged_unit_header_is_one_error_naming_the_file(tmp_path, edit, problem):
    import json

    from safetensors.torch import load_file, save_file

    routed = RoutedModel(tiny_model("llama"))
    stand_ins = _maps(routed)
    path = stand_ins.save_pretrained(tmp_path)
    config = {**stand_ins.config(), **edit}
    save_file(load_file(str(path)), str(path), metadata={"format": "pt", "stand_ins": json.dumps(config)})
    with pytest.raises(ValueError, match=problem):
        StandIns.from_pretrained(tmp_path)


@pytest.mark.parametrize("rank", [None, 4])
def test_path_macs_count_the_unit_maps_a_path_runs(rank):
    config = tiny_model("llama").config
    routed = RoutedModel(tiny_model("llama"))
    stand_ins = _maps(routed, rank)
    d = routed.hidden_size
    per_map = d * d if rank is None else 2 * d * rank
    path = [3, 4, 0, 3]  # attention 0 (mapped), MLP 1 (mapped), layer 2 (block map), attention 3 (mapped)
    plain, mapped = path_macs(config, path, 10), path_macs(config, path, 10, stand_ins)
    assert plain["stand_ins"] == 0 and mapped["stand_ins"] == 4 * per_map
    assert mapped["total"] == pytest.approx(plain["total"] + 4 * per_map)
    assert mapped["blocks"] == plain["blocks"]
    # units that are not switched off, or switched off without a map, cost nothing more
    unmapped = [4, 3, 1, 4]  # MLP 0 (mapped), attention 1 (mapped), MLP 3 (not mapped)
    assert path_macs(config, unmapped, 10, stand_ins)["stand_ins"] == 2 * per_map
    assert path_macs(config, [1, 1, 1, 1], 10, stand_ins)["stand_ins"] == 0
    assert stand_ins.unit_macs_per_token("attention", 2) == 0
    part = block_macs(config, 0, 10)
    assert mapped["fraction"] == pytest.approx(mapped["total"] / (4 * part["total"]), rel=1e-3)
