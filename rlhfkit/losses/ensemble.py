"""One reward from the scores of an ensemble of reward models, to optimise against (PPO, best-of-N).

Paper: Coste et al. 2023, "Reward model ensembles help mitigate overoptimization": the plain mean still
over-optimises; the conservative worst-case (WCO, the minimum over members) and uncertainty-weighted (UWO,
mean - lambda * intra-ensemble variance) rewards nearly remove over-optimisation for best-of-N and, with a small
KL penalty, for PPO; 4-5 members suffice. ``mean_minus_std`` is the same idea with the standard deviation, which
has the reward's own units (so lambda reads as "standard deviations of disagreement").

scores: (E, N), member e's score of response n, each member normalised the same way (rlhfkit's reward models
have mean 0, std 1 on reference samples). Spread is the population spread over members (divide by E), as
``rlhfkit.models.reward.score_ensemble`` reports it. Every function: (E, N) -> (N,).
"""

from __future__ import annotations

import torch

from rlhfkit.losses.tokens import _pick

Tensor = torch.Tensor


def ensemble_mean(scores: Tensor) -> Tensor:
    """Mean over members (Coste et al.'s mean optimisation)."""
    return scores.mean(0)


def ensemble_mean_minus_std(scores: Tensor, uncertainty_coef: float) -> Tensor:
    """mean - lambda * std over members: penalises responses the members disagree on."""
    return scores.mean(0) - uncertainty_coef * scores.std(0, unbiased=False)


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
