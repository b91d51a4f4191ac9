"""End-to-end router training on a tiny random model: outputs, reloading, resuming, DDP, the schedule."""

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from test_features import synthetic_rows, tiny_tokenizer, write_rows
from tiny_models import tiny_model
from wandb_records import offline_record

from drllm.router import RoutedModel, Routers
from drllm.train import focal_loss
from drllm.train.data import split_indices
from drllm.train.features import FeatureSet
from drllm.train.metrics import routing_metrics
from drllm.train.module import RouterModule
from drllm.train.trainer import _check_resume, train_routers

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
    config["epochs"] = 2  # fewer in all than the checkpoint has run: one line, not Lightning's traceback
    with pytest.raises(ValueError, match="has already run 4 epochs, more than --epochs 2"):
        train_routers(routed, str(paths), str(out), tokenizer=tiny_tokenizer(), **config)


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
    with pytest.raises(ValueError, match="router: checkpoint 'shared', now 'linear'"):
        train_routers(
            routed, str(first), str(out), tokenizer=tiny_tokenizer(), **{**config, "router": "linear"}
        )
    with pytest.raises(ValueError, match="read_layer: checkpoint 2, now 1"):
        train_routers(routed, str(first), str(out), tokenizer=tiny_tokenizer(), **{**config, "read_layer": 1})
    config["resume"] = False  # starting over is allowed
    train_routers(routed, str(second), str(out), tokenizer=tiny_tokenizer(), **config)


def test_one_shot_routers_train_on_their_read_layer_and_refuse_a_missing_one(tmp_path, config):
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(12))
    out = tmp_path / "routers"
    config.update(epochs=1, logger="none")
    train_routers(
        routed, str(paths), str(out), tokenizer=tiny_tokenizer(), router="shared", read_layer=2, **config
    )
    assert json.loads((out / "router_config.json").read_text())["read_layer"] == 2
    assert json.loads((out / "run.json").read_text())["read_layer"] == 2
    trained = json.loads((out / "trained_on.json").read_text())["ids"]
    ids = [f"{r['task']}/{r['id']}" for r in map(json.loads, paths.read_text().splitlines())]  # task/id keys
    assert 0 < len(trained) < len(ids) and set(trained) <= set(ids), (
        "the training split's ids, not validation's"
    )
    for bad, message in [(4, r"read_layer must be a layer in \[0, 4\), got 4"), (-1, "read_layer must be")]:
        with pytest.raises(ValueError, match=message):
            train_routers(
                routed,
                str(paths),
                str(tmp_path / "other"),
                tokenizer=tiny_tokenizer(),
                read_layer=bad,
                **config,
            )


@pytest.mark.parametrize("kind", ["linear", "shared"])
def test_train_routers_of_each_kind_saves_what_it_trained(tmp_path, config, kind):
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(12))
    out = tmp_path / "routers"
    config.update(epochs=2, logger="none")
    metrics = train_routers(routed, str(paths), str(out), tokenizer=tiny_tokenizer(), router=kind, **config)
    assert METRIC_KEYS <= set(metrics)
    saved = json.loads((out / "router_config.json").read_text())
    assert (saved["kind"], saved["norm"], saved["skip_first"]) == (kind, True, True)
    assert json.loads((out / "run.json").read_text())["router"] == kind
    reloaded = RoutedModel.from_pretrained(tiny_model("llama"), routers=out)
    for a, b in zip(
        reloaded.routers.state_dict().values(), routed.routers.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b.cpu())
    with pytest.raises(ValueError, match="router must be one of"):
        train_routers(routed, str(paths), str(out), tokenizer=tiny_tokenizer(), router="conv", **config)


def test_resuming_maps_the_old_hidden_size_key_to_bottleneck(tmp_path):
    record = tmp_path / "run.json"
    run = {"paths_sha256": "ab", "num_windows": 4, "bottleneck": 16, "seed": 0}
    old = {"paths_sha256": "ab", "num_windows": 4, "hidden_size": 16, "seed": 0}
    record.write_text(json.dumps(old))
    _check_resume(record, run, resuming=True)  # same router shape under its old name
    assert json.loads(record.read_text()) == run, "the record is rewritten with the new key"
    record.write_text(json.dumps({**old, "hidden_size": 8}))
    with pytest.raises(ValueError, match="bottleneck: checkpoint 8, now 16"):
        _check_resume(record, run, resuming=True)


def test_add_routers_hidden_size_is_a_deprecated_alias_of_bottleneck():
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    assert routed.add_routers(num_windows=2, bottleneck=8).config.bottleneck == 8
    with pytest.warns(DeprecationWarning, match="bottleneck"):
        routers = routed.add_routers(num_windows=2, hidden_size=6)
    assert routers.config.bottleneck == 6 and routers.config.hidden_size == routed.hidden_size


