"""Stand-ins: linear maps for skipped layers and damped repeats equal their explicit unrolled form."""

import pytest
import torch
from tiny_models import (
    ARCHITECTURES,
    assert_equals_explicit,
    assert_rows_generate_alone,
    explicit_model,
    prompts,
    tiny_model,
)

from drllm.router import RoutedModel, relaxed
from drllm.router.relaxed import Relaxation
from drllm.router.stand_ins import STAND_INS_NAME, StandIns

ATOL = 1e-5
PATH = [1, 0, 2, 0]
ROWS = torch.tensor([[1, 0, 2, 0], [0, 1, 1, 1], [2, 0, 0, 1]])


def _stand_ins(routed, rank=None, seed=0):
    """Maps on layers 0, 1 and 3 (small, random), repeat of layer 2 damped to 0.5."""
    g = torch.Generator().manual_seed(seed)
    d = routed.hidden_size
    stand_ins = routed.new_stand_ins(rank)
    r = rank or d
    for i in (0, 1, 3):
        up = 0.1 * torch.randn(r, d, generator=g) if rank else None
        stand_ins.set_map(i, 0.1 * torch.randn(d, r, generator=g), 0.05 * torch.randn(d, generator=g), up)
    stand_ins.repeat_scale[2] = 0.5
    return stand_ins


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("rank", [None, 3])
def test_stand_ins_equal_the_explicit_model_with_and_without_cache(arch, rank):
    model = tiny_model(arch)
    ids, mask = prompts(batch=2, length=7)
    routed = RoutedModel(model)
    stand_ins = _stand_ins(routed, rank)
    explicit = explicit_model(model, PATH, stand_ins)
    routed.set_stand_ins(stand_ins)
    assert_equals_explicit(routed, explicit, ids, mask, PATH)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_rows_with_stand_ins_equal_each_row_alone(arch):
    model = tiny_model(arch)
    ids, mask = prompts(batch=3, length=8, pad_rows=2)
    routed = RoutedModel(model)
    routed.set_stand_ins(_stand_ins(routed, rank=2))
    assert_rows_generate_alone(routed, ids, mask, ROWS)


def test_zero_maps_and_unit_scales_are_plain_skips_and_repeats():
    model = tiny_model("llama")
    ids, mask = prompts()
    routed = RoutedModel(model)
    with torch.no_grad():
        plain = routed(ids, attention_mask=mask, decisions=ROWS).logits
    stand_ins = routed.new_stand_ins()
    d = routed.hidden_size
    for i in range(4):
        stand_ins.set_map(i, torch.zeros(d, d), torch.zeros(d))
    routed.set_stand_ins(stand_ins)
    with torch.no_grad():
        same = routed(ids, attention_mask=mask, decisions=ROWS).logits
    torch.testing.assert_close(same, plain, atol=0, rtol=0)
    stand_ins.repeat_scale.zero_()  # a repeat scaled by 0 is one execution
    once = torch.where(ROWS == 2, 1, ROWS)
    with torch.no_grad():
        damped = routed(ids, attention_mask=mask, decisions=ROWS).logits
    routed.set_stand_ins(None)
    with torch.no_grad():
        executed = routed(ids, attention_mask=mask, decisions=once).logits
    torch.testing.assert_close(damped, executed, atol=ATOL, rtol=0)


def test_relaxed_hard_gates_apply_the_stand_ins_too():
    model = tiny_model("llama")
    ids, mask = prompts()
    routed = RoutedModel(model)
    routed.add_routers(kind="linear")
    routed.set_stand_ins(_stand_ins(routed))
    relaxation = Relaxation(routed.routers, sample=False)
    with torch.no_grad(), relaxed(routed, relaxation):
        soft = routed.lm_logits(routed.backbone(ids, mask))
    with torch.no_grad():
        hard = routed.lm_logits(routed.backbone(ids, mask, relaxation.decisions()))
    torch.testing.assert_close(soft, hard, atol=ATOL, rtol=0)


