"""One reward from the scores of an ensemble of reward models, or from a reward distribution, to optimise against
(PPO, best-of-N).

Paper: Coste et al. 2023, "Reward model ensembles help mitigate overoptimization": the plain mean still
over-optimises; the conservative worst-case (WCO, the minimum over members) and uncertainty-weighted (UWO,
mean - lambda * intra-ensemble variance) rewards nearly remove over-optimisation for best-of-N and, with a small
KL penalty, for PPO; 4-5 members suffice. ``mean_minus_std`` is the same idea with the standard deviation, which
has the reward's own units (so lambda reads as "standard deviations of disagreement").

scores: (E, N), member e's score of response n, each member normalised the same way (rlhfkit's reward models
have mean 0, std 1 on reference samples). Spread is the population spread over members (divide by E), as
``rlhfkit.models.reward_scoring.score_ensemble`` reports it. Every function: (E, N) -> (N,).

``transformed_reward`` is the one mechanism behind a reward setting's ``reward_transform``: it takes each member's
mean and variance, so a distributional reward model (DPL's mean-variance head, Siththaranjan et al. 2023; one member
with a variance), an ensemble (several members, variance 0 each) and an ensemble of distributional models all go
through the same formulas. With zero variances it is exactly the ensemble functions above; with one member it is
``rlhfkit.losses.lower_quantile_reward`` for ``quantile``.
"""

from __future__ import annotations

from statistics import NormalDist

import torch

from rlhfkit.losses.tokens import _pick

Tensor = torch.Tensor


def ensemble_mean(scores: Tensor) -> Tensor:
    """Mean over members (Coste et al.'s mean optimisation)."""
    return scores.mean(0)


def ensemble_spread(scores: Tensor) -> Tensor:
    """The members' disagreement on each response: their std (over E, not E - 1, as everywhere an ensemble's spread
    is given: `rm score`, the report, the monitor). scores (E, N) -> (N,)."""
    return scores.std(0, unbiased=False)


def ensemble_mean_minus_std(scores: Tensor, uncertainty_coef: float) -> Tensor:
    """mean - lambda * std over members: penalises responses the members disagree on."""
    return scores.mean(0) - uncertainty_coef * ensemble_spread(scores)


def ensemble_uncertainty_weighted(scores: Tensor, uncertainty_coef: float) -> Tensor:
    """UWO (Coste et al. 2023): mean - lambda * Var, Var = (1/E) sum_e (s_e - mean)^2, the intra-ensemble variance."""
    return scores.mean(0) - uncertainty_coef * scores.var(0, unbiased=False)


def ensemble_worst(scores: Tensor) -> Tensor:
    """WCO (Coste et al. 2023): the lowest member score, no setting to choose."""
    return scores.amin(0)


ENSEMBLE_REWARDS = {
    "mean": lambda scores, uncertainty_coef: ensemble_mean(scores),
    "mean_minus_std": ensemble_mean_minus_std,
    "uncertainty_weighted": ensemble_uncertainty_weighted,
    "worst": lambda scores, uncertainty_coef: ensemble_worst(scores),
}


def ensemble_reward(scores: Tensor, how: str, uncertainty_coef: float) -> Tensor:
    """The ensemble's reward by name (`ENSEMBLE_REWARDS`): "mean", "mean_minus_std", "uncertainty_weighted" or
    "worst"; uncertainty_coef is lambda for the two penalised ones (ignored by the others; its default belongs
    to the caller's config). (E, N) -> (N,)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (members, responses), got shape {tuple(scores.shape)}")
    return _pick(ENSEMBLE_REWARDS, how, "ensemble reward")(scores, uncertainty_coef)


def mixture_moments(means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of an equal-weight mixture of E members' reward distributions (law of total variance):
        mean = (1/E) sum_e mu_e,   var = (1/E) sum_e sigma_e^2 + (1/E) sum_e (mu_e - mean)^2.
    means, variances (E, N) -> ((N,), (N,)). Point scores have variance 0, leaving the members' spread."""
    mean = means.mean(0)
    return mean, variances.mean(0) + means.var(0, unbiased=False)


def _quantile(mean: Tensor, var: Tensor, q: float) -> Tensor:
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    return mean + NormalDist().inv_cdf(q) * var.sqrt()


REWARD_TRANSFORMS = {
    "mean": lambda mean, var, means, coef: mean,
    "mean_minus_std": lambda mean, var, means, coef: mean - coef * var.sqrt(),
    "uncertainty_weighted": lambda mean, var, means, coef: mean - coef * var,
    "quantile": lambda mean, var, means, coef: _quantile(mean, var, coef),
    "worst": lambda mean, var, means, coef: means.amin(0),
}


def transformed_reward(means: Tensor, variances: Tensor, how: str, coef: float | None = None) -> Tensor:
    """One reward per response from E members' means and variances (`mixture_moments`), by name
    (`REWARD_TRANSFORMS`):
    - ``mean``: the mixture mean;
    - ``mean_minus_std`` (coef = lambda): mean - lambda sqrt(var);
    - ``uncertainty_weighted`` (coef = lambda): mean - lambda var (UWO);
    - ``quantile`` (coef = q in (0, 1)): the q-quantile of a Gaussian with the mixture's mean and variance,
      mean + Phi^-1(q) sqrt(var) (DPL's risk-averse reward for one distributional model; for an ensemble of point
      scores, the Gaussian with the members' mean and spread);
    - ``worst``: the lowest member mean (WCO).
    means, variances (E, N) -> (N,)."""
    if means.dim() != 2 or means.shape != variances.shape:
        raise ValueError(
            f"means and variances must both be (members, responses), got {tuple(means.shape)} and "
            f"{tuple(variances.shape)}"
        )
    mean, var = mixture_moments(means, variances)
    return _pick(REWARD_TRANSFORMS, how, "reward transform")(mean, var, means, coef)
