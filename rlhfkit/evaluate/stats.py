"""Small statistics for evaluation: win rates with intervals, bootstrap. Pure functions, no models."""

from __future__ import annotations

import math
import random


def win_rate(a_scores: list[float], b_scores: list[float], tie_eps: float = 1e-9) -> tuple[float, float, float]:
    """Share of paired items where A beats B (a tie counts half), with a 95% interval.

    The interval is the normal approximation on the per-item outcomes (1, 0.5, 0), as AlpacaFarm
    reports win rates with standard errors.
    """
    if len(a_scores) != len(b_scores) or not a_scores:
        raise ValueError("win_rate needs two non-empty score lists of the same length")
    outcomes = [1.0 if a > b + tie_eps else 0.0 if b > a + tie_eps else 0.5 for a, b in zip(a_scores, b_scores)]
    n = len(outcomes)
    mean = sum(outcomes) / n
    var = sum((o - mean) ** 2 for o in outcomes) / max(n - 1, 1)
    half = 1.96 * math.sqrt(var / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def bootstrap_ci(values: list[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1))
