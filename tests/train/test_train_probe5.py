"""The fifth hostile probe's training cases: each was silent (a flag ignored, a prompt taken twice) or
blamed the wrong thing; now one named line, or the behaviour the flag asks for."""

import dataclasses
import json
import signal
from pathlib import Path

import pytest
import yaml
from test_features import synthetic_rows, write_rows
from tiny_models import tiny_model, tiny_tokenizer

from drllm.cli import __main__ as cli
from drllm.router import RoutedModel
from drllm.search.records import read_records
from drllm.search.teacher import META_NAME, task_prompts
from drllm.train.module import RouterModule
from drllm.train.trainer import train_routers

CONFIG = Path(__file__).parents[2] / "configs" / "train_tiny.yaml"
KL = dict(objective="kl", target_layers=3, router="static", epochs=1, batch_size=4, device="cpu")


def test_one_task_file_under_two_spellings_is_refused(tmp_path, mc_file, monkeypatch):
    monkeypatch.chdir(mc_file.parent)
    tasks = [f"jsonl:{mc_file.name}", f"jsonl:./{mc_file.name}"]
    with pytest.raises(ValueError, match=r"one task twice: 'jsonl:mc.jsonl' and 'jsonl:./mc.jsonl'"):
        train_routers("no-model-loads", output=str(tmp_path / "kl"), tasks=tasks, **KL)
    with pytest.raises(ValueError, match="one task twice"):
        task_prompts(tasks, tiny_tokenizer())
    assert not (tmp_path / "kl").exists()
    with pytest.raises(ValueError, match="one task twice"):  # the split left out is the one named
        task_prompts([f"jsonl:{mc_file}", f"jsonl:{mc_file}@all"], tiny_tokenizer())
    assert len(task_prompts([f"jsonl:{mc_file.name}"], tiny_tokenizer())) == 12


@pytest.mark.parametrize(
    "flag, value",
    [
        ("wandb_project", "p"),
        ("logger", "wandb"),
        ("precision", "16-mixed"),
        ("strategy", "ddp"),
        ("devices", 2),
        ("accelerator", "gpu"),
    ],
)
def test_kl_refuses_the_lightning_flags_it_would_ignore(tmp_path, mc_file, flag, value):
    with pytest.raises(ValueError, match=rf"{flag}.* label training; (with )?--objective kl"):
        train_routers(
            "no-model-loads", output=str(tmp_path / "kl"), tasks=[f"jsonl:{mc_file}"], **KL, **{flag: value}
        )


@pytest.mark.parametrize("flag, value", [("continuation_tokens", 4), ("examples_per_task", 3)])
def test_label_training_refuses_the_kl_flags(tmp_path, flag, value):
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(4))
    with pytest.raises(ValueError, match=rf"{flag}: flags of --objective kl"):
        train_routers("no-model-loads", str(paths), str(tmp_path / "out"), **{flag: value})


def test_starting_over_rebuilds_a_teacher_made_with_other_continuation_tokens(
    tmp_path, tiny_model_dir, mc_file
):
    out, common = tmp_path / "kl", dict(KL, tasks=[f"jsonl:{mc_file}"], accelerator="cpu")
    train_routers(tiny_model_dir, output=str(out), continuation_tokens=2, **common)
    with pytest.raises(ValueError, match=r"another tokens.*--resume false"):
        train_routers(tiny_model_dir, output=str(out), continuation_tokens=3, **common)
    train_routers(tiny_model_dir, output=str(out), continuation_tokens=3, resume=False, **common)
    assert json.loads((out / "teacher" / META_NAME).read_text())["tokens"] == 3
    rows = [json.loads(line) for line in (out / "teacher" / "teacher.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and any(len(r["continuation"]) == 3 for r in rows)
    assert json.loads((out / "run.json").read_text())["continuation_tokens"] == 3


def test_ctrl_c_in_label_training_is_an_interrupt_and_keeps_the_finished_epoch(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(10))
    out = tmp_path / "routers"
    step = RouterModule.training_step

    def interrupted(self, batch, index):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return step(self, batch, index)

    monkeypatch.setattr(RouterModule, "training_step", interrupted)
    before = signal.getsignal(signal.SIGINT)
    argv = ["train", "--model", tiny_model_dir, "--paths", str(paths), "--output", str(out)]
    with pytest.raises(SystemExit) as err:
        cli.main([*argv, "--config", str(CONFIG), "-q"])
    assert err.value.code == 130
    assert "train interrupted; what it finished is kept" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # Lightning left it ignored
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "train.lock").exists()


def test_paths_of_two_tasks_may_share_example_ids(tmp_path):
    rows = synthetic_rows(8)
    other = [dataclasses.replace(r, task="other") for r in rows[:4]]
    paths = write_rows(tmp_path / "both.jsonl", rows + other)
    assert len(read_records(paths)) == 12
    write_rows(paths, rows + rows[:1])
    with pytest.raises(ValueError, match="line 9: duplicate id 'ex0' of task 'toy'"):
        read_records(paths)
    config = yaml.safe_load(CONFIG.read_text()) | {"epochs": 1, "logger": "none"}
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    write_rows(paths, rows + other)
    train_routers(routed, str(paths), str(tmp_path / "out"), tokenizer=tiny_tokenizer(), **config)
    ids = json.loads((tmp_path / "out" / "trained_on.json").read_text())["ids"]
    assert any(i.startswith("other/") for i in ids) and len(set(ids)) == len(ids)


def test_trained_on_names_a_jsonl_task_by_its_absolute_path(tmp_path, tiny_model_dir, mc_file, monkeypatch):
    from drllm.evaluation.calibration import trained_on, was_trained

    monkeypatch.chdir(mc_file.parent)
    out = tmp_path / "kl"
    train_routers(
        tiny_model_dir, output=str(out), tasks=[f"jsonl:{mc_file.name}"], continuation_tokens=2, **KL
    )
    keys = trained_on(out)
    assert keys and all(k.startswith(f"jsonl:{mc_file.resolve()}/") for k in keys)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # eval from another folder, the file spelled another way
    example = next(iter(keys)).rsplit("/", 1)[1]
    assert was_trained(keys, f"jsonl:{mc_file}", example)
    assert was_trained(keys, f"jsonl:{Path('..') / mc_file.relative_to(tmp_path)}", example)
