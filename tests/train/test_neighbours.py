"""The knn router and the shuffled-target control: votes, a planted signal found, the control blind to it."""

import json

import pytest
import torch
import yaml
from test_features import synthetic_rows, tiny_tokenizer, write_rows
from test_trainer import CONFIG, METRIC_KEYS
from tiny_models import prompts, tiny_model

from drllm.router import RoutedModel
from drllm.router.heads import NeighbourRouter
from drllm.train.neighbours import shuffled_targets
from drllm.train.trainer import train_routers


def _one_hot(labels, layers=4):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), 3).float()[:, None].repeat(1, layers, 1)


def test_knn_votes_are_the_average_table_of_the_nearest_prompts():
    torch.manual_seed(0)
    knn = NeighbourRouter(hidden_size=8, num_layers=2, examples=6, neighbours=3)
    base = torch.randn(2, 8)
    pooled = torch.stack([base[i // 3] + 0.05 * torch.randn(8) for i in range(6)])[:, None, None].repeat(
        1, 2, 1, 1
    )
    valid = torch.ones(6, 2, 1, dtype=torch.bool)
    tables = _one_hot([0, 0, 2, 1, 1, 1], layers=2)  # group 0 votes skip, skip, repeat; group 1 executes
    knn.fit(pooled, valid, tables)
    logits = knn(1, pooled[:, 1], valid[:, 1])
    expected = torch.tensor([[2 / 3, 0, 1 / 3]] * 3 + [[0, 1, 0]] * 3).clamp(min=1e-4).log()
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(knn(None, pooled, valid)[:, 1], logits)  # all layers at once agrees


def test_shuffled_targets_permute_training_rows_only():
    table = torch.arange(10 * 2 * 3, dtype=torch.float).reshape(10, 2, 3)
    train, val = [0, 1, 2, 3, 5, 7, 8], [4, 6, 9]
    shuffled = shuffled_targets(table, train, seed=0)
    assert torch.equal(shuffled[val], table[val])
    assert sorted(map(tuple, shuffled[train].flatten(1).tolist())) == sorted(
        map(tuple, table[train].flatten(1).tolist())
    )
    assert not torch.equal(shuffled[train], table[train])
    assert torch.equal(shuffled_targets(table, train, seed=0), shuffled)


def two_vocabularies(rows):
    """Even rows' prompts use one vocabulary, odd rows' another (the signal a test plants rides on it)."""
    for i, row in enumerate(rows):
        words = ["w1", "w2", "w3"] if i % 2 == 0 else ["w7", "w8", "w9"]
        row.prompt = " ".join(words[(i + j) % 3] for j in range(4 + i % 5))
    return rows


def _planted(n=48):
    """The first vocabulary's prompts skip layer 2, the second's repeat it."""
    rows = two_vocabularies(synthetic_rows(n))
    for i, row in enumerate(rows):
        row.decisions = [1, 1, 0 if i % 2 == 0 else 2, 1]
        row.correct_paths = [row.decisions]
    return rows


def knn_and_its_control(tmp_path, paths, config, neighbours, layers=4, **extra) -> dict:
    """Train a knn router and its shuffled control on ``paths``; their metrics by control."""
    found = {}
    for control in ("none", "shuffled"):
        routed = RoutedModel.from_pretrained(tiny_model("llama", num_hidden_layers=layers))
        found[control] = train_routers(
            routed,
            str(paths),
            str(tmp_path / control),
            tokenizer=tiny_tokenizer(),
            router="knn",
            neighbours=neighbours,
            control=control,
            **config,
            **extra,
        )
    return found


def test_knn_finds_a_planted_signal_and_the_shuffled_control_does_not(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config.update(logger="none", val_fraction=0.25)
    paths = write_rows(tmp_path / "paths.jsonl", _planted())
    found = knn_and_its_control(tmp_path, paths, config, neighbours=3)
    for control, metrics in found.items():
        assert METRIC_KEYS <= set(metrics)
        saved = json.loads((tmp_path / control / "router_config.json").read_text())
        assert (saved["kind"], saved["examples"], saved["neighbours"]) == ("knn", 36, 3)
        assert json.loads((tmp_path / control / "run.json").read_text())["control"] == control
    assert found["none"]["macro_f1"] == 1.0
    assert found["shuffled"]["macro_f1"] < 0.8


def test_a_knn_router_reloads_and_routes_as_it_was_trained(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config.update(logger="none")
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(12))
    train_routers(
        routed, str(paths), str(tmp_path / "out"), tokenizer=tiny_tokenizer(), router="knn", **config
    )
    reloaded = RoutedModel.from_pretrained(tiny_model("llama"), routers=tmp_path / "out")
    ids, mask = prompts()
    decisions = reloaded.route(ids, mask)
    assert torch.equal(decisions, routed.route(ids, mask))
    pooled, valid = reloaded.layer_inputs(ids, mask, decisions=decisions)
    assert torch.equal(reloaded.routers.forward_pooled(pooled, valid).argmax(-1), decisions)


def test_knn_arguments_are_checked(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    paths = write_rows(tmp_path / "paths.jsonl", synthetic_rows(4))
    for extra, message in [
        ({"router": "knn", "online": True}, "cannot train online"),
        ({"neighbours": 0}, "neighbours must be a whole number >= 1"),
        ({"control": "permuted"}, "control must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            train_routers(
                routed, str(paths), str(tmp_path / "o"), tokenizer=tiny_tokenizer(), **{**config, **extra}
            )


def test_knn_ties_go_to_execute_and_bad_feature_shapes_are_refused():
    routed = RoutedModel(tiny_model("llama"))
    routers = routed.add_routers(num_windows=2, kind="knn", neighbours=2, examples=4)
    ids, mask = prompts()
    assert routed.route(ids, mask).eq(1).all(), "an unfitted knn router (uniform tables) executes every layer"
    torch.manual_seed(0)
    pairs = torch.randn(2, 1, 1, 32) * 5
    pooled = pairs.repeat_interleave(2, 0).expand(4, 4, 2, 32) + 0.01 * torch.randn(4, 4, 2, 32)
    valid = torch.ones(4, 4, 2, dtype=torch.bool)
    tables = _one_hot([0, 1, 0, 1])  # prompts 0-1 and 2-3 are neighbours: each pair splits skip 1 to 1
    routers.fit_neighbours(pooled, valid, tables)
    assert routers.forward_pooled(pooled, valid).argmax(-1).ne(0).all()
    with pytest.raises(ValueError, match=r"got features \[4, 1, 2, 32\]"):
        routers.fit_neighbours(pooled[:, :1], valid[:, :1], tables)
