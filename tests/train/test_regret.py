"""Validation regret from the single-edit sweep: by hand, as the checkpoint monitor, and as the verdict."""

import json

import torch
import yaml
from test_features import synthetic_rows, tiny_tokenizer, write_rows
from test_neighbours import knn_and_its_control, two_vocabularies
from test_trainer import CONFIG
from tiny_models import tiny_model

from drllm.router import RoutedModel
from drllm.train.regret import allowed_layers, regret_summary, regrets, static_choices, sweep_gains
from drllm.train.trainer import train_routers


def test_regret_by_hand():
    # 6 layers: 0, 1 and 5 protected. Gains [N=2, L=6, (skip, repeat)].
    gains = torch.zeros(2, 6, 2)
    gains[0, :, 0] = torch.tensor([9.0, 9.0, 1.0, 3.0, -2.0, 9.0])  # example 0: skipping layer 3 is best
    gains[1, :, 0] = torch.tensor([9.0, 9.0, 2.0, -1.0, 0.5, 9.0])  # example 1: layer 2
    gains[:, :, 1] = torch.tensor([0.0, 0.0, -1.0, 0.0, 1.0, 0.0])  # repeating layer 4 is best for both
    assert allowed_layers(6).tolist() == [False, False, True, True, True, False]
    assert static_choices(gains, [0, 1]) == [2, 4]  # mean skip gains 1.5, 1.0, -0.75 on layers 2, 3, 4
    logits = torch.zeros(2, 6, 3)
    logits[0, 4, 0] = 5.0  # example 0: the router would skip layer 4 (gain -2: regret 5)
    logits[1, 2, 0] = 5.0  # example 1: layer 2, its best (regret 0)
    logits[:, 0, 0] = 50.0  # a protected layer never counts
    logits[:, 4, 2] = 5.0  # both would repeat layer 4 (regret 0)
    per = regrets(logits, gains, [2, 4])
    torch.testing.assert_close(per["regret_skip"], torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(per["regret_static_skip"], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(per["regret_repeat"], torch.tensor([0.0, 0.0]))
    summary = regret_summary(per)
    assert summary["regret"] == 1.25 and summary["regret_static"] == 0.5
    assert summary["per_input_signal"] is False and "no per-input signal shown" in summary["verdict"]


def test_sweep_gains_need_a_sweep_in_every_record():
    rows = _swept(synthetic_rows(3))
    gains = sweep_gains(rows, 4)
    assert gains.shape == (3, 4, 2)
    assert gains[0, 2].tolist() == [
        rows[0].supervision["sweep"]["skip"][2] - 0.5,
        rows[0].supervision["sweep"]["repeat"][2] - 0.5,
    ]
    rows[0].supervision["sweep"]["skip"][1] = None  # a scoring without margins
    assert sweep_gains(rows, 4) is None
    rows[0].supervision["sweep"]["skip"][1] = 0.0
    rows[1].supervision = None
    assert sweep_gains(rows, 4) is None


def _swept(rows, best=None):
    """Give every row a sweep; ``best(i)`` names the layer whose skip helps row i (else a fixed one)."""
    for i, row in enumerate(rows):
        layer = best(i) if best else 2
        skip = [0.5 - 1.0] * 4
        skip[layer] = 0.5 + 2.0
        row.supervision = {
            "base_margin": 0.5,
            "sweep": {"skip": skip, "repeat": [0.5 - 0.5 * k for k in range(4)]},
        }
    return rows


def test_knn_regret_finds_planted_signal_and_its_control_does_not(tmp_path):
    """Even prompts gain most by skipping layer 2, odd ones layer 3 (8 layers: 0, 1, 7 protected); the
    labels skip each row's best layer."""
    config = yaml.safe_load(CONFIG.read_text())
    config.update(logger="none", val_fraction=0.3)
    rows = _swept(two_vocabularies(synthetic_rows(60)), best=lambda i: 2 + i % 2)
    for i, row in enumerate(rows):
        sweep = row.supervision["sweep"]  # widen the 4-layer sweep to 8 layers
        sweep["skip"] = sweep["skip"] + [-0.5] * 4
        sweep["repeat"] = sweep["repeat"] + [-0.5] * 4
        row.decisions = [1] * 8
        row.decisions[2 + i % 2] = 0
        row.correct_paths = [row.decisions]
    paths = write_rows(tmp_path / "paths.jsonl", rows)
    found = knn_and_its_control(tmp_path, paths, config, neighbours=5, layers=8, targets="hard")
    for control, metrics in found.items():
        saved = json.loads((tmp_path / control / "router_config.json").read_text())
        assert saved["verdict"] == metrics["verdict"]
    assert found["none"]["per_input_signal"] is True and found["none"]["regret_skip"] == 0.0
    assert found["none"]["regret_static_skip"] > 1.0  # one layer for all is wrong for half the prompts
    assert found["shuffled"]["regret_skip"] > 0.5
    assert "the routers found per-input signal" in found["none"]["verdict"]


def test_training_with_a_sweep_selects_by_regret_and_records_the_verdict(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config.update(logger="none", epochs=3)
    paths = write_rows(tmp_path / "paths.jsonl", _swept(synthetic_rows(16)))
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    metrics = train_routers(routed, str(paths), str(tmp_path / "out"), tokenizer=tiny_tokenizer(), **config)
    assert {"regret", "regret_static", "regret_skip", "regret_repeat", "per_input_signal", "verdict"} <= set(
        metrics
    )
    assert metrics["regret_static"] == 0.0  # every example's best skip is layer 2, the static choice
    best = list((tmp_path / "out" / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    state = torch.load(best[0], weights_only=False)
    monitors = [v.get("monitor") for v in state["callbacks"].values() if isinstance(v, dict)]
    assert "val/regret" in monitors and "val/macro_f1" not in monitors
    assert json.loads((tmp_path / "out" / "router_config.json").read_text())["verdict"] == metrics["verdict"]
