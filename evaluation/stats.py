"""Intervals and paired tests for per-example outcomes, so an evaluation can tell methods apart.

- ``bootstrap_interval``: a percentile bootstrap over examples of a mean (fidelity, KL), seeded, so the
  same outcomes always give the same interval.
- ``wilson_interval``: a share of 0/1 outcomes (accuracy, agreement) with its Wilson score interval, which
  stays honest at 0% and 100% and for small n.
- ``paired_difference``: mean of ``a - b`` over the same examples with a paired bootstrap interval (the
  examples are resampled together, which is what makes a small difference between correlated methods
  detectable).
- ``mcnemar_exact``: the exact two-sided McNemar test on 0/1 outcomes: under the null hypothesis each of
  the ``n`` discordant examples (one method right, the other wrong) is equally likely to go either way,
  so the number won by one side is Binomial(n, 1/2); the p-value is the probability of a split at least
  as uneven, ``min(1, 2 * P[X <= min(b, c)])``.

Pure Python and numpy; every function takes plain sequences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        """``{"value", "low", "high"}`` for JSON."""
        return {"value": self.value, "low": self.low, "high": self.high}


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """The mean of ``values`` with a percentile bootstrap interval over examples.

    Raises:
        ValueError: for no values or a confidence outside (0, 1).
    """
    x = np.asarray(values, dtype=float)
    _check(x, confidence)
    means = x[_indices(len(x), resamples, seed)].mean(axis=1)
    return _interval(float(x.mean()), means, confidence)


def wilson_interval(outcomes: Sequence[bool], confidence: float = CONFIDENCE) -> Interval:
    """The share of true ``outcomes`` with its Wilson score interval.

    Unlike a bootstrap over 0/1 outcomes it does not collapse to a point at 0% or 100%: 10 of 10 right gives
    [72.2%, 100%] at 95%, not [100%, 100%].

    Raises:
        ValueError: for no outcomes or a confidence outside (0, 1).
    """
    x = np.asarray(outcomes, dtype=float)
    _check(x, confidence)
    n, p = len(x), float(x.mean())
    z = float(NormalDist().inv_cdf(0.5 + confidence / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = (0.0 if p == 0 else max(0.0, centre - half)), (1.0 if p == 1 else min(1.0, centre + half))
    return Interval(p, low, high)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """``mean(a - b)`` over the same examples, with a paired bootstrap interval.

    Raises:
        ValueError: when ``a`` and ``b`` differ in length or are empty.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired outcomes need the same examples: {len(x)} against {len(y)} values")
    d = x - y
    _check(d, confidence)
    means = d[_indices(len(d), resamples, seed)].mean(axis=1)
    return _interval(float(d.mean()), means, confidence)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value for paired 0/1 outcomes (1.0 when no example is discordant).

    Raises:
        ValueError: when ``a`` and ``b`` differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same examples: {len(a)} against {len(b)} values")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def _check(x: np.ndarray, confidence: float) -> None:
    if x.size == 0:
        raise ValueError("no outcomes: an interval needs at least one example")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _interval(value: float, means: np.ndarray, confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(value, float(low), float(high))
