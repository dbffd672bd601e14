"""Gao et al. 2022's over-optimisation curves: closed-form least squares, peaks worked out by hand.

Run: PYTHONPATH=. python -m pytest tests/test_overoptimisation.py -q
"""

import math

import numpy as np
import pytest

from rlhfkit.evaluate.overoptimisation import fit_gao


def test_rl_form_recovered_exactly_with_its_peak():
    """R(d) = d (1 - 0.5 log d): peak where a - b (log d + 1) = 0 -> log d* = a / b - 1 = 1, d* = e, KL* = e^2 =
    7.389056, R(d*) = b d* = e / 2 = 1.359141. Noise-free points recover a = 1, b = 0.5, R^2 = 1."""
    d = np.linspace(0.2, 5.0, 12)
    fit = fit_gao(d**2, d * (1 - 0.5 * np.log(d)), form="rl", reward_at_zero=0.0)
    assert (fit.a, fit.b, fit.c) == (pytest.approx(1.0, abs=1e-10), pytest.approx(0.5, abs=1e-10), 0.0)
    assert fit.peak_d == pytest.approx(math.e, abs=1e-9)
    assert fit.peak_kl == pytest.approx(math.e**2, abs=1e-8)
    assert fit.peak_reward == pytest.approx(math.e / 2, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)


def test_bon_form_recovered_with_a_fitted_offset():
    """R(d) = 3 + d (2 - 0.5 d): peak at d* = a / (2 b) = 2 (KL 4), R(d*) = 3 + a^2 / (4 b) = 3 + 2 = 5."""
    d = np.linspace(0.0, 4.0, 9)
    fit = fit_gao(d**2, 3 + d * (2 - 0.5 * d), form="bon")
    assert (fit.a, fit.b, fit.c) == (pytest.approx(2.0), pytest.approx(0.5), pytest.approx(3.0))
    assert (fit.peak_d, fit.peak_kl, fit.peak_reward) == (pytest.approx(2.0), pytest.approx(4.0), pytest.approx(5.0))
    np.testing.assert_allclose(fit.predict([0.0, 2.0]), [3.0, 5.0], atol=1e-9)


def test_a_rising_curve_has_no_peak():
    """R(d) = d (2 + 0.1 log d) is b = -0.1 < 0 in the RL form: it keeps rising, so no peak."""
    d = np.linspace(0.5, 4.0, 8)
    fit = fit_gao(d**2, d * (2 + 0.1 * np.log(d)), reward_at_zero=0.0)
    assert fit.b == pytest.approx(-0.1) and fit.peak_d is None and fit.peak_reward is None


def test_a_best_of_n_curve_falling_from_the_start_has_no_peak():
    """R(d) = d (-0.5 - 0.3 d): a < 0 and b > 0 in the best-of-N form, negative and falling for every d > 0. Its
    vertex a / 2b is at d < 0: no peak (it reported d* = -0.83 and a positive peak KL)."""
    d = np.linspace(0.5, 3.0, 8)
    fit = fit_gao(d**2, d * (-0.5 - 0.3 * d), "bon", reward_at_zero=0.0)
    assert fit.a == pytest.approx(-0.5) and fit.b == pytest.approx(0.3)
    assert fit.peak_d is None and fit.peak_kl is None and fit.peak_reward is None


def test_least_squares_on_two_points_by_hand():
    """RL form through the origin at d = 1 and d = e: features [d, -d log d] are [1, 0] and [e, -e], so
    R(1) = a = 0.8 and R(e) = e (a - b) = e * 0.3 -> b = 0.5; a negative KL estimate counts as d = 0."""
    fit = fit_gao([1.0, math.e**2, -0.01], [0.8, 0.3 * math.e, 0.0], reward_at_zero=0.0)
    assert (fit.a, fit.b) == (pytest.approx(0.8), pytest.approx(0.5))


def test_difference_se_matches_the_spread_of_refits():
    """The standard error of R(d1) - R(d2) from (X'X)^-1 matches the spread of the fitted difference over many
    noisy replicates of the same curve (2000 refits: the spread's own error is ~1.6%)."""
    rng = np.random.default_rng(0)
    d = np.linspace(0.3, 4.0, 15)
    truth = d * (1 - 0.5 * np.log(d))
    diffs = []
    for _ in range(2000):
        fit = fit_gao(d**2, truth + rng.normal(0, 0.1, d.size))
        diffs.append(float(fit.predict(math.e) - fit.predict(4.0)))
    assert fit.difference_se(math.e, 4.0, 0.1) == pytest.approx(np.std(diffs), rel=0.05)


def test_fit_gao_refuses_bad_input():
    with pytest.raises(ValueError, match="form"):
        fit_gao([1.0, 2.0], [1.0, 2.0], form="ppo")
    with pytest.raises(ValueError, match="at least 3"):
        fit_gao([1.0, 2.0], [1.0, 2.0])
