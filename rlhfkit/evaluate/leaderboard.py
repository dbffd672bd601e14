"""Rank models from pairwise battles: a Bradley–Terry fit with bootstrap intervals, as Chatbot Arena does.

    from rlhfkit.evaluate.leaderboard import bradley_terry
    rows = bradley_terry([("model-a", "model-b", 1.0), ("model-b", "model-c", 0.5), ...])

A battle is ``(model_a, model_b, outcome)`` with outcome 1.0 = a won, 0.0 = b won, 0.5 = a tie. The
Bradley–Terry model says P(a beats b) = sigmoid(theta_a - theta_b) (Bradley & Terry 1952). Ties count as
half a win for each side, the convention of FastChat's ``elo_analysis.py`` (Chiang et al. 2024,
"Chatbot Arena"): the log-likelihood of a battle is ``y log p + (1 - y) log (1 - p)`` with y = 0.5.

The fit maximises that log-likelihood by Newton's method over the distinct (a, b, outcome) triples
weighted by their counts, with a vanishing L2 prior (``l2``) whose only effect is to keep an
undefeated model's rating finite (the exact MLE would be +infinity). Ratings are reported on the Elo
scale, ``400 / ln(10) * theta``, shifted so that the mean over models is 1000: a 400-point gap means
10:1 odds. The interval is the 2.5th-97.5th percentile over ``n_bootstrap`` refits on battles drawn
with replacement (FastChat draws the counts of each distinct triple from a multinomial, as here).

Pure numpy; no torch or transformers, so the annotation app and the evaluation suite can both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ELO_SCALE = 400 / math.log(10)  # Elo points per unit of theta (natural-log odds)
ELO_MEAN = 1000.0
OUTCOMES = (0.0, 0.5, 1.0)


@dataclass
class LeaderboardRow:
    model: str
    rating: float  # Elo scale, mean over models = 1000
    lo: float  # 95% bootstrap percentile interval (nan without bootstrap)
    hi: float
    wins: int
    losses: int
    ties: int
    battles: int


def _triples(battles: list[tuple[str, str, float]]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (a, b, outcome) triples and their counts: (models, pairs (U, 2), outcomes (U,), counts (U,))."""
    counts: dict[tuple[str, str, float], int] = {}
    for n, battle in enumerate(battles):
        if len(battle) != 3:
            raise ValueError(f"battle {n}: must be (model_a, model_b, outcome)")
        a, b, outcome = battle
        if a == b:
            raise ValueError(f"battle {n}: a model cannot battle itself ({a!r})")
        if outcome not in OUTCOMES:
            raise ValueError(f"battle {n}: outcome must be 1.0 (a wins), 0.0 (b wins) or 0.5 (tie), got {outcome!r}")
        key = (str(a), str(b), float(outcome))
        counts[key] = counts.get(key, 0) + 1
    models = sorted({m for a, b, _ in counts for m in (a, b)})
    index = {m: i for i, m in enumerate(models)}
    pairs = np.array([[index[a], index[b]] for a, b, _ in counts], dtype=np.int64).reshape(-1, 2)
    outcomes = np.array([o for _, _, o in counts], dtype=np.float64)
    return models, pairs, outcomes, np.array(list(counts.values()), dtype=np.float64)


def _neg_log_likelihood(theta, pairs, outcomes, weights, l2) -> float:
    logits = theta[pairs[:, 0]] - theta[pairs[:, 1]]  # (U,)
    # log sigmoid(x) = -logaddexp(0, -x), stable for large |x|
    ll = outcomes * -np.logaddexp(0, -logits) + (1 - outcomes) * -np.logaddexp(0, logits)
    return float(-(weights * ll).sum() + 0.5 * l2 * theta @ theta)


