"""A pickle planted in a run folder is refused by name and never runs (checkpoints, KL resume state)."""

import os

import pytest
import torch

from drllm.train.outputs import check_epochs, load_checkpoint


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_objects_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    for name, content in (
        ("last.ckpt", {"epoch": _Planted(marker)}),
        ("kl_state.pt", {"run": {}, "state": _Planted(marker)}),
    ):
        torch.save(content, tmp_path / name)
        with pytest.raises(
            ValueError, match=f"{name} is not a checkpoint drllm wrote .* nothing was run from it"
        ):
            load_checkpoint(tmp_path / name)
    with pytest.raises(ValueError, match="nothing was run"):
        check_epochs(tmp_path / "last.ckpt", 3)
    assert not marker.exists()
    torch.save({"epoch": 1, "state_dict": {"routers.w": torch.ones(2)}}, tmp_path / "good.ckpt")
    assert load_checkpoint(tmp_path / "good.ckpt")["epoch"] == 1


def test_kl_resume_state_refuses_a_planted_object(tmp_path):
    from drllm.train.kl_run import _resume_state

    marker = tmp_path / "ran"
    torch.save({"run": {}, "state": _Planted(marker)}, tmp_path / "kl_state.pt")
    with pytest.raises(ValueError, match="nothing was run"):
        _resume_state(tmp_path / "kl_state.pt", {}, True)
    assert not marker.exists()
