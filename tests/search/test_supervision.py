"""Continuous scores, the single-edit sweep and the label controls recorded by every search."""

from dataclasses import replace

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import RoutedModel
from drllm.search.evaluator import Outcome, PathEvaluator
from drllm.search.records import SearchRecord, read_records
from drllm.search.runner import run_search
from drllm.search.supervision import Supervision, format_reliability, reliability, single_edits, wrong_gold
from drllm.search.tasks import get_task


@pytest.fixture(scope="module")
def routed():
    torch.manual_seed(0)
    return RoutedModel(tiny_model("llama", seed=5))


def test_records_carry_margins_sweep_and_every_evaluated_path(routed, mc_file, tmp_path):
    out = tmp_path / "p.jsonl"
    run_search(routed, f"jsonl:{mc_file}", str(out), tokenizer=tiny_tokenizer(), simulations=6, limit=4)
    task = get_task(f"jsonl:{mc_file}")
    ev = PathEvaluator(routed, tiny_tokenizer(), task)
    for record in read_records(out):
        sup = record.supervision
        prepared = ev.prepare([next(ex for ex in task.load() if str(ex.id) == record.id)])[0]
        base = ev.outcomes([(prepared, (1,) * 4)])[0]
        assert sup["base_margin"] == pytest.approx(base.margin, abs=1e-4)
        assert len(sup["sweep"]["skip"]) == len(sup["sweep"]["repeat"]) == 4
        skip1 = ev.outcomes([(prepared, (1, 0, 1, 1))])[0]
        assert sup["sweep"]["skip"][1] == pytest.approx(skip1.margin, abs=1e-4)
        evaluated = {e["path"]: e for e in sup["evaluated"]}
        assert "1111" in evaluated and len(evaluated) >= 1 + 8  # the root, the sweep and the tree's paths
        chosen = "".join(map(str, record.decisions))
        assert evaluated[chosen]["reward"] == record.reward
        best = max(e["margin"] for e in sup["evaluated"])
        assert sup["margin_gain"] == pytest.approx(best - sup["base_margin"])
        if record.base_reward >= 1.0:
            safe = [
                e for p, e in evaluated.items() if p != "1111" and e["reward"] >= 1.0 and e["margin"] >= 0
            ]
            assert sup["safe_paths"] == len(safe)


def _controlled_search(routed, mc_file, tmp_path, **settings):
    """A search with the wrong-gold control and two seeds; its summary and records."""
    out = tmp_path / "p.jsonl"
    common = dict(tokenizer=tiny_tokenizer(), control="wrong-gold", seeds=2)
    summary = run_search(routed, f"jsonl:{mc_file}", str(out), **common, **settings)
    return summary, read_records(out)


def test_wrong_gold_control_and_two_seeds(routed, mc_file, tmp_path):
    summary, records = _controlled_search(routed, mc_file, tmp_path, simulations=8, limit=8, sweep=False)
    task = get_task(f"jsonl:{mc_file}")
    examples = {str(ex.id): ex for ex in task.load()}
    for r in records:
        sup = r.supervision
        ex = examples[r.id]
        assert sup["control"]["gold"] == wrong_gold(ex, len(ex.choices), ex.answer, 0) != ex.answer
        first, second = sup["seeds"]["paths"]
        both = {i for i in range(4) if first[i] == second[i] != 1}
        assert {i for i, d in enumerate(r.decisions) if d != 1} == both  # only the agreed edits are kept
        assert sup["seeds"]["agreed_reward"] == r.reward
        assert "sweep" not in sup
    numbers = reliability(records)
    assert summary["wrong_gold_fix_rate"] == numbers["wrong_gold_fix_rate"]
    overlaps = []
    for r in records:  # each seed's evaluated path with the largest gold margin, compared by edits
        sup = r.supervision
        a, b = (
            max(ev, key=lambda e: e["margin"])["path"] for ev in (sup["evaluated"], sup["seeds"]["evaluated"])
        )
        x, y = ({(i, c) for i, c in enumerate(p) if c != "1"} for p in (a, b))
        overlaps.append(len(x & y) / len(x | y) if x | y else 1.0)
    assert numbers["best_margin_agreement"] == pytest.approx(sum(overlaps) / len(overlaps))
    assert "best-margin agreement" in format_reliability(numbers)
    assert 0.0 <= numbers["seed_agreement"] <= 1.0 and "wrong-gold fix rate" in format_reliability(numbers)


def test_single_edits_and_bad_settings():
    edits = single_edits(3)
    assert edits == [(0, 1, 1), (1, 0, 1), (1, 1, 0), (2, 1, 1), (1, 2, 1), (1, 1, 2)]
    with pytest.raises(ValueError, match="unknown control 'nope'"):
        Supervision(control="nope")
    with pytest.raises(ValueError, match="seeds must be 1 or 2"):
        Supervision(seeds=3)