def fit_theta(
    n_models: int, pairs: np.ndarray, outcomes: np.ndarray, weights: np.ndarray, l2: float = 1e-4, max_iter: int = 100
) -> np.ndarray:
    """Bradley–Terry strengths (natural-log odds scale, mean 0) maximising the weighted log-likelihood.

    ``pairs`` (U, 2) holds model indices, ``outcomes`` (U,) the score of the first model (1, 0.5, 0),
    ``weights`` (U,) how often each triple occurred. Newton's method with a backtracking line search;
    the likelihood only sees differences of theta, so steps are taken in the least-squares sense
    (orthogonal to adding a constant) and the result is centred.
    """
    theta = np.zeros(n_models)
    i, j = pairs[:, 0], pairs[:, 1]
    loss = _neg_log_likelihood(theta, pairs, outcomes, weights, l2)
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-(theta[i] - theta[j])))  # (U,) P(first model wins)
        resid = weights * (p - outcomes)  # (U,) d loss / d logit
        grad = np.bincount(i, resid, n_models) - np.bincount(j, resid, n_models) + l2 * theta
        curv = weights * p * (1 - p)  # (U,) d2 loss / d logit2
        hess = l2 * np.eye(n_models)
        np.add.at(hess, (i, i), curv)
        np.add.at(hess, (j, j), curv)
        np.add.at(hess, (i, j), -curv)
        np.add.at(hess, (j, i), -curv)
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while True:  # backtracking: Newton's full step can overshoot where the curvature is flat
            candidate = theta - t * step
            new_loss = _neg_log_likelihood(candidate, pairs, outcomes, weights, l2)
            if new_loss <= loss or t < 1e-8:
                break
            t /= 2
        if new_loss > loss:  # no step lowers the loss any more: converged to rounding
            break
        theta, improvement, loss = candidate, loss - new_loss, new_loss
        if np.abs(t * step).max() < 1e-10 or improvement < 1e-13:
            break
    return theta - theta.mean()


def _elo(theta: np.ndarray) -> np.ndarray:
    return ELO_MEAN + ELO_SCALE * (theta - np.nanmean(theta))


def bradley_terry(
    battles: list[tuple[str, str, float]], n_bootstrap: int = 1000, seed: int = 0, l2: float = 1e-4
) -> list[LeaderboardRow]:
    """One row per model, best first: the Elo-scale rating of the Bradley–Terry fit, a 95% bootstrap
    interval, and the model's win/loss/tie counts. Raises ValueError on a malformed battle."""
    if not battles:
        return []
    models, pairs, outcomes, counts = _triples(battles)
    m = len(models)
    rating = _elo(fit_theta(m, pairs, outcomes, counts, l2))

    lo = hi = np.full(m, math.nan)
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = int(counts.sum())
        draws = rng.multinomial(n, counts / n, size=n_bootstrap)  # (n_bootstrap, U) counts per triple
        samples = np.empty((n_bootstrap, m))
        for k, weights in enumerate(draws.astype(np.float64)):
            played = np.bincount(pairs.ravel(), np.repeat(weights, 2), m) > 0  # (m,)
            theta = fit_theta(m, pairs, outcomes, weights, l2)
            theta[~played] = np.nan  # a model absent from this resample has no rating in it
            samples[k] = _elo(theta)
        lo, hi = np.nanpercentile(samples, [2.5, 97.5], axis=0)

    wins = np.zeros(m, dtype=np.int64)
    losses = np.zeros(m, dtype=np.int64)
    ties = np.zeros(m, dtype=np.int64)
    for (a, b), outcome, count in zip(pairs, outcomes, counts.astype(np.int64)):
        if outcome == 1.0:
            wins[a] += count
            losses[b] += count
        elif outcome == 0.0:
            wins[b] += count
            losses[a] += count
        else:
            ties[a] += count
            ties[b] += count
    rows = [
        LeaderboardRow(
            model=models[k],
            rating=float(rating[k]),
            lo=float(lo[k]),
            hi=float(hi[k]),
            wins=int(wins[k]),
            losses=int(losses[k]),
            ties=int(ties[k]),
            battles=int(wins[k] + losses[k] + ties[k]),
        )
        for k in range(m)
    ]
    return sorted(rows, key=lambda r: (-r.rating, r.model))