def test_stand_ins_save_with_routers_and_refuse_another_model(tmp_path):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(kind="static")
    stand_ins = _stand_ins(routed, rank=2)
    routed.set_stand_ins(stand_ins)
    routed.save_pretrained(tmp_path / "r")
    other = RoutedModel(tiny_model("llama"))
    loaded = other.load_routers(tmp_path / "r")  # same weights (seeded): accepted
    assert loaded is other.routers and other.stand_ins.mapped == [0, 1, 3] and other.stand_ins.rank == 2
    for name, tensor in stand_ins.state_dict().items():
        torch.testing.assert_close(other.stand_ins.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="stand-ins were trained on other weights"):
        RoutedModel(tiny_model("llama", seed=1)).load_stand_ins(tmp_path / "r")
    with pytest.raises(ValueError, match="stand-ins were made for a model with layer count 4"):
        RoutedModel(tiny_model("llama", num_hidden_layers=5)).set_stand_ins(stand_ins)
    (tmp_path / "copy").mkdir()
    for name in ("router_config.json", "routers.safetensors"):  # copied without its stand-ins
        (tmp_path / "copy" / name).write_bytes((tmp_path / "r" / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="records linear stand-ins, but has no stand_ins.safetensors"):
        other.load_routers(tmp_path / "copy")
    routed.set_stand_ins(None)
    routed.save_pretrained(tmp_path / "r")  # routers without stand-ins: the earlier file goes
    assert not (tmp_path / "r" / STAND_INS_NAME).exists()
    other.load_routers(tmp_path / "r")
    assert other.stand_ins is None


def test_bad_stand_in_files_and_shapes_are_refused(tmp_path):
    routed = RoutedModel(tiny_model("llama"))
    stand_ins = routed.new_stand_ins()
    with pytest.raises(ValueError, match=r"down of layer 1 must be \(32, 32\)"):
        stand_ins.set_map(1, torch.zeros(32, 4), torch.zeros(32))
    with pytest.raises(ValueError, match="rank must lie in 1..31"):
        routed.new_stand_ins(rank=32)
    for rank in (True, 2.5):
        with pytest.raises(ValueError, match="rank must lie in 1..31"):
            routed.new_stand_ins(rank=rank)
    with pytest.raises(ValueError, match="down of layer 1 holds non-finite values"):
        stand_ins.set_map(1, torch.full((32, 32), float("nan")), torch.zeros(32))
    with pytest.raises(TypeError, match="set_stand_ins takes StandIns"):
        routed.set_stand_ins(str(tmp_path))
    stand_ins.set_map(1, torch.zeros(32, 32), torch.zeros(32))
    with pytest.raises(ValueError, match="hidden size 32 got states of size 16"):
        stand_ins.apply(1, torch.zeros(2, 16))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="is a file; stand-ins are saved into a folder"):
        stand_ins.save_pretrained(tmp_path / "a_file")
    with pytest.raises(FileNotFoundError, match=STAND_INS_NAME):
        StandIns.from_pretrained(tmp_path)
    (tmp_path / STAND_INS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        StandIns.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"mapped": "1"}, "'mapped' must be a list of layer numbers"),
        ({"rank": "abc"}, "rank must lie in"),
        ({"num_layers": 4.5}, "num_layers must be a whole number"),
    ],
)
def test_a_damaged_stand_in_header_is_one_error_naming_the_file(tmp_path, edit, problem):
    import json

    from safetensors.torch import load_file, save_file

    routed = RoutedModel(tiny_model("llama"))
    path = _stand_ins(routed).save_pretrained(tmp_path)
    config = {**_stand_ins(routed).config(), **edit}
    save_file(load_file(str(path)), str(path), metadata={"format": "pt", "stand_ins": json.dumps(config)})
    with pytest.raises(ValueError, match=problem):
        StandIns.from_pretrained(tmp_path)
