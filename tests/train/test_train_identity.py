"""Router training never overwrites finished routers with a failed run, locks its folder, and checks its
inputs: every argument before the model loads, paths searched with another model, checkpoints of other runs.
"""

import csv
import dataclasses
import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_features import synthetic_rows, tiny_tokenizer, write_rows
from tiny_models import tiny_model

from drllm.router import RoutedModel
from drllm.search.records import OutputLockedError
from drllm.train import outputs
from drllm.train import trainer as trainer_module
from drllm.train.module import RouterModule
from drllm.train.trainer import train_routers

CONFIG = Path(__file__).parents[2] / "configs" / "train_tiny.yaml"
PUBLISHED = ("router_config.json", "routers.safetensors", "metrics.json", "run.json")


@pytest.fixture
def config():
    return {**yaml.safe_load(CONFIG.read_text()), "epochs": 2, "logger": "csv"}


def _train(paths, out, config, **changes):
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    return train_routers(routed, str(paths), str(out), tokenizer=tiny_tokenizer(), **{**config, **changes})


def _snapshot(out):
    return {name: (out / name).read_bytes() for name in PUBLISHED}


def _epochs_of_last_run(out):
    version = max((out / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    with open(version / "metrics.csv") as f:
        return sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("epoch")})


BAD = [
    ("bottleneck", 0),
    ("num_windows", 0),
    ("epochs", 0),
    ("batch_size", 0),
    ("lr", -1.0),
    ("lr", float("nan")),
    ("weight_decay", -0.1),
    ("val_fraction", 0.0),
    ("val_fraction", 1.0),
    ("val_fraction", 1.5),
    ("seed", -1),
    ("epochs", True),
    ("logger", "tensorboard"),
    ("precision", "12-bit"),
    ("accelerator", "abacus"),
]


@pytest.mark.parametrize("name, value", BAD)
def test_a_bad_argument_is_refused_before_the_model_loads_or_a_file_is_written(
    tmp_path, config, monkeypatch, name, value
):
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(6))

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(trainer_module, "_load", no_load)
    out = tmp_path / "routers"
    with pytest.raises(ValueError) as err:
        train_routers("tiny", str(paths), str(out), **{**config, name: value})
    message = str(err.value)
    assert name in message and repr(value) in message and "\n" not in message
    assert not out.exists(), "nothing is written"


def test_a_failed_run_leaves_the_finished_routers_as_they_were(tmp_path, config, monkeypatch):
    first = write_rows(tmp_path / "a.jsonl", synthetic_rows(12))
    out = tmp_path / "routers"
    _train(first, out, config)
    finished = _snapshot(out)

    with pytest.raises(ValueError, match="bottleneck must be a whole number >= 1, got 0"):
        _train(first, out, config, bottleneck=0, resume=False)
    assert _snapshot(out) == finished

    second = write_rows(tmp_path / "b.jsonl", synthetic_rows(12, seed=1))
    calls = []

    def failing_step(self, batch, batch_idx):
        calls.append(batch_idx)
        raise RuntimeError("killed in the middle of training")

    with monkeypatch.context() as m:
        m.setattr(RouterModule, "training_step", failing_step)
        with pytest.raises(RuntimeError, match="killed in the middle"):
            _train(second, out, config, resume=False)
    assert calls, "the run failed inside training"
    assert _snapshot(out) == finished, "the finished routers, metrics and run.json are byte-identical"
    assert not list(out.glob(".incoming-*")) and not (out / outputs.LOCK_NAME).exists()
    reloaded = RoutedModel.from_pretrained(tiny_model("llama"), routers=out)
    assert reloaded.routers.config.bottleneck == config["bottleneck"]

    # the failed run started over: its identity, not the first run's, sits beside the checkpoints, so a
    # resume on the second paths trains from epoch 0 instead of adopting the first run's last.ckpt
    _train(second, out, config)
    assert _epochs_of_last_run(out) == [0, 1]
    assert _snapshot(out) != finished
    with pytest.raises(ValueError, match="paths_sha256"):  # and the first paths cannot resume it
        _train(first, out, {**config, "epochs": 3})


def test_a_checkpoint_without_its_identity_is_not_resumed(tmp_path, config):
    paths = write_rows(tmp_path / "a.jsonl", synthetic_rows(12))
    out = tmp_path / "routers"
    _train(paths, out, config)
    (out / "checkpoints" / "run.json").unlink()  # as an older drllm left its checkpoints
    with pytest.raises(ValueError, match="last.ckpt has no run.json beside it"):
        _train(paths, out, {**config, "epochs": 3})


def test_a_second_training_into_the_same_folder_is_refused(tmp_path, config):
    paths = write_rows(tmp_path / "a.jsonl", synthetic_rows(8))
    out = tmp_path / "routers"
    with outputs.locked(out):
        with pytest.raises(OutputLockedError, match=f"lock {out / 'train.lock'} is held"):
            _train(paths, out, config, epochs=1)
    assert not (out / "train.lock").exists(), "the lock file is removed on release"
    _train(paths, out, config, epochs=1)
    assert not (out / "train.lock").exists(), "no lock file lingers after a clean run"
    assert (out / "routers.safetensors").is_file()


