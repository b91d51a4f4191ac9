"""``drllm signal``: the nearest-prompt test of per-input signal finds it where it is planted, not where it
is absent; it reads only searches with a sweep, and its features do not depend on padding or batching."""

import json

import numpy as np
import pytest
from tiny_models import tiny_model, tiny_tokenizer

from drllm.evaluation.signal import SweepTable, prompt_features, run_signal, signal_test, sweep_table
from drllm.router import RoutedModel
from drllm.search.records import SearchRecord
from drllm.search.runner import run_search

L = 8


def _table(n=120, planted=True, seed=0):
    """Two kinds of prompt; with ``planted``, skipping layer 3 is free for kind A and costly for B, layer 5
    the other way round; every other skip costs a little. Without it, the costs ignore the kind."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    features = rng.normal(size=(n, 6)) + 4.0 * kind[:, None]
    base = rng.uniform(0.5, 1.5, n)
    skip = base[:, None] - 0.6 + 0.05 * rng.normal(size=(n, L))
    source = kind if planted else rng.integers(0, 2, n)
    skip[:, 3] = base - np.where(source == 0, 0.0, 2.0)
    skip[:, 5] = base - np.where(source == 0, 2.0, 0.0)
    repeat = base[:, None] + 0.05 * rng.normal(size=(n, L))
    table = SweepTable([f"x{i}" for i in range(n)], ["p"] * n, base, {"skip": skip, "repeat": repeat}, True)
    return features, table


def test_planted_signal_is_found_and_beats_static_and_the_shuffled_control():
    features, table = _table(planted=True)
    result = signal_test(features, table, k=8, folds=4)
    skip = result["edits"]["skip"]
    assert skip["signal"]
    assert skip["knn_vs_static"]["margin_change"]["low"] > 0
    assert skip["knn_vs_knn-shuffled"]["margin_change"]["low"] > 0
    assert (
        skip["predictors"]["knn"]["regret"]["value"] < 0.2 < skip["predictors"]["static"]["regret"]["value"]
    )
    assert skip["predictors"]["static"]["distinct_layers"] <= 4  # one choice per fold
    assert skip["predictors"]["oracle"]["regret"]["value"] == 0.0


def test_no_signal_is_claimed_when_the_costs_ignore_the_prompt():
    features, table = _table(planted=False)
    result = signal_test(features, table, k=8, folds=4)
    assert not result["edits"]["skip"]["signal"] and not result["edits"]["repeat"]["signal"]


def test_protected_layers_are_never_chosen_and_bad_settings_are_refused():
    features, table = _table()
    result = signal_test(features, table, k=4, folds=3, protect=(3, 5))
    for p in result["edits"]["skip"]["predictors"].values():
        assert p["most_chosen_layer"] not in (3, 5)
    with pytest.raises(ValueError, match="every layer is protected"):
        signal_test(features, table, protect=tuple(range(L)))
    with pytest.raises(ValueError, match="protected layer 9 does not exist"):
        signal_test(features, table, protect=(9,))
    with pytest.raises(ValueError, match="folds must lie in 2..120"):
        signal_test(features, table, folds=1)
    with pytest.raises(ValueError, match="k=96 neighbours of 96 training prompts.*just the static choice"):
        signal_test(features, table, k=96, folds=5)  # every training prompt a neighbour: knn == static
    with pytest.raises(ValueError, match="3 feature rows for 120 examples"):
        signal_test(features[:3], table)


def test_records_without_a_sweep_are_refused_by_name():
    rows = [SearchRecord(id=f"r{i}", prompt="p", decisions=[1] * L, supervision={}) for i in range(5)]
    with pytest.raises(
        ValueError, match=r"f.jsonl: 5 of 5 records have no single-edit sweep \(first: 'r0'\)"
    ):
        sweep_table(rows, "f.jsonl")


def test_prompt_features_do_not_depend_on_padding_or_the_batch():
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    tok = tiny_tokenizer()
    prompts = ["red cat", "the blue dog runs far away", "sun"]
    together = prompt_features(routed, tok, prompts, batch_size=3)
    alone = np.concatenate([prompt_features(routed, tok, [p]) for p in prompts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert together.shape == (3, routed.hidden_size)
    with pytest.raises(ValueError, match="layer must lie in"):
        prompt_features(routed, tok, prompts, layer=routed.num_layers)


def test_run_signal_end_to_end_on_a_searched_sweep(tmp_path, mc_file):
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    paths = tmp_path / "paths.jsonl"
    run_search(routed, f"jsonl:{mc_file}", str(paths), tokenizer=tiny_tokenizer(), simulations=2, sweep=True)
    result = run_signal(
        routed, str(paths), str(tmp_path / "signal"), k=3, folds=3, tokenizer=tiny_tokenizer()
    )
    written = json.loads((tmp_path / "signal" / "signal.json").read_text())
    assert written["examples"] == 12 and written["edits"].keys() == {"skip", "repeat"}
    for entry in result["edits"].values():
        oracle = entry["predictors"]["oracle"]["margin_change"]["value"]
        assert all(p["margin_change"]["value"] <= oracle + 1e-9 for p in entry["predictors"].values())
        assert all(p["regret"]["low"] >= -1e-9 for p in entry["predictors"].values())
    assert "## Choosing one layer to skip" in (tmp_path / "signal" / "signal.md").read_text()
    no_sweep = tmp_path / "plain.jsonl"
    run_search(
        routed, f"jsonl:{mc_file}", str(no_sweep), tokenizer=tiny_tokenizer(), simulations=2, sweep=False
    )
    with pytest.raises(ValueError, match="search them with --sweep true"):
        run_signal(routed, str(no_sweep), str(tmp_path / "s2"), tokenizer=tiny_tokenizer())
    assert not (tmp_path / "s2").exists(), "refused before anything is written"


def test_signal_command(tiny_model_dir, mc_file, tmp_path):
    from drllm.cli.__main__ import main

    paths = tmp_path / "p.jsonl"
    main(["search", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--output", str(paths)])
    main(
        [
            "signal",
            "--model",
            tiny_model_dir,
            "--paths",
            str(paths),
            "--output",
            str(tmp_path / "s"),
            "--k",
            "4",
        ]
    )
    main(
        ["signal", "--model", tiny_model_dir, "--paths", str(paths), "--output", str(tmp_path / "t")]
        + ["--k", "2", "--folds", "3", "--protect", "0,3"]
    )
    first = json.loads((tmp_path / "s" / "signal.json").read_text())
    second = json.loads((tmp_path / "t" / "signal.json").read_text())
    assert first["protected"] == [0, 1, 3] and second["protected"] == [0, 3] and second["k"] == 2
