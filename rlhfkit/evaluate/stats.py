"""Small statistics for evaluation: win rates with intervals, proportions, bootstrap. Pure functions, no models."""

from __future__ import annotations

import math
import random

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def mean_interval(outcomes: list[float]) -> tuple[float, float, float]:
    """Mean of per-item outcomes in [0, 1] with a 95% normal-approximation interval, clipped to [0, 1].

    The standard error uses the sample variance (n - 1), as AlpacaFarm reports win rates with standard errors
    (Dubois et al. 2023). When every outcome is equal the interval is a point: use ``proportion_interval`` for
    counts near 0 or n where that matters.
    """
    if not outcomes:
        raise ValueError("mean_interval needs at least one outcome")
    n = len(outcomes)
    mean = sum(outcomes) / n
    var = sum((o - mean) ** 2 for o in outcomes) / max(n - 1, 1)
    half = Z95 * math.sqrt(var / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def win_rate(a_scores: list[float], b_scores: list[float], tie_eps: float = 1e-9) -> tuple[float, float, float]:
    """Share of paired items where A beats B (a tie counts half), with a 95% interval (``mean_interval``).

    Scores within ``tie_eps`` of each other are a tie.
    """
    if len(a_scores) != len(b_scores) or not a_scores:
        raise ValueError("win_rate needs two non-empty score lists of the same length")
    outcomes = [1.0 if a > b + tie_eps else 0.0 if b > a + tie_eps else 0.5 for a, b in zip(a_scores, b_scores)]
    return mean_interval(outcomes)


def preference_win_rate(preferences: list[float]) -> tuple[float, float, float]:
    """Win rate from a judge's per-item preferences for the model over the baseline: 1 the model wins, 0 the
    baseline wins, 0.5 a tie, or a probability in between (a judge's soft preference, as AlpacaEval 2's weighted
    judge gives). Returns (mean, 95% low, 95% high)."""
    if any(not 0.0 <= p <= 1.0 for p in preferences):
        raise ValueError("preferences must lie in [0, 1] (1 = the model is preferred, 0 = the baseline)")
    return mean_interval(list(preferences))


def proportion_interval(k: int, n: int) -> tuple[float, float, float]:
    """Share k / n with the 95% Wilson score interval (Wilson 1927), which stays inside [0, 1] and is not a point
    at 0 of n or n of n (0 of 50 -> [0, 0.071]); used for refusal and compliance rates."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"proportion_interval needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    p, z2 = k / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(values: list[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1))
