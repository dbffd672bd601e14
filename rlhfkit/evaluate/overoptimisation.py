"""Gao et al. 2022's functional forms for reward against distance from the initial policy, fitted by least squares.

"Scaling Laws for Reward Model Overoptimization" (Gao, Schulman & Hilton 2022) measures distance as
d = sqrt(KL(policy || initial policy)) and finds the gold reward model's score, relative to the initial policy's,
follows

    best-of-n:  R(d) = d (a - b d)          peak at d* = a / (2 b),       R(d*) = a^2 / (4 b)
    RL:         R(d) = d (a - b log d)      peak at d* = exp(a / b - 1),  R(d*) = b d*

for b > 0 (b <= 0: no peak, the curve keeps rising). Both are linear in (a, b), so the least-squares fit is closed
form. Pass ``reward_at_zero`` when the rewards are not already relative to the initial policy (it is subtracted,
and the curve goes through it, as in the paper); leave it None to fit it as a free offset c (R = c + ...), which
is safer for a proxy reward whose scale has no anchor.

    from rlhfkit.evaluate.overoptimisation import fit_gao
    fit = fit_gao(kl, gold, form="rl")
    fit.peak_d, fit.peak_reward, fit.predict(d)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FORMS = ("bon", "rl")


@dataclass(frozen=True)
class GaoFit:
    form: str  # "bon" or "rl"
    a: float
    b: float
    c: float  # offset: reward_at_zero when given, else fitted
    r2: float  # share of the rewards' variance the curve explains (nan when they do not vary)
    n: int
    xtx_inv: np.ndarray = field(repr=False, compare=False)  # (X'X)^-1 of the design, for standard errors

    def difference_se(self, d1: float, d2: float, sigma: float) -> float:
        """Standard error of the fitted R(d1) - R(d2) when each point carries independent noise of std sigma:
        sigma sqrt(c' (X'X)^-1 c), c the difference of the two design rows (the offset cancels)."""
        c = gao_features(np.array([d1, d2], dtype=float), self.form)  # (2, 2)
        c = c[0] - c[1]
        if self.xtx_inv.shape[0] == 3:
            c = np.append(c, 0.0)
        return float(sigma * np.sqrt(max(c @ self.xtx_inv @ c, 0.0)))

    def predict(self, d) -> np.ndarray:
        """R(d) for d = sqrt(KL) (array or scalar)."""
        d = np.asarray(d, dtype=float)
        return self.c + gao_features(d, self.form) @ np.array([self.a, self.b])

    @property
    def peak_d(self) -> float | None:
        """d* where the curve peaks, None when it has no maximum at d > 0 (b <= 0; for best-of-N also a <= 0, a
        curve falling from d = 0)."""
        if self.b <= 0:
            return None
        if self.form == "bon":
            return self.a / (2 * self.b) if self.a > 0 else None
        x = self.a / self.b - 1
        return math.exp(x) if x < 700 else None  # beyond float range: no peak in any reachable d

    @property
    def peak_kl(self) -> float | None:
        d = self.peak_d
        return None if d is None else d * d

    @property
    def peak_reward(self) -> float | None:
        d = self.peak_d
        if d is None:
            return None
        return self.c + (self.a * self.a / (4 * self.b) if self.form == "bon" else self.b * d)


def gao_features(d: np.ndarray, form: str) -> np.ndarray:
    """(n, 2) columns multiplying (a, b): best-of-n [d, -d^2]; RL [d, -d log d] with 0 log 0 = 0."""
    if form == "bon":
        return np.stack([d, -d * d], axis=-1)
    safe = np.where(d > 0, d, 1.0)
    return np.stack([d, np.where(d > 0, -d * np.log(safe), 0.0)], axis=-1)


def fit_gao(kl, reward, form: str = "rl", reward_at_zero: float | None = None) -> GaoFit:
    """Least-squares fit of Gao et al.'s curve of ``reward`` against d = sqrt(``kl``), form "rl" or "bon".

    kl per point in nats (negative Monte-Carlo estimates are clipped to 0); reward per point (gold or proxy).
    Needs at least as many points as free parameters (2, or 3 with a fitted offset)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    d = np.sqrt(np.clip(np.asarray(kl, dtype=float), 0.0, None))
    r = np.asarray(reward, dtype=float)
    if d.shape != r.shape or d.ndim != 1:
        raise ValueError("fit_gao needs one kl and one reward per point")
    x = gao_features(d, form)  # (n, 2)
    if reward_at_zero is None:
        x = np.concatenate([x, np.ones((d.size, 1))], axis=1)  # (n, 3): the offset as a third column
        target = r
    else:
        target = r - reward_at_zero
    if d.size < x.shape[1]:
        raise ValueError(f"fit_gao needs at least {x.shape[1]} points, got {d.size}")
    coef = np.linalg.lstsq(x, target, rcond=None)[0]
    a, b = float(coef[0]), float(coef[1])
    c = float(coef[2]) if reward_at_zero is None else float(reward_at_zero)
    residual = target - x @ coef
    total = np.sum((r - r.mean()) ** 2)
    r2 = float(1 - np.sum(residual**2) / total) if total > 0 else float("nan")
    return GaoFit(form, a, b, c, r2, int(d.size), np.linalg.pinv(x.T @ x))
