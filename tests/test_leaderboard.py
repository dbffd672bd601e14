"""Bradley–Terry leaderboard (rlhfkit.evaluate.leaderboard) against cases worked out by hand."""

from __future__ import annotations

import math

import pytest

from rlhfkit.evaluate.leaderboard import ELO_SCALE, bradley_terry, fit_theta


def battles(a: str, b: str, wins: int, losses: int, ties: int = 0) -> list[tuple[str, str, float]]:
    return [(a, b, 1.0)] * wins + [(a, b, 0.0)] * losses + [(a, b, 0.5)] * ties


def test_two_models_theta_gap_is_the_log_odds_of_their_record():
    """One pair, a beats b 30 times and loses 10: the likelihood 30 log p + 10 log(1 - p) peaks at
    p = 3/4, so theta_a - theta_b = logit(3/4) = log 3; on the Elo scale 400 log10(3) = 190.85, split
    evenly around the mean of 1000."""
    rows = bradley_terry(battles("a", "b", 30, 10), n_bootstrap=0, l2=0.0)
    a, b = rows
    assert (a.model, b.model) == ("a", "b")
    assert a.rating - b.rating == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert (a.rating + b.rating) / 2 == pytest.approx(1000.0, abs=1e-9)
    assert (a.wins, a.losses, a.ties, a.battles) == (30, 10, 0, 40)
    assert (b.wins, b.losses, b.ties, b.battles) == (10, 30, 0, 40)
    assert math.isnan(a.lo) and math.isnan(a.hi)  # no bootstrap, no interval


def test_ties_count_as_half_a_win_each():
    """20 wins, 0 losses, 20 ties: with ties as half wins a has 30 and b 10 'wins' in 40 battles, the
    same likelihood as 30:10, so the gap is again log 3. 10:10 with any number of ties is even."""
    a, b = bradley_terry(battles("a", "b", 20, 0, 20), n_bootstrap=0, l2=0.0)
    assert (a.rating - b.rating) / ELO_SCALE == pytest.approx(math.log(3), abs=1e-9)
    assert (a.ties, b.ties, a.battles) == (20, 20, 40)
    even = bradley_terry(battles("x", "y", 10, 10, 7), n_bootstrap=0, l2=0.0)
    assert even[0].rating == pytest.approx(1000.0, abs=1e-9) and even[1].rating == pytest.approx(1000.0, abs=1e-9)


def test_a_chain_of_pairs_composes_its_log_odds():
    """a beats b 2:1 and b beats c 2:1, no other pairs: each pair's likelihood only involves its own
    gap, so each gap is log 2 and a - c = log 4 (a tree of comparisons has one free gap per edge).
    Ratings are centred: theta = (log 2, 0, -log 2)."""
    rows = bradley_terry(battles("a", "b", 4, 2) + battles("c", "b", 2, 4), n_bootstrap=0, l2=0.0)
    by = {r.model: r.rating for r in rows}
    assert [r.model for r in rows] == ["a", "b", "c"]
    # to the fit's convergence (the optimiser stops within ~1e-9 of the optimum; where, depends on the CPU's rounding)
    assert (by["a"] - by["b"]) / ELO_SCALE == pytest.approx(math.log(2), abs=1e-7)
    assert (by["a"] - by["c"]) / ELO_SCALE == pytest.approx(math.log(4), abs=1e-7)
    assert by["b"] == pytest.approx(1000.0, abs=1e-4)


def test_the_prior_only_keeps_an_undefeated_model_finite():
    """With the default l2 the 30:10 gap moves by under 1e-4 of log 3; an undefeated model gets a
    large but finite rating instead of infinity."""
    a, b = bradley_terry(battles("a", "b", 30, 10), n_bootstrap=0)
    assert (a.rating - b.rating) / ELO_SCALE == pytest.approx(math.log(3), rel=1e-4)
    top, bottom = bradley_terry(battles("a", "b", 5, 0), n_bootstrap=0)
    assert math.isfinite(top.rating) and top.rating - bottom.rating > 800


def test_bootstrap_interval_brackets_the_rating_and_narrows_with_more_battles():
    small = bradley_terry(battles("a", "b", 30, 10), n_bootstrap=300, seed=1)
    large = bradley_terry(battles("a", "b", 300, 100), n_bootstrap=300, seed=1)
    for rows in (small, large):
        for r in rows:
            assert r.lo <= r.rating <= r.hi
    width = lambda rows: rows[0].hi - rows[0].lo  # noqa: E731
    # The standard error shrinks like 1/sqrt(n): ten times the battles, about a third of the width.
    assert 0.2 < width(large) / width(small) < 0.5
    assert bradley_terry(battles("a", "b", 30, 10), n_bootstrap=300, seed=1) == small  # seeded


def test_a_model_missing_from_a_resample_is_left_out_of_that_resample():
    """'rare' plays once: about e^-1 of resamples leave it out; they must not crash or pull its
    interval towards the mean (it is nan there, and percentiles skip nan)."""
    rows = bradley_terry(battles("a", "b", 20, 20) + [("rare", "a", 1.0)], n_bootstrap=200)
    rare = next(r for r in rows if r.model == "rare")
    assert rare.battles == 1 and rare.lo <= rare.rating <= rare.hi and math.isfinite(rare.lo)


def test_recovers_the_order_of_simulated_strengths():
    import random

    rng = random.Random(0)
    strength = {f"m{i}": 0.4 * i for i in range(5)}
    sim = []
    for _ in range(3000):
        a, b = rng.sample(sorted(strength), 2)
        p = 1 / (1 + math.exp(-(strength[a] - strength[b])))
        sim.append((a, b, 1.0 if rng.random() < p else 0.0))
    rows = bradley_terry(sim, n_bootstrap=50)
    assert [r.model for r in rows] == ["m4", "m3", "m2", "m1", "m0"]
    span = (rows[0].rating - rows[-1].rating) / ELO_SCALE  # true span 1.6; ~0.1 standard error here
    assert span == pytest.approx(1.6, abs=0.25)


def test_malformed_battles_are_refused_with_their_index():
    with pytest.raises(ValueError, match="battle 1: a model cannot battle itself"):
        bradley_terry([("a", "b", 1.0), ("a", "a", 1.0)])
    with pytest.raises(ValueError, match="battle 0: outcome"):
        bradley_terry([("a", "b", 0.7)])
    assert bradley_terry([]) == []


def test_fit_theta_is_centred():
    import numpy as np

    theta = fit_theta(2, np.array([[0, 1]]), np.array([1.0]), np.array([3.0]), l2=1.0)
    assert theta.sum() == pytest.approx(0.0, abs=1e-12) and theta[0] > 0
