"""Soft targets: the share of each decision over every safe path, and the loss that reads them."""

import pytest
import torch
from test_features import synthetic_rows, tiny_tokenizer, write_rows
from tiny_models import tiny_model

from drllm.router import RoutedModel
from drllm.search.records import SearchRecord
from drllm.train.loss import focal_loss, soft_focal_loss
from drllm.train.targets import hard_targets, soft_targets, target_table

L = 4


def _record(base_reward, evaluated, decisions=(1, 0, 1, 1), **info):
    supervision = {"evaluated": [{"path": p, "reward": r, "margin": m} for p, r, m in evaluated], **info}
    return SearchRecord("x", "p", list(decisions), base_reward=base_reward, supervision=supervision)


def test_soft_targets_weigh_every_safe_path_shorter_ones_more():
    record = _record(
        1.0,
        [
            ("1111", 1.0, 1.0),  # the full path: weight 0.5
            ("1011", 1.0, 0.5),  # safe, one layer saved: weight 2
            ("1101", 1.0, -0.1),  # keeps the answer below the safe margin: left out
            ("1112", 0.0, -2.0),  # loses the answer: left out
            ("0101", 1.0, 0.3),  # safe, two layers saved: weight 4
        ],
    )
    table = soft_targets(record, L, safe_margin=0.0)
    total = 0.5 + 2 + 4
    expected = torch.tensor(
        [
            [4 / total, 2.5 / total, 0],
            [2 / total, 4.5 / total, 0],
            [4 / total, 2.5 / total, 0],
            [0, 1, 0],
        ]
    )
    torch.testing.assert_close(table, expected)
    torch.testing.assert_close(table.sum(-1), torch.ones(L))
    raised = soft_targets(record, L, safe_margin=0.4)  # only 1011 stays beside the full path
    torch.testing.assert_close(raised[1], torch.tensor([2 / 2.5, 0.5 / 2.5, 0]))


def test_base_wrong_examples_learn_only_trusted_fixes():
    fixes = [("1111", 0.0, -1.0), ("1011", 1.0, 0.2)]
    untrusted = soft_targets(_record(0.0, fixes, decisions=(1, 0, 1, 1)), L)
    assert torch.equal(untrusted, hard_targets(SearchRecord("x", "p", [1] * L), L))
    trusted = soft_targets(_record(0.0, fixes, decisions=(1, 0, 1, 1), trusted_fix=True), L)
    torch.testing.assert_close(trusted[1], torch.tensor([2 / 2.5, 0.5 / 2.5, 0]))


def test_a_trusted_fix_is_learned_on_its_largest_margin_path_not_the_chosen_one():
    fixes = [("1111", 0.0, -1.0), ("1011", 1.0, 0.2), ("0111", 1.0, 3.0)]
    record = _record(
        0.0, fixes, decisions=(1, 0, 1, 1), trusted_fix=True, fix={"path": "0111", "margin": 3.0}
    )
    table = soft_targets(record, L)
    torch.testing.assert_close(table[0], torch.tensor([2 / 2.5, 0.5 / 2.5, 0]))
    torch.testing.assert_close(table[1], torch.tensor([0.0, 1.0, 0.0]))


def test_records_without_evaluated_paths_keep_their_hard_target_and_modes_are_checked():
    old = SearchRecord("x", "p", [1, 2, 0, 1])
    assert torch.equal(soft_targets(old, L), hard_targets(old, L))
    assert target_table([old, old], L, "hard").shape == (2, L, 3)
    with pytest.raises(ValueError, match="targets must be one of"):
        target_table([old], L, "fuzzy")


def test_soft_focal_loss_equals_focal_loss_on_one_hot_targets():
    torch.manual_seed(0)
    logits = torch.randn(5, L, 3)
    labels = torch.randint(0, 3, (5, L))
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    counts = [10.0, 70.0, 3.0]
    torch.testing.assert_close(soft_focal_loss(logits, one_hot, counts), focal_loss(logits, labels, counts))
    mixed = 0.5 * one_hot + 0.5 * torch.nn.functional.one_hot(torch.ones_like(labels), 3).float()
    assert soft_focal_loss(logits, mixed, counts) > 0


def test_training_on_soft_targets_runs_and_is_part_of_the_run_identity(tmp_path):
    from drllm.train.trainer import train_routers

    rows = synthetic_rows(12)
    paths = write_rows(tmp_path / "paths.jsonl", rows)
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    common = dict(tokenizer=tiny_tokenizer(), epochs=1, logger=None, num_windows=2, bottleneck=8)
    metrics = train_routers(routed, str(paths), str(tmp_path / "r"), targets="soft", **common)
    assert 0.0 <= metrics["macro_f1"] <= 1.0
    with pytest.raises(ValueError, match="targets: checkpoint 'soft', now 'hard'"):
        train_routers(routed, str(paths), str(tmp_path / "r"), **{**common, "epochs": 2, "targets": "hard"})
    with pytest.raises(ValueError, match="targets must be one of"):
        train_routers(routed, str(paths), str(tmp_path / "q"), targets="fuzzy", **common)
