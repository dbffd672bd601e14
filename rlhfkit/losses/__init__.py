"""Losses, advantages and metrics for RLHF as pure functions over tensors (no I/O, no models).

One module per purpose; every name is importable from here (``from rlhfkit.losses import X``):
- ``tokens``: per-token and per-sequence log-probs, masked sums, means and variances;
- ``preference``: reward-model losses over scores (Bradley-Terry, Davidson ties, Plackett-Luce), calibration;
- ``ratings``: reward-model losses for Likert ratings (regression on a normalised rating, ordered logit);
- ``distributional``: reward distributions per response (mean-variance and categorical heads), the
  hidden-context statistic and the lower-quantile reward;
- ``policy``: direct preference losses on policy and reference log-probs (the DPO family, ties in DPO, soft
  labels, KTO for unpaired thumbs up/down);
- ``ensemble``: one reward from an ensemble's scores (mean, mean - lambda std, uncertainty-weighted, worst);
- ``rl``: PPO and online RL (whitening, KL estimators, GAE, PPO losses, RLOO/GRPO advantages).

Shapes: B = batch, T = tokens of the response, V = vocabulary, K = items in a ranking.
Masks are 0/1 (bool or numeric) and mark the positions that count; what sits under a 0 is ignored.
Each module's docstring lists the papers its formulas come from.
"""

from rlhfkit.losses.distributional import (
    categorical_batch_entropy,
    categorical_preference_loss,
    categorical_preference_prob,
    categorical_reward_moments,
    hidden_context_r2,
    lower_quantile_reward,
    mean_variance_preference_loss,
    mean_variance_preference_prob,
)
from rlhfkit.losses.ensemble import (
    ENSEMBLE_REWARDS,
    REWARD_TRANSFORMS,
    ensemble_mean,
    ensemble_mean_minus_std,
    ensemble_reward,
    ensemble_spread,
    ensemble_uncertainty_weighted,
    ensemble_worst,
    mixture_moments,
    transformed_reward,
)
from rlhfkit.losses.policy import (
    DPO_LOSSES,
    DPO_TIE_LOSSES,
    dpo_davidson_tie_loss,
    dpo_hinge_loss,
    dpo_ipo_loss,
    dpo_rao_kupper_tie_loss,
    dpo_robust_loss,
    dpo_sigmoid_loss,
    dpo_soft_label_loss,
    implicit_reward,
    kto_batch_kl,
    kto_loss,
    kto_mismatched_indices,
)
from rlhfkit.losses.preference import (
    bradley_terry_loss,
    bradley_terry_soft_loss,
    davidson_probs,
    davidson_soft_loss,
    expected_calibration_error,
    plackett_luce_loss,
    preference_loss_with_ties,
    tie_loss_davidson,
)
from rlhfkit.losses.ratings import (
    initial_threshold_params,
    ordered_thresholds,
    ordinal_log_probs,
    ordinal_logit_loss,
    rating_regression_loss,
    ratings_to_unit_interval,
    standardize_ratings,
)
from rlhfkit.losses.rl import (
    KL_ESTIMATORS,
    adaptive_kl_coef,
    best_of_n_kl,
    entropy_from_logits,
    explained_variance,
    gae,
    grpo_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalized_rewards,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)
from rlhfkit.losses.tokens import _pick as _pick
from rlhfkit.losses.tokens import (
    masked_mean,
    masked_sum,
    masked_var,
    selective_log_softmax,
    sequence_logprobs,
)

__all__ = [
    "DPO_LOSSES",
    "DPO_TIE_LOSSES",
    "ENSEMBLE_REWARDS",
    "KL_ESTIMATORS",
    "REWARD_TRANSFORMS",
    "adaptive_kl_coef",
    "best_of_n_kl",
    "bradley_terry_loss",
    "bradley_terry_soft_loss",
    "categorical_batch_entropy",
    "categorical_preference_loss",
    "categorical_preference_prob",
    "categorical_reward_moments",
    "davidson_probs",
    "davidson_soft_loss",
    "dpo_davidson_tie_loss",
    "dpo_hinge_loss",
    "dpo_ipo_loss",
    "dpo_rao_kupper_tie_loss",
    "dpo_robust_loss",
    "dpo_sigmoid_loss",
    "dpo_soft_label_loss",
    "ensemble_mean",
    "ensemble_mean_minus_std",
    "ensemble_reward",
    "ensemble_spread",
    "ensemble_uncertainty_weighted",
    "ensemble_worst",
    "entropy_from_logits",
    "expected_calibration_error",
    "explained_variance",
    "gae",
    "grpo_advantages",
    "hidden_context_r2",
    "implicit_reward",
    "initial_threshold_params",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalized_rewards",
    "kto_batch_kl",
    "kto_loss",
    "kto_mismatched_indices",
    "lower_quantile_reward",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "mixture_moments",
    "mean_variance_preference_loss",
    "mean_variance_preference_prob",
    "ordered_thresholds",
    "ordinal_log_probs",
    "ordinal_logit_loss",
    "plackett_luce_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "preference_loss_with_ties",
    "rating_regression_loss",
    "ratings_to_unit_interval",
    "rloo_advantages",
    "selective_log_softmax",
    "sequence_logprobs",
    "standardize_ratings",
    "tie_loss_davidson",
    "transformed_reward",
]