def test_an_outcome_rescored_for_another_gold_equals_scoring_with_that_gold(routed, mc_file):
    task = get_task(f"jsonl:{mc_file}")
    ev = PathEvaluator(routed, tiny_tokenizer(), task)
    prepared = ev.prepare(task.load()[:2])
    for p in prepared:
        for path in ((1, 1, 1, 1), (1, 0, 1, 1), (1, 2, 0, 1)):
            outcome = ev.outcomes([(p, path)])[0]
            for gold in range(len(p.targets)):
                fresh = replace(p, gold=gold, prefix=None, base=None)  # run from scratch for this gold
                direct = ev.outcomes([(fresh, path)])[0]
                again = outcome.with_gold(gold)
                assert again.reward == direct.reward
                assert again.margin == pytest.approx(direct.margin, abs=1e-5)
                shared = p.with_gold(gold)  # reuses p's prefix, its base outcome rescored
                assert shared.prefix is p.prefix and shared.base_reward == fresh.base_reward
                assert ev.outcomes([(shared, path)])[0].margin == pytest.approx(direct.margin, abs=1e-5)
    with pytest.raises(ValueError, match="no per-option log-likelihoods"):
        Outcome(1.0, margin=0.5).with_gold(0)
    with pytest.raises(ValueError, match="gold must be an option"):
        outcome.with_gold(len(prepared[-1].targets))


def test_the_control_gets_the_sweep_rescored_and_the_second_seed_keeps_its_paths(routed, mc_file, tmp_path):
    _, records = _controlled_search(routed, mc_file, tmp_path, simulations=3, limit=4)
    task = get_task(f"jsonl:{mc_file}")
    ev = PathEvaluator(routed, tiny_tokenizer(), task)
    examples = {str(ex.id): ex for ex in task.load()}
    for record in records:
        sup = record.supervision
        p = ev.prepare([examples[record.id]])[0]
        swept = [o.with_gold(sup["control"]["gold"]) for o in ev.outcomes([(p, e) for e in single_edits(4)])]
        # the control's best margin covers the whole sweep (it was primed with it), beside its own tree
        assert sup["control"]["best_margin"] >= max(o.margin for o in swept) - 1e-5
        gain = sup["control"]["best_margin"] - sup["control"]["base_margin"]
        assert sup["control"]["margin_gain"] == pytest.approx(gain)
        second = {e["path"] for e in sup["seeds"]["evaluated"]}
        assert {"".join(map(str, e)) for e in single_edits(4)} <= second
        assert "".join(map(str, sup["seeds"]["paths"][1])) in second


def test_fix_margin_decides_what_counts_as_a_fix_for_the_example_and_its_control(routed, mc_file, tmp_path):
    common = dict(tokenizer=tiny_tokenizer(), simulations=3, limit=8, control="wrong-gold")
    run_search(routed, f"jsonl:{mc_file}", str(tmp_path / "a.jsonl"), **common)
    run_search(routed, f"jsonl:{mc_file}", str(tmp_path / "b.jsonl"), fix_margin=1e6, **common)
    loose, strict = read_records(tmp_path / "a.jsonl"), read_records(tmp_path / "b.jsonl")
    wrong = [r for r in loose if r.base_reward < 1.0]
    assert wrong, "the tiny model gets some questions wrong"
    for r in wrong:
        correct = [e for e in r.supervision["evaluated"] if e["reward"] >= 1.0]
        if correct:  # the fix is the correct path with the largest margin
            assert r.supervision["fix"]["margin"] == max(e["margin"] for e in correct)
        else:
            assert "fix" not in r.supervision and not r.supervision["trusted_fix"]
    for r in strict:  # nothing wins by a million nats: no fix, no trusted fix, no lucky control fix
        assert "fix" not in r.supervision and not r.supervision["control"]["fixed"]
        assert not r.supervision.get("trusted_fix", False)
    assert {r.settings["fix_margin"] for r in strict} == {1e6}
    with pytest.raises(ValueError, match="fix_margin must be a finite number >= 0"):
        run_search(routed, f"jsonl:{mc_file}", str(tmp_path / "c.jsonl"), fix_margin=-1.0, **common)
    with pytest.raises(ValueError, match="fix_margin must be a finite number >= 0"):
        Supervision(fix_margin=float("nan"))


def test_reliability_compares_gold_and_wrong_gold_fixes_at_every_margin():
    def record(base, gold_margins, control_base, control_best):
        evaluated = [{"path": "1111", "reward": base, "margin": -1.0}]
        evaluated += [
            {"path": f"{k:04b}", "reward": float(m > 0), "margin": m} for k, m in enumerate(gold_margins)
        ]
        control = {"base_reward": control_base, "best_margin": control_best, "fixed": control_best > 0}
        return SearchRecord(
            "x", "p", [1] * 4, base_reward=base, supervision={"evaluated": evaluated, "control": control}
        )

    records = [
        record(0.0, [0.5, 2.5], 0.0, 1.5),  # gold fixed by 2.5 nats, the control by 1.5
        record(0.0, [-0.5], 0.0, -0.2),  # neither fixed
        record(0.0, [7.0], 0.0, 0.5),
        record(0.0, [3.0], 1.0, 9.0),  # the control starts right: not paired
        record(1.0, [3.0], 0.0, 9.0),  # the model starts right: not paired
    ]
    rows = {x["margin"]: x for x in reliability(records)["fixes_by_margin"]}
    assert rows[0.0] == {"margin": 0.0, "fixed": 2 / 3, "control": 2 / 3, "examples": 3}
    assert rows[2.0]["fixed"] == 2 / 3 and rows[2.0]["control"] == 0.0
    assert rows[6.0]["fixed"] == 1 / 3 and rows[8.0]["fixed"] == 0.0
    assert "m=2: 67% | 0%" in format_reliability(reliability(records))
