"""End-to-end router training on a tiny random model: outputs, reloading and resuming."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from test_features import synthetic_rows, tiny_tokenizer, write_rows
from tiny_models import tiny_model
from wandb_records import offline_record

from drllm.router import RoutedModel
from drllm.train.trainer import train_routers

CONFIG = Path(__file__).parents[2] / "configs" / "train_tiny.yaml"
METRIC_KEYS = {
    "macro_f1",
    "f1_skip",
    "f1_execute",
    "f1_repeat",
    "acc_skip",
    "acc_execute",
    "acc_repeat",
    "accuracy",
    "layers_pred",
    "layers_target",
    "epoch",
    "val_loss",
}


@pytest.fixture
def config():
    return yaml.safe_load(CONFIG.read_text())


def _epochs_logged(version_dir):
    with open(version_dir / "metrics.csv") as f:
        return sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("epoch")})


def test_train_routers_end_to_end_and_resume(tmp_path, config):
    model = tiny_model("llama")
    routed = RoutedModel.from_pretrained(model)
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(20))
    out = tmp_path / "routers"
    metrics = train_routers(routed, str(paths), str(out), tokenizer=tiny_tokenizer(), **config)

    assert METRIC_KEYS <= set(metrics)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "router_config.json").is_file() and (out / "routers.safetensors").is_file()
    assert 0 <= metrics["epoch"] < config["epochs"] and 0.0 <= metrics["macro_f1"] <= 1.0
    saved = json.loads((out / "router_config.json").read_text())
    assert (saved["num_layers"], saved["num_windows"], saved["bottleneck"]) == (4, 4, 16)
    assert len(list((out / "feature_cache").glob("*.safetensors"))) == 1

    reloaded = RoutedModel.from_pretrained(tiny_model("llama"), routers=out)
    for a, b in zip(reloaded.routers.parameters(), routed.routers.parameters(), strict=True):
        torch.testing.assert_close(a, b.cpu())
    assert _epochs_logged(out / "logs" / "version_0") == [0, 1]

    config["epochs"] = 4
    again = train_routers(routed, str(paths), str(out), tokenizer=tiny_tokenizer(), **config)
    assert _epochs_logged(out / "logs" / "version_1") == [2, 3], "the second run continues from last.ckpt"
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 3
    assert METRIC_KEYS <= set(again)


def test_train_routers_online_mode(tmp_path, config):
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(8))
    config.update(epochs=1, online=True, logger="none")
    metrics = train_routers(routed, str(paths), str(tmp_path / "out"), tokenizer=tiny_tokenizer(), **config)
    assert METRIC_KEYS <= set(metrics)
    assert not (tmp_path / "out" / "feature_cache").exists()
    assert not any(p.requires_grad for p in routed.model.parameters())


def test_train_routers_refuses_paths_for_another_depth(tmp_path, config):
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(4, num_layers=5))
    with pytest.raises(ValueError, match="line 1: decisions has 5 values, the model has 4 layers"):
        train_routers(routed, str(paths), str(tmp_path / "out"), tokenizer=tiny_tokenizer(), **config)


def test_train_routers_needs_a_tokenizer_with_a_model_object(tmp_path, config):
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    with pytest.raises(ValueError, match="tokenizer"):
        train_routers(routed, str(tmp_path / "p.jsonl"), str(tmp_path / "out"), **config)


def test_train_routers_logs_to_wandb_offline(tmp_path, config, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(12))
    out = tmp_path / "routers"
    config.update(logger="wandb", epochs=1)
    metrics = train_routers(routed, str(paths), str(out), tokenizer=tiny_tokenizer(), **config)
    assert "macro_f1" in metrics
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs, "an offline W&B run directory is written"
    assert (out / "decisions.png").is_file()
    assert list(runs[0].glob("files/media/images/**/*.png")), "the decision heatmap is logged as an image"
    needles = [b"paths_sha256", b"num_windows"]  # offline runs keep the config in their record file
    record = offline_record(runs[0], "run-*.wandb", needles)
    assert all(n in record for n in needles)


def test_resuming_a_checkpoint_made_from_other_paths_is_refused(tmp_path, config):
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    out = tmp_path / "routers"
    config["epochs"] = 1
    first = write_rows(tmp_path / "a.jsonl", synthetic_rows(12))
    train_routers(routed, str(first), str(out), tokenizer=tiny_tokenizer(), **config)
    second = write_rows(tmp_path / "b.jsonl", synthetic_rows(12)[:10])
    config["epochs"] = 2
    with pytest.raises(ValueError, match="paths_sha256"):
        train_routers(routed, str(second), str(out), tokenizer=tiny_tokenizer(), **config)
    with pytest.raises(ValueError, match="num_windows: checkpoint 4, now 2"):  # other router files
        other = {**config, "num_windows": 2}
        train_routers(routed, str(first), str(out), tokenizer=tiny_tokenizer(), **other)
    config["resume"] = False  # starting over is allowed
    train_routers(routed, str(second), str(out), tokenizer=tiny_tokenizer(), **config)
