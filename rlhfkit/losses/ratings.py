"""Reward-model losses for ratings on a 1..K Likert scale: regression on a normalised rating, and an ordered
logit (cumulative link) with learned, ordered thresholds.

Papers: McCullagh 1980, "Regression models for ordinal data" (the proportional-odds / cumulative logit model).
Turning ratings into pairs instead is a data step: ``rlhfkit.data.convert.ratings_to_comparisons``.

Normalising ratings for regression, two choices:
- ``ratings_to_unit_interval`` (the default to reach for): (rating - 1) / (scale - 1), so 1 -> 0 and K -> 1 on
  any scale. It keeps each rating's absolute level and lets records with different scales train together.
- ``standardize_ratings``: z-scores, optionally within groups (e.g. per annotator), which removes how harshly
  or leniently each person uses the scale, at the price of the absolute level: an annotator who rated
  everything 5 contributes only zeros. Use it when annotators are known to use the scale differently.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def ratings_to_unit_interval(ratings: Tensor, scale) -> Tensor:
    """(rating - 1) / (scale - 1): a rating on 1..scale mapped onto [0, 1]. ratings (N,); scale an int or (N,)."""
    return (ratings - 1) / (torch.as_tensor(scale, dtype=ratings.dtype, device=ratings.device) - 1)


def standardize_ratings(ratings: Tensor, groups: Tensor | None = None) -> Tensor:
    """(rating - mean) / std with the population std (divide by n), over all ratings or within each group.

    ratings (N,) float; groups (N,) int ids (e.g. annotator index) or None for one group. A group whose ratings
    are all equal (or that has one rating) gives 0 for each: it says nothing about relative quality."""
    if groups is None:
        groups = torch.zeros_like(ratings, dtype=torch.long)
    _, index = torch.unique(groups, return_inverse=True)  # (N,) 0..G-1
    n_groups = int(index.max()) + 1
    zeros = torch.zeros(n_groups, dtype=ratings.dtype, device=ratings.device)
    count = zeros.index_add(0, index, torch.ones_like(ratings))
    mean = zeros.index_add(0, index, ratings) / count  # (G,)
    centred = ratings - mean[index]
    std = (zeros.index_add(0, index, centred**2) / count).sqrt()  # (G,)
    return torch.where(std[index] > 0, centred / std[index].clamp(min=torch.finfo(ratings.dtype).tiny), 0.0)


def rating_regression_loss(rewards: Tensor, targets: Tensor) -> Tensor:
    """Squared error (r - t)^2 between the reward model's score and the normalised rating; its mean is the MSE.
    (N,), (N,) -> (N,)."""
    return (rewards - targets) ** 2


def ordered_thresholds(raw: Tensor) -> Tensor:
    """K - 1 increasing thresholds from unconstrained parameters: theta_1 = raw_1 and
    theta_k = theta_{k-1} + softplus(raw_k). Any raw gives strictly increasing thresholds (softplus > 0), so an
    optimiser can move raw freely. (K - 1,) -> (K - 1,)."""
    return torch.cat([raw[:1], raw[:1] + F.softplus(raw[1:]).cumsum(0)])


def initial_threshold_params(num_levels: int, spacing: float = 1.0) -> Tensor:
    """Raw parameters for `ordered_thresholds` that give num_levels - 1 thresholds `spacing` apart, centred on 0
    (for K = 5 and spacing 1: -1.5, -0.5, 0.5, 1.5). float32, (K - 1,)."""
    if num_levels < 2:
        raise ValueError(f"an ordinal scale needs at least 2 levels, got {num_levels}")
    first = -spacing * (num_levels - 2) / 2
    gap = math.log(math.expm1(spacing))  # softplus^-1(spacing)
    return torch.tensor([first] + [gap] * (num_levels - 2), dtype=torch.float32)


def _padded_thresholds(thresholds: Tensor) -> Tensor:
    """(K - 1,) -> (K + 1,): [-inf, theta_1, ..., theta_{K-1}, +inf]."""
    inf = torch.full((1,), math.inf, dtype=thresholds.dtype, device=thresholds.device)
    return torch.cat([-inf, thresholds, inf])


def ordinal_log_probs(rewards: Tensor, thresholds: Tensor) -> Tensor:
    """log P(rating = k | r) for k = 1..K under the ordered logit (cumulative link) model (McCullagh 1980):
        P(rating <= k) = sigmoid(theta_k - r),  theta_0 = -inf, theta_K = +inf,
        P(rating = k) = sigmoid(theta_k - r) - sigmoid(theta_{k-1} - r).
    A higher reward moves mass to higher ratings. Computed stably as
        log P(k) = logsigmoid(theta_k - r) + logsigmoid(r - theta_{k-1}) + log(1 - exp(theta_{k-1} - theta_k)).
    rewards (N,); thresholds (K - 1,) increasing (`ordered_thresholds`) -> (N, K)."""
    padded = _padded_thresholds(thresholds)
    upper, lower = padded[1:], padded[:-1]  # (K,) each
    r = rewards.unsqueeze(-1)  # (N, 1)
    gap = upper - lower  # (K,), +inf at the ends
    return F.logsigmoid(upper - r) + F.logsigmoid(r - lower) + torch.log(-torch.expm1(-gap))


def ordinal_logit_loss(rewards: Tensor, ratings: Tensor, thresholds: Tensor) -> Tensor:
    """Per-example NLL of the ordered logit model (see `ordinal_log_probs`): -log P(rating | r).

    rewards (N,) scores; ratings (N,) integers 1..K; thresholds (K - 1,) increasing, learned with the model
    through `ordered_thresholds` so they stay ordered. K = 2 is logistic regression of "rating 2" on r - theta_1.
    Returns (N,)."""
    num_levels = thresholds.numel() + 1
    index = ratings.round().long() if ratings.is_floating_point() else ratings.long()
    if not torch.equal(index.to(ratings.dtype), ratings) or index.min() < 1 or index.max() > num_levels:
        raise ValueError(f"ratings must be whole numbers in 1..{num_levels} for {num_levels - 1} thresholds")
    log_probs = ordinal_log_probs(rewards, thresholds)  # (N, K)
    return -log_probs.gather(-1, (index - 1).unsqueeze(-1)).squeeze(-1)
