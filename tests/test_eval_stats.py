"""Win rates with intervals, proportions and the length-controlled win rate: numbers worked out by hand.

Run: PYTHONPATH=. python -m pytest tests/test_eval_stats.py -q
"""

import math

import numpy as np
import pytest

from rlhfkit.evaluate.length_control import fit_logistic, length_controlled_win_rate, length_feature
from rlhfkit.evaluate.stats import Z95, mean_interval, preference_win_rate, proportion_interval, win_rate

# --- win rate, proportions -------------------------------------------------------------------------------


def test_win_rate_by_hand_ties_half():
    """a vs b: win, win, tie, loss -> outcomes [1, 1, 0.5, 0], mean 0.625; sample variance
    ((0.375^2) * 2 + 0.125^2 + 0.625^2) / 3 = (0.28125 + 0.015625 + 0.390625) / 3 = 0.229167;
    half width 1.959964 * sqrt(0.229167 / 4) = 1.959964 * 0.239357 = 0.469131 -> [0.155869, 1.0 (clipped)]."""
    rate, lo, hi = win_rate([3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 5.0])
    assert rate == pytest.approx(0.625, abs=1e-12)
    assert lo == pytest.approx(0.625 - Z95 * math.sqrt(0.229166666667 / 4), abs=1e-9)
    assert lo == pytest.approx(0.155869, abs=1e-6)
    assert hi == 1.0


def test_win_rate_tie_within_eps_and_length_check():
    assert win_rate([1.0], [1.0 + 1e-12])[0] == 0.5
    with pytest.raises(ValueError):
        win_rate([1.0, 2.0], [1.0])


def test_preference_win_rate_takes_soft_preferences():
    """[1, 0.5, 0.75, 0.25] -> mean 0.625 (a soft 0.75 is three quarters of a win)."""
    assert preference_win_rate([1.0, 0.5, 0.75, 0.25])[0] == pytest.approx(0.625)
    assert mean_interval([0.5, 0.5])[1:] == (0.5, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preference_win_rate([1.2])


def test_wilson_interval_by_hand():
    """0 of 50: z^2 = 3.841459; centre = (0 + 3.841459 / 100) / (1 + 3.841459 / 50) = 0.038415 / 1.076829
    = 0.035674; half = z sqrt(3.841459 / 10000) / 1.076829 = 0.035674 -> [0, 0.071348], not a point.
    5 of 10: centre (0.5 + 0.192073) / 1.384146 = 0.5, half = 1.959964 sqrt(0.025 + 0.009604) / 1.384146
    = 1.959964 * 0.186020 / 1.384146 = 0.263407 -> [0.236593, 0.763407]."""
    rate, lo, hi = proportion_interval(0, 50)
    assert rate == 0.0 and lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.071348, abs=1e-6)
    rate, lo, hi = proportion_interval(5, 10)
    assert rate == 0.5 and lo == pytest.approx(0.236593, abs=1e-6) and hi == pytest.approx(0.763407, abs=1e-6)
    with pytest.raises(ValueError):
        proportion_interval(3, 2)


# --- length-controlled win rate --------------------------------------------------------------------------


def test_length_feature_is_tanh_of_std_normalised_difference():
    """delta = [2, -2, 0]: std (n - 1) = sqrt((4 + 4 + 0) / 2) = 2 -> tanh([1, -1, 0])."""
    np.testing.assert_allclose(length_feature([3, 1, 5], [1, 3, 5]), np.tanh([1.0, -1.0, 0.0]), atol=1e-12)
    np.testing.assert_array_equal(length_feature([4, 4], [1, 1]), [0.0, 0.0])  # constant difference: nothing to fit


def test_logistic_fit_intercept_only_is_logit_of_mean():
    """With only an intercept the maximum-likelihood w solves sum(y - sigmoid(w)) = 0: sigmoid(w) = mean(y) = 0.7,
    w = log(0.7 / 0.3) = 0.847298; soft targets count fractionally."""
    w = fit_logistic(np.ones((4, 1)), np.array([1.0, 1.0, 0.8, 0.0]))
    assert w[0] == pytest.approx(math.log(0.7 / 0.3), abs=1e-9)