def test_learning_rate_warms_up_then_decays_to_zero():
    routers = RoutedModel.from_pretrained(tiny_model("llama")).add_routers(num_windows=2, bottleneck=4)
    module = RouterModule(routers, [1, 1, 1], lr=0.01, warmup_fraction=0.1)
    module.trainer = SimpleNamespace(estimated_stepping_batches=100)
    setup = module.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert setup["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.005)  # linear warmup over 10 of 100 steps
    assert max(lrs) == pytest.approx(0.01) and lrs.index(max(lrs)) == 10
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)), "cosine decay after warmup"
    assert lrs[-1] < 1e-4


DDP_SCRIPT = """
import sys

import yaml

from drllm.train.trainer import train_routers

model, paths, output, config = sys.argv[1:5]
settings = yaml.safe_load(open(config))
settings.update(accelerator="cpu", devices=2, strategy="ddp", epochs=3, batch_size=2, val_fraction=0.25)
settings.update(logger="none")
train_routers(model, paths, output, **settings)
"""


def _ddp_rows(n: int, val_fraction: float, seed: int) -> list[dict]:
    """Rows whose validation shards differ: rank 0 (even positions) executes all, rank 1 repeats."""
    rows = synthetic_rows(n, seed=seed)
    _, val = split_indices(n, val_fraction, seed)
    for position, index in enumerate(val):
        decisions = [1, 1, 1, 1] if position % 2 == 0 else [2, 2, 0, 2]
        path = {"decisions": decisions, "layers": sum(decisions), "correct_paths": [decisions]}
        row = rows[index]  # a dict or a SearchRecord, whichever synthetic_rows makes
        rows[index] = {**row, **path} if isinstance(row, dict) else dataclasses.replace(row, **path)
    return rows


@pytest.mark.slow
def test_ddp_validation_metrics_cover_the_whole_validation_set(tmp_path, tiny_model_dir, config):
    n, val_fraction, seed = 20, 0.25, config["seed"]
    paths = write_rows(tmp_path / "paths.jsonl", _ddp_rows(n, val_fraction, seed))
    out, script = tmp_path / "routers", tmp_path / "train_ddp.py"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, str(script), tiny_model_dir, str(paths), str(out), str(CONFIG)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]

    saved = json.loads((out / "metrics.json").read_text())
    (cache,) = (out / "feature_cache").glob("*.safetensors")
    features = FeatureSet.load(cache)
    train, val = (torch.tensor(i) for i in split_indices(n, val_fraction, seed))
    assert len(val) == 5, "an odd validation set: the two shards hold 3 and 2 examples"
    routers = RoutedModel.from_pretrained(tiny_model_dir, routers=out).routers
    with torch.no_grad():
        logits = routers.forward_pooled(features.pooled[val], features.valid[val])
    pred, target = logits.argmax(-1), features.decisions[val]
    whole = routing_metrics(pred, target)
    for key, value in whole.items():
        assert saved[key] == pytest.approx(value), key
    counts = torch.bincount(features.decisions[train].flatten(), minlength=3)
    assert saved["val_loss"] == pytest.approx(focal_loss(logits, target, counts).item(), rel=1e-5)
    (best,) = (out / "checkpoints").glob("best-*.ckpt")
    callbacks = torch.load(best, weights_only=False)["callbacks"]
    (score,) = [c["best_model_score"] for k, c in callbacks.items() if "val/macro_f1" in k]
    assert score.item() == pytest.approx(whole["macro_f1"], rel=1e-5), "the monitored value is global"

    rank0 = routing_metrics(pred[0::2], target[0::2])  # what rank 0 alone would have logged
    assert rank0["layers_target"] == 4.0 != whole["layers_target"]
    assert rank0["macro_f1"] != pytest.approx(whole["macro_f1"])


def test_a_refusal_that_needs_the_model_leaves_no_output_folder(tmp_path, config):
    """``--read-layer 4`` on a 4-layer model is refused once the model is loaded: no empty folder remains."""
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(8))
    out = tmp_path / "new" / "routers"
    with pytest.raises(ValueError, match=r"read_layer must be a layer in \[0, 4\), got 4"):
        train_routers(routed, str(paths), str(out), tokenizer=tiny_tokenizer(), **{**config, "read_layer": 4})
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("router", ["linear", "knn"])
def test_paths_of_a_sublayer_search_train_routers_with_five_actions(tmp_path, config, router):
    """A path found by ``--units sublayer`` is exactly what these routers can output (3, 4 included)."""
    rows = synthetic_rows(16)
    for k, row in enumerate(rows[:8]):
        row.decisions[1 + k % 2] = 3 + k % 2  # the MLP alone or the attention alone somewhere
        row.correct_paths = [list(row.decisions)]
    paths = write_rows(tmp_path / "paths.jsonl", rows)
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    out = tmp_path / "units"
    metrics = train_routers(
        routed, str(paths), str(out), tokenizer=tiny_tokenizer(), **{**config, "router": router}
    )
    assert routed.routers.config.actions == 5
    assert {"f1_mlp_only", "acc_attention_only"} <= set(metrics)
    assert json.loads((out / "run.json").read_text())["actions"] == 5
    assert Routers.from_pretrained(out).config.actions == 5
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        routed(ids)
    assert routed.last_decisions.max() <= 4
