"""Intervals and paired tests: against closed forms and scipy, and deterministic under a seed."""

import math
import random

import numpy as np
import pytest

from drllm.evaluation.stats import bootstrap_interval, mcnemar_exact, paired_difference


def test_bootstrap_interval_is_seeded_and_close_to_the_normal_approximation():
    rng = random.Random(0)
    outcomes = [rng.random() < 0.6 for _ in range(570)]
    first, again = bootstrap_interval(outcomes), bootstrap_interval(outcomes)
    assert first == again  # seeded: the same outcomes give the same interval
    p = sum(outcomes) / len(outcomes)
    half = 1.96 * math.sqrt(p * (1 - p) / len(outcomes))
    assert first.value == pytest.approx(p)
    assert first.low == pytest.approx(p - half, abs=0.01) and first.high == pytest.approx(p + half, abs=0.01)


def test_paired_difference_is_narrower_than_unpaired_for_correlated_methods():
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.5
    b = a.copy()
    flip = rng.choice(400, 12, replace=False)
    b[flip] = ~b[flip]  # b differs from a on 12 examples only
    diff = paired_difference(a, b)
    assert diff.value == pytest.approx(a.mean() - b.mean())
    unpaired = 1.96 * math.sqrt(2 * 0.25 / 400)
    assert diff.high - diff.low < unpaired  # pairing removes the shared variance
    with pytest.raises(ValueError, match="same examples"):
        paired_difference([1, 0], [1])


def test_mcnemar_exact_matches_the_binomial_test():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = [1] * 10 + [0] * 3 + [1] * 20 + [0] * 15  # 10 won by a, 3 won by b
    b = [0] * 10 + [1] * 3 + [1] * 20 + [0] * 15
    expected = scipy_stats.binomtest(3, 13, 0.5).pvalue
    assert mcnemar_exact(a, b) == pytest.approx(expected)
    assert mcnemar_exact(a, a) == 1.0
    assert mcnemar_exact([1, 0], [0, 1]) == 1.0


def test_empty_outcomes_are_refused():
    with pytest.raises(ValueError, match="at least one example"):
        bootstrap_interval([])


def test_wilson_interval_does_not_collapse_at_the_ends():
    from drllm.evaluation.stats import wilson_interval

    full = wilson_interval([True] * 10)
    assert full.value == 1.0 and full.high == 1.0 and full.low == pytest.approx(0.7225, abs=1e-3)
    none = wilson_interval([False] * 10)
    assert none.value == 0.0 and none.low == 0.0 and none.high == pytest.approx(0.2775, abs=1e-3)
    mid = wilson_interval([True] * 50 + [False] * 50)
    assert mid.low == pytest.approx(0.4038, abs=1e-3) and mid.high == pytest.approx(0.5962, abs=1e-3)
