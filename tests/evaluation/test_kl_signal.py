"""``drllm signal --target kl``: the KL matrix of single-layer skips and the signal test on it."""

import json

import numpy as np
import pytest
from task_files import choice_file

from drllm.evaluation.kl_signal import kl_signal_test
from drllm.evaluation.signal import run_signal
from drllm.router import RoutedModel
from drllm.search.closeness import path_kl


def test_planted_per_prompt_signal_is_found_and_a_prompt_blind_cost_is_not():
    rng = np.random.default_rng(0)
    n, L = 60, 6
    allowed = np.array([False, True, True, True, True, False])
    group = rng.integers(0, 2, n)
    features = np.stack([group * 3.0 + rng.normal(0, 0.1, n), rng.normal(0, 1, n)], 1)
    K = np.full((n, L), 1.0) + rng.uniform(0, 0.05, (n, L))
    K[np.arange(n), np.where(group == 1, 2, 4)] = 0.1  # each group loses a different layer for free
    found = kl_signal_test(features, K, allowed, k=5, folds=5, seed=0)
    assert found["signal"] and found["knn_vs_static"]["high"] < 0
    blind = kl_signal_test(features, np.tile(K[0], (n, 1)), allowed, k=5, folds=5, seed=0)
    assert not blind["signal"]


def test_run_signal_kl_matrix_equals_each_skip_scored_alone(tmp_path, tiny_model_dir):
    task = choice_file(tmp_path / "mc.jsonl", n=10)
    out = tmp_path / "sig"
    result = run_signal(
        tiny_model_dir,
        output=str(out),
        target="kl",
        tasks=[task],
        examples_per_task=10,
        continuation_tokens=3,
        k=3,
        folds=2,
        batch_size=4,
        device="cpu",
        protect=(0, -1),
    )
    saved = json.loads((out / "signal_kl.json").read_text())
    assert saved["pooled"]["prompts"] == 10 and "Token-level" in (out / "signal_kl.md").read_text()
    h = result["headroom"]
    assert 0 <= h["pair_share"] <= h["token_share_some_layer"] <= 1 and h["tokens"] > 0
    rows = [json.loads(x) for x in (out / "teacher" / "teacher.jsonl").read_text().splitlines()]
    routed = RoutedModel.from_pretrained(tiny_model_dir)
    oracle = result["pooled"]["predictors"]["oracle"]["kl"]["value"]
    per_layer = np.array([path_kl(routed, rows, p, 4, 0) for p in ([1, 0, 1, 1], [1, 1, 0, 1])])
    assert oracle == pytest.approx(per_layer.min(0).mean(), rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="threshold"):
        run_signal(tiny_model_dir, output=str(tmp_path / "x"), target="kl", tasks=[task], threshold=0)


def test_signal_kl_names_a_task_too_small_for_k_and_refuses_k_for_the_pool(tmp_path, tiny_model_dir):
    big, small = choice_file(tmp_path / "big.jsonl", n=10), choice_file(tmp_path / "small.jsonl", n=4)
    common = dict(target="kl", continuation_tokens=2, folds=2, batch_size=4, device="cpu")
    result = run_signal(tiny_model_dir, output=str(tmp_path / "s"), tasks=[big, small], k=3, **common)
    (task,) = result["too_few_for_per_task"]
    assert task.endswith("small.jsonl") and list(result["per_task"]) == [big]
    assert "No test for" in (tmp_path / "s" / "signal_kl.md").read_text()
    with pytest.raises(ValueError, match="k=7 neighbours of 7 training prompts"):
        run_signal(tiny_model_dir, output=str(tmp_path / "t"), tasks=[big, small], k=7, **common)
