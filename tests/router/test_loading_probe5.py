"""Hostile inputs to loading and generation: routers where a model belongs, moved base models, paths as
text, an asked-for chat template that is not there."""

import re
import shutil

import pytest
import torch
from tiny_models import tiny_model

from drllm.cli.__main__ import default_model
from drllm.cli.generate import generate
from drllm.router import RoutedModel, load_routed, parse_decisions
from drllm.router.decisions import format_decisions


def test_routed_calls_take_decisions_as_text_in_the_cli_forms():
    routed = RoutedModel(tiny_model("llama"))
    ids = torch.tensor([[1, 5, 6, 7]])
    want = routed.generate(ids, decisions=[1, 0, 2, 1], max_new_tokens=3, do_sample=False)
    for text in ("1,0,2,1", "1021", "1 0 2 1"):
        assert torch.equal(routed.generate(ids, decisions=text, max_new_tokens=3, do_sample=False), want)
    torch.testing.assert_close(
        routed(ids, decisions="1021").logits, routed(ids, decisions=[1, 0, 2, 1]).logits
    )
    with pytest.raises(ValueError, match=r'separated by commas \("1,1,0,2"\) or as compact digits'):
        routed(ids, decisions="1,0,x,1")
    with pytest.raises(ValueError, match="decisions has 3 columns, the model has 4 layers"):
        routed(ids, decisions="101")


def test_the_printed_path_is_what_decisions_accepts(tiny_model_dir, capsys):
    path = [1] * 10 + [0, 2]
    assert format_decisions(path) == "1111111111_02"
    assert parse_decisions(format_decisions(path), 12) == path
    assert parse_decisions("1111111111 02", 12) == path
    generate("hi", model=tiny_model_dir, decisions="1,0,2,1", max_new_tokens=2)
    printed = re.search(r"; path (\S+);", capsys.readouterr().out).group(1)
    generate("hi", model=tiny_model_dir, decisions=printed, max_new_tokens=2)  # fed back as it was printed
    assert f"path {printed};" in capsys.readouterr().out


def test_generate_refuses_an_explicit_chat_without_a_chat_template(tiny_model_dir, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the model loaded before the refusal")

    monkeypatch.setattr("drllm.router.load_routed", never)
    with pytest.raises(ValueError, match="--chat true: the tokenizer of .* has no chat template"):
        generate("hi", model=tiny_model_dir, chat=True, max_new_tokens=2)
    monkeypatch.undo()
    assert generate("hi", model=tiny_model_dir, max_new_tokens=2) is not None  # the default: no template
    assert generate("hi", model=tiny_model_dir, chat=False, max_new_tokens=2) is not None


def test_a_routers_folder_given_as_the_model_says_how_to_load_routers(tmp_path, tiny_model_dir):
    routed = RoutedModel.from_pretrained(tiny_model_dir)
    routed.add_routers(num_windows=2, bottleneck=8)
    routed.save_pretrained(tmp_path / "routers")
    folder = str(tmp_path / "routers")
    with pytest.raises(
        ValueError, match=r"is a folder of saved routers.*from_pretrained\(base_model, routers="
    ):
        RoutedModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="load_routed"):
        load_routed(folder)


def test_wrapping_a_routed_model_again_says_it_is_one(tmp_path):
    routed = RoutedModel(tiny_model("llama"))
    with pytest.raises(ValueError, match="already a RoutedModel"):
        RoutedModel(routed)
    with pytest.raises(ValueError, match="already a RoutedModel"):
        RoutedModel.from_pretrained(routed)


def test_a_moved_base_model_names_router_config_and_model_flag(tmp_path, tiny_model_dir):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    routed = RoutedModel.from_pretrained(str(base))
    routed.add_routers(num_windows=2, bottleneck=8)
    routed.save_pretrained(tmp_path / "routers")
    base.rename(tmp_path / "moved")
    routers = str(tmp_path / "routers")
    message = (
        rf"base model {base}, recorded as base_model in {routers}/router_config.json, does not exist.*--model"
    )
    with pytest.raises(FileNotFoundError, match=message):
        default_model(routers)
    with pytest.raises(FileNotFoundError, match=message):
        load_routed(routers=routers)
    assert load_routed(str(tmp_path / "moved"), routers=routers, device="cpu").routers is not None
