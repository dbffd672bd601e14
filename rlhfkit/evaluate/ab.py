"""A/B test statistics for live traffic: rates per user-randomised arm with the delta method, and their differences.

In an A/B test of a chat model each user is assigned to one arm and sends several requests, so the requests of
one user are not independent (one user likes terse answers, another never gives a thumbs up). A rate such as
thumbs up per thumbs given is a ratio of two per-user sums, and its variance must be taken over users, the unit
that was randomised: treating every thumbs as independent understates the variance and finds differences that
are not there. The delta method gives the ratio's variance from per-user sums (Deng, Knoblich and Lu 2018,
"Applying the Delta Method in Metric Analytics", KDD; the approach of large online experimentation platforms):

    R = sum x_i / sum n_i,   Var(R) ~ (s_xx - 2 R s_xn + R^2 s_nn) / (k mean(n)^2)

over k users with x_i successes in n_i trials (s: sample variances and covariance). With one trial per user it is
the usual two-proportion z-test. Differences between arms are independent (disjoint users), so their variances
add; the test is a two-sided z-test.

    rate = ratio_estimate([(ups, thumbs) for each user])
    diff = compare(treatment_rate, control_rate)        # diff, se, lo, hi, z, p
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlhfkit.evaluate.stats import Z95


@dataclass(frozen=True)
class RatioEstimate:
    value: float | None  # sum x / sum n (None when no unit had a trial)
    se: float | None  # delta-method standard error (None with fewer than two units with trials)
    units: int  # units (users) with at least one trial
    numerator: float
    denominator: float

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.value is None or self.se is None:
            return None
        return self.value - Z95 * self.se, self.value + Z95 * self.se


@dataclass(frozen=True)
class Difference:
    diff: float  # treatment - control
    se: float
    lo: float
    hi: float
    z: float
    p: float  # two-sided


def ratio_estimate(units: Sequence[tuple[float, float]]) -> RatioEstimate:
    """The pooled ratio sum(x) / sum(n) over units given as (x, n), with its delta-method standard error."""
    units = [(float(x), float(n)) for x, n in units if n > 0]
    k = len(units)
    total_x, total_n = sum(x for x, _ in units), sum(n for _, n in units)
    if k == 0:
        return RatioEstimate(None, None, 0, 0.0, 0.0)
    r = total_x / total_n
    if k < 2:
        return RatioEstimate(r, None, k, total_x, total_n)
    mean_x, mean_n = total_x / k, total_n / k
    s_xx = sum((x - mean_x) ** 2 for x, _ in units) / (k - 1)
    s_nn = sum((n - mean_n) ** 2 for _, n in units) / (k - 1)
    s_xn = sum((x - mean_x) * (n - mean_n) for x, n in units) / (k - 1)
    var = max(s_xx - 2 * r * s_xn + r * r * s_nn, 0.0) / (k * mean_n * mean_n)
    return RatioEstimate(r, math.sqrt(var), k, total_x, total_n)


def normal_two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def compare(treatment: RatioEstimate, control: RatioEstimate) -> Difference | None:
    """treatment - control with a 95% interval and a two-sided z-test; None when either lacks a standard error."""
    if None in (treatment.value, treatment.se, control.value, control.se):
        return None
    diff = treatment.value - control.value
    se = math.sqrt(treatment.se**2 + control.se**2)
    if se == 0:  # both arms without any spread: no evidence either way unless the rates differ exactly
        return Difference(
            diff, 0.0, diff, diff, 0.0 if diff == 0 else math.copysign(math.inf, diff), 1.0 if diff == 0 else 0.0
        )
    z = diff / se
    return Difference(diff, se, diff - Z95 * se, diff + Z95 * se, z, normal_two_sided_p(z))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between order statistics (numpy's default)."""
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)
