"""Length-controlled win rate, as AlpacaEval 2 computes it (Dubois et al. 2024, "Length-Controlled AlpacaEval").

A judge that likes long answers rewards a verbose model whatever its quality. AlpacaEval 2 fits a logistic
regression (a GLM) of the judge's preference for the model over the baseline on

    logit P(model preferred on item i) = theta_model + phi * tanh(delta_len_i / std(delta_len)) + psi * difficulty_i

and reports the win rate the fit predicts with the length term set to zero: mean_i sigmoid(theta + psi * d_i). A
model whose wins come only from length gets ~50%; one that wins at equal length keeps its win rate. (Their
``glm_winrate.py`` uses the same three terms, with lengths in characters, delta = difference of the two outputs'
lengths divided by its standard deviation, soft preferences as targets, and an L1 penalty chosen by
cross-validation with a pull towards reference "gamed" models; here a small L2 penalty on the length and difficulty
terms keeps the fit finite when length separates the outcomes, and there is no cross-validation.)

The difficulty term is optional: AlpacaEval uses a per-instruction difficulty estimated from many models' results;
pass any per-item number that says how hard the item is for models in general (e.g. the baseline's mean loss rate
on it across other evaluated models), or nothing.

    from rlhfkit.evaluate.length_control import length_controlled_win_rate
    out = length_controlled_win_rate(prefs, model_lengths, baseline_lengths)
    out.win_rate, out.lc_win_rate
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlhfkit.evaluate.stats import preference_win_rate


@dataclass(frozen=True)
class LengthControlled:
    win_rate: float  # raw: mean preference for the model (ties half)
    win_lo: float  # 95% interval of the raw win rate
    win_hi: float
    lc_win_rate: float  # predicted win rate at zero length difference
    lc_lo: float | None  # 95% percentile-bootstrap interval of lc_win_rate (None without n_boot)
    lc_hi: float | None
    theta: float  # model term (logit of the LC win rate on an item of difficulty 0)
    phi: float  # coefficient of tanh(normalised length difference); > 0: the judge likes the longer answer
    psi: float  # coefficient of the difficulty term (0 without one)
    n: int


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: np.ndarray | float = 0.0, iters: int = 100) -> np.ndarray:
    """Coefficients w maximising sum_i [y_i log s(x_i w) + (1 - y_i) log(1 - s(x_i w))] - n/2 * sum_j l2_j w_j^2,
    s the logistic function, by Newton's method (iteratively reweighted least squares). x (n, k) features,
    y (n,) targets in [0, 1]: soft targets are allowed, so a judge's probability counts as a fractional win.
    l2 scalar or (k,) per coefficient (0 leaves it unpenalised)."""
    n, k = x.shape
    penalty = np.broadcast_to(np.asarray(l2, dtype=float), (k,)) * n

    def objective(w):
        z = x @ w
        return float(np.sum(y * -np.logaddexp(0.0, -z) + (1 - y) * -np.logaddexp(0.0, z)) - 0.5 * penalty @ w**2)

    w = np.zeros(k)
    for _ in range(iters):
        p = _sigmoid(x @ w)
        grad = x.T @ (y - p) - penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty)  # (k, k) negative Hessian
        # lstsq, not solve: stays defined when the log-likelihood is flat in a direction (e.g. all wins)
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t, before = 1.0, objective(w)
        while objective(w + t * step) < before - 1e-12 and t > 1e-6:  # halve a step that overshoots
            t /= 2
        w = w + t * step
        if np.max(np.abs(t * step)) < 1e-10:
            break
    return w


def length_feature(model_lengths, baseline_lengths) -> np.ndarray:
    """tanh(delta / std(delta)), delta = model length - baseline length per item, std with n - 1 as pandas gives
    (AlpacaEval's ``std_delta_len``); all zeros when every difference is equal (nothing to control for)."""
    delta = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    scale = delta.std(ddof=1) if delta.size > 1 else 0.0
    return np.tanh(delta / scale) if scale > 0 else np.zeros_like(delta)


def _fit(y: np.ndarray, length: np.ndarray, difficulty: np.ndarray | None, l2: float) -> tuple[np.ndarray, float]:
    """(theta, phi, psi) and the LC win rate for one data set; a column that is constant zero is left out."""
    cols, names = [np.ones_like(y)], ["theta"]
    if np.any(length != 0):
        cols.append(length)
        names.append("phi")
    if difficulty is not None:
        cols.append(difficulty)
        names.append("psi")
    x = np.stack(cols, axis=1)  # (n, k)
    # The model term gets only a token penalty: shrinking it would pull every LC win rate towards 50%.
    w = fit_logistic(x, y, l2=np.array([l2 * 1e-3] + [l2] * (len(cols) - 1)))
    coef = dict(zip(names, w))
    theta, psi = coef["theta"], coef.get("psi", 0.0)
    logits = theta + (psi * difficulty if difficulty is not None else 0.0)
    lc = float(np.mean(_sigmoid(np.broadcast_to(logits, y.shape))))
    return np.array([theta, coef.get("phi", 0.0), psi]), lc


def length_controlled_win_rate(
    preferences,
    model_lengths,
    baseline_lengths,
    difficulty=None,
    *,
    l2: float = 1e-3,
    n_boot: int = 0,
    seed: int = 0,
) -> LengthControlled:
    """Raw and length-controlled win rate of a model against a baseline from a judge's per-item preferences.

    preferences (n,) in [0, 1]: 1 the model's answer preferred, 0 the baseline's, 0.5 a tie, or a soft preference.
    model_lengths, baseline_lengths (n,): the two answers' lengths (AlpacaEval uses characters; tokens work too).
    difficulty (n,) optional per-item difficulty. l2: ridge n * l2 / 2 * w^2 on the length and difficulty
    coefficients (1000 times less on the model term); it matters only when length (nearly) separates the
    outcomes, where the unpenalised fit has no finite maximum. AlpacaEval uses an L1 penalty of 0.01 |w| on the
    summed loss (C = 100) instead. n_boot > 0 adds a percentile-bootstrap interval over items.
    """
    y = np.asarray(preferences, dtype=float)
    length = length_feature(model_lengths, baseline_lengths)
    diff = None if difficulty is None else np.asarray(difficulty, dtype=float)
    if not (y.shape == length.shape and (diff is None or diff.shape == y.shape)) or y.size == 0:
        raise ValueError("preferences, lengths and difficulty need the same non-zero number of items")
    raw, lo, hi = preference_win_rate(y.tolist())
    coef, lc = _fit(y, length, diff, l2)
    lc_lo = lc_hi = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_boot):
            idx = rng.integers(0, y.size, y.size)
            boots.append(_fit(y[idx], length[idx], None if diff is None else diff[idx], l2)[1])
        lc_lo, lc_hi = (float(q) for q in np.quantile(boots, [0.025, 0.975]))
    return LengthControlled(raw, lo, hi, lc, lc_lo, lc_hi, *(float(c) for c in coef), n=int(y.size))
