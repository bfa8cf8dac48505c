"""Spread over seeds: mean, standard deviation and t-intervals, from scipy.

With n seeds the 95% interval of a mean is mean +- t(0.975, n-1) * std / sqrt(n); with one seed
there is no spread to measure, and the interval is NaN rather than a made-up zero width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    std: float
    low: float
    high: float
    n: int


def mean_ci(values: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The mean of `values`, their sample std (ddof=1), and the t-interval of the mean."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        mean = float(values.mean()) if n else math.nan
        return Interval(mean, math.nan, math.nan, math.nan, n)
    from scipy import stats  # here, not at the top: it costs every search's driver 1.3 s of CPU

    low, high = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return Interval(float(values.mean()), float(values.std(ddof=1)), float(low), float(high), n)


def gap_ci(first: np.ndarray, second: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """mean(first) - mean(second), with Welch's t-interval (no equal-variance assumption)."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    gap = float(first.mean() - second.mean())
    if len(first) < 2 or len(second) < 2:
        return Interval(gap, math.nan, math.nan, math.nan, min(len(first), len(second)))
    from scipy import stats

    test = stats.ttest_ind(first, second, equal_var=False)
    low, high = test.confidence_interval(confidence)
    spread = math.sqrt(first.var(ddof=1) / len(first) + second.var(ddof=1) / len(second))
    return Interval(gap, spread, float(low), float(high), min(len(first), len(second)))