HOLDER = """
import sys
from pathlib import Path
from drllm.train.outputs import locked
with locked(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_training_in_another_process_holds_the_folder(tmp_path, config):
    paths = write_rows(tmp_path / "a.jsonl", synthetic_rows(8))
    out = tmp_path / "routers"
    cmd = [sys.executable, "-c", HOLDER, str(out)]
    holder = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match="being written by another training run"):
            _train(paths, out, config, epochs=1)
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and not (out / "train.lock").exists()
    _train(paths, out, config, epochs=1)  # free again once the other process is done


def _stamped(rows, **settings):
    return [dataclasses.replace(r, settings=settings) for r in rows]


def test_paths_searched_with_another_model_are_refused(tmp_path, config, monkeypatch):
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    rows = synthetic_rows(6)
    other = write_rows(tmp_path / "qwen.jsonl", _stamped(rows, fingerprint="qwen2-L4-d32-v96"))
    with pytest.raises(ValueError, match="fingerprint qwen2-L4-d32-v96, this model has fingerprint llama-L4"):
        _train(other, tmp_path / "out", config)
    seeded = RoutedModel.from_pretrained(tiny_model("llama", seed=1))
    probe = {"fingerprint": routed.fingerprint, "weight_probe": seeded.weight_probe}
    other = write_rows(tmp_path / "seed1.jsonl", _stamped(rows, **probe))
    with pytest.raises(ValueError, match=r"weight fingerprint \[.*\], this model has \["):
        _train(other, tmp_path / "out", config)

    def reached(*args, **kwargs):
        raise RuntimeError("features are built: the paths were accepted")

    monkeypatch.setattr(trainer_module, "build_features", reached)
    same = {"fingerprint": routed.fingerprint, "weight_probe": routed.weight_probe}
    for name, kept in (("same.jsonl", _stamped(rows, **same)), ("old.jsonl", rows)):
        with pytest.raises(RuntimeError, match="the paths were accepted"):
            _train(write_rows(tmp_path / name, kept), tmp_path / "out", config)


def test_a_huge_searched_prompt_is_refused_before_tokenizing(tmp_path, config, monkeypatch):
    rows = synthetic_rows(4)
    rows[2] = dataclasses.replace(rows[2], prompt="w " * 600_000)
    paths = write_rows(tmp_path / "paths.jsonl", rows)
    monkeypatch.setattr(trainer_module, "_load", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(
        ValueError, match="example 'ex2' has a prompt of 1200000 characters, more than 1000000"
    ):
        train_routers("tiny", str(paths), str(tmp_path / "out"), **config)


def test_a_full_disk_while_publishing_is_one_error_and_keeps_the_finished_routers(
    tmp_path, config, monkeypatch
):
    paths = write_rows(tmp_path / "a.jsonl", synthetic_rows(12))
    out = tmp_path / "routers"
    _train(paths, out, config)
    finished = _snapshot(out)

    def full(*args, **kwargs):  # safetensors reports a full disk in its own words, as torch does
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(RoutedModel, "save_pretrained", full)
    with pytest.raises(OSError) as err:
        _train(paths, out, config, resume=False)
    assert err.value.errno == errno.ENOSPC
    assert f"no space left on the device of {out}" in str(err.value) and "unchanged" in str(err.value)
    assert _snapshot(out) == finished
    assert not list(out.glob(".incoming-*")), "the half-written staging folder is removed"


def test_a_full_disk_is_recognised_by_the_space_left_when_the_error_does_not_say(tmp_path, monkeypatch):
    assert outputs.disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert not outputs.disk_full(RuntimeError("unexpected pos 576 vs 534"), tmp_path)  # plenty of space here
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    assert outputs.disk_full(RuntimeError("unexpected pos 576 vs 534"), tmp_path)  # torch.save's words


def test_a_torn_last_checkpoint_is_named_and_not_resumed(tmp_path, config):
    """What a full disk or a kill during a checkpoint write leaves: a truncated last.ckpt."""
    paths = write_rows(tmp_path / "a.jsonl", synthetic_rows(12))
    out = tmp_path / "routers"
    _train(paths, out, config)
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])
    with pytest.raises(ValueError, match=f"{last} is damaged .* use --resume false to start over"):
        _train(paths, out, {**config, "epochs": 3})
    _train(paths, out, {**config, "epochs": 3}, resume=False)
    assert _epochs_of_last_run(out) == [0, 1, 2]


@pytest.mark.parametrize(("name", "value"), [("lr", 0.05), ("weight_decay", 0.5), ("batch_size", 3)])
def test_a_resume_with_another_optimiser_setting_is_refused(tmp_path, config, name, value):
    """A resumed run once kept the checkpoint's optimiser and recorded a new value it never used."""
    paths = write_rows(tmp_path / "a.jsonl", synthetic_rows(12))
    out = tmp_path / "routers"
    _train(paths, out, config)
    with pytest.raises(ValueError, match=name):
        _train(paths, out, {**config, "epochs": 3, name: value})
