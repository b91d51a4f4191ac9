"""Saving routers over an earlier save is all or nothing; a user's own README.md is kept."""

import errno

import pytest
import torch
from tiny_models import tiny_model

from drllm.router import RoutedModel
from drllm.router.card import CARD_NAME


def _routed(seed, stand_ins):
    torch.manual_seed(seed)
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(kind="linear")
    if stand_ins:
        routed.set_stand_ins(routed.new_stand_ins())
    return routed


def test_a_failed_save_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    folder = tmp_path / "r"
    _routed(0, stand_ins=True).save_pretrained(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    second = _routed(1, stand_ins=True)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(
        type(second.stand_ins), "save_pretrained", full_disk
    )  # after nothing, or after routers
    with pytest.raises(OSError, match="No space left"):
        second.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no staging folder left either
    monkeypatch.undo()
    second.save_pretrained(folder)
    loaded = RoutedModel(tiny_model("llama"))
    loaded.load_routers(folder)
    for a, b in zip(loaded.routers.state_dict().values(), second.routers.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_users_readme_is_kept(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / CARD_NAME).write_text("my notes\n")
    with pytest.warns(UserWarning, match="not a drllm model card: kept"):
        _routed(0, stand_ins=False).save_pretrained(folder)
    assert (folder / CARD_NAME).read_text() == "my notes\n"
    _routed(0, stand_ins=False).save_pretrained(tmp_path / "fresh")
    _routed(1, stand_ins=False).save_pretrained(tmp_path / "fresh")  # its own card is rewritten freely
    assert "library_name: drllm" in (tmp_path / "fresh" / CARD_NAME).read_text()
