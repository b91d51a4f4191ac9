"""Publishing a training run is one symlink switch: a reader sees one whole version, never two mixed."""

import os

import pytest

from drllm.train import outputs


def _stage(out, run, names=("router_config.json", "routers.safetensors", "run.json", "trained_on.json")):
    folder = outputs.staging(out)
    for name in names:
        (folder / name).write_text(f"{name} of run {run}")
    return folder


def test_each_publish_switches_every_file_at_once_and_keeps_one_previous_version(tmp_path):
    out = tmp_path / "routers"
    out.mkdir()
    (out / "router_config.json").write_text("from an older drllm")  # plain files become links
    for run in (1, 2, 3):
        outputs.publish(_stage(out, run), out)
        for name in ("router_config.json", "routers.safetensors", "run.json"):
            assert (out / name).is_symlink() and (out / name).read_text() == f"{name} of run {run}"
    assert os.readlink(out / "current") == os.path.join("versions", "v3")
    assert sorted(p.name for p in (out / "versions").iterdir()) == ["v2", "v3"]
    outputs.publish(_stage(out, 4, names=("router_config.json", "routers.safetensors", "run.json")), out)
    assert not (out / "trained_on.json").exists() and not (out / "trained_on.json").is_symlink()


def test_a_kill_before_the_switch_leaves_the_previous_version_whole(tmp_path, monkeypatch):
    out = tmp_path / "routers"
    out.mkdir()
    outputs.publish(_stage(out, 1), out)
    real = os.replace

    def killed(src, dst):
        if str(dst).endswith(outputs.CURRENT_NAME):
            raise KeyboardInterrupt  # a kill between moving the new version in and switching to it
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        outputs.publish(_stage(out, 2), out)
    for name in ("router_config.json", "routers.safetensors", "run.json", "trained_on.json"):
        assert (out / name).read_text() == f"{name} of run 1"