def test_lc_win_rate_two_length_groups_by_hand():
    """Model longer on 4 items (wins 3), shorter on 4 (wins 2); |delta| equal, so the feature is +t or -t.
    The fit is saturated: sigmoid(theta + phi t) = 3/4 and sigmoid(theta - phi t) = 1/2, so
    theta = (logit 3/4 + logit 1/2) / 2 = ln(3) / 2 and LC = sigmoid(ln sqrt 3) = sqrt 3 / (1 + sqrt 3) = 0.633975,
    above the raw 5/8 = 0.625 because the model wins less than it should when it is shorter. With delta = +-1,
    std = sqrt(8 / 7), t = tanh(sqrt(7 / 8)); phi = ln(3) / (2 t)."""
    prefs = [1, 1, 1, 0, 1, 1, 0, 0]
    out = length_controlled_win_rate(prefs, [2] * 4 + [0] * 4, [1] * 8, l2=0.0)
    assert out.win_rate == pytest.approx(0.625)
    assert out.lc_win_rate == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)), abs=1e-8)
    assert out.theta == pytest.approx(math.log(3) / 2, abs=1e-8)
    assert out.phi == pytest.approx(math.log(3) / (2 * math.tanh(math.sqrt(7 / 8))), abs=1e-7)


def test_lc_win_rate_is_half_when_length_explains_the_wins():
    """Longer on 8 items (wins 6), shorter on 4 (wins 1): logit 3/4 + logit 1/4 = 0 -> theta = 0, LC = 0.5 exactly,
    while the raw win rate is 7 / 12 = 0.583333."""
    prefs = [1] * 6 + [0] * 2 + [1] + [0] * 3
    out = length_controlled_win_rate(prefs, [3] * 8 + [1] * 4, [2] * 12, l2=0.0)
    assert out.win_rate == pytest.approx(7 / 12)
    assert out.lc_win_rate == pytest.approx(0.5, abs=1e-8)


def test_lc_equals_raw_without_length_differences_whatever_the_difficulty():
    """With an intercept the likelihood's stationarity in theta is sum_i (y_i - p_i) = 0, so the mean fitted
    probability is the mean preference: with no length term (equal lengths), LC = raw exactly, difficulty or not."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(size=200)
    prefs = (rng.random(200) < 1 / (1 + np.exp(-(0.5 - difficulty)))).astype(float)
    out = length_controlled_win_rate(prefs, [10] * 200, [10] * 200, difficulty=difficulty, l2=0.0)
    assert out.lc_win_rate == pytest.approx(out.win_rate, abs=1e-9)
    assert out.psi < -0.5  # harder items: fewer wins, as generated (true psi = -1)


def test_verbose_policy_loses_its_length_advantage():
    """A judge that prefers the longer answer, P(model) = sigmoid(3 tanh(delta / std)), and no quality difference:
    the model is longer on most items, so its raw win rate is high (~0.78), but its LC win rate is ~0.5. A model
    that wins 70% at the same length keeps ~0.70. Sampling noise of the LC rate at n = 4000 is ~0.015."""
    rng = np.random.default_rng(1)
    n = 4000
    base_len = rng.normal(100, 20, n)
    verbose_len = base_len + rng.normal(40, 40, n)
    feature = length_feature(verbose_len, base_len)
    prefs = (rng.random(n) < 1 / (1 + np.exp(-3 * feature))).astype(float)
    verbose = length_controlled_win_rate(prefs, verbose_len, base_len, n_boot=100)
    assert verbose.win_rate > 0.75
    assert abs(verbose.lc_win_rate - 0.5) < 0.04
    assert verbose.lc_lo < verbose.lc_win_rate < verbose.lc_hi and verbose.lc_hi - verbose.lc_lo < 0.1
    assert verbose.phi > 2  # the judge's length preference lands in phi

    same_len = base_len + rng.normal(0, 20, n)
    good = length_controlled_win_rate((rng.random(n) < 0.7).astype(float), same_len, base_len)
    assert abs(good.lc_win_rate - 0.7) < 0.03 and abs(good.lc_win_rate - good.win_rate) < 0.01
    assert verbose.lc_win_rate < good.lc_win_rate and verbose.win_rate > good.win_rate  # the ranking flips


def test_lc_stays_finite_when_length_separates_the_outcomes():
    """The model wins exactly when it is longer: the unpenalised fit has no maximum (phi -> infinity); the small
    ridge keeps the coefficients finite, and length takes the credit for the wins (LC well below the raw 0.75).
    Without the ridge Newton's steps would run off; the iteration cap and the line search still return numbers."""
    out = length_controlled_win_rate([1, 1, 1, 0], [5, 6, 7, 1], [2, 2, 2, 2])
    assert out.win_rate == 0.75 and math.isfinite(out.phi) and math.isfinite(out.theta)
    assert out.phi > 3 and out.lc_win_rate < 0.5


def test_lc_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same non-zero number"):
        length_controlled_win_rate([1, 0], [1, 2, 3], [1, 2, 3])
