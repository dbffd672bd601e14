"""Distributional preference learning: a distribution of reward per response, not one number, so that
annotators' disagreement (hidden context) shows as spread instead of being averaged away.

Paper: Siththaranjan, Laidlaw & Hadfield-Menell 2023, "Distributional preference learning: understanding and
accounting for hidden context in RLHF" (DPL), sec. 5; their code: github.com/cassidylaidlaw/hidden-context.
A plain Bradley-Terry model aggregates hidden context like a Borda count; the two DPL heads here are
- mean-variance: each response gets a mean mu and a log-variance, utility ~ N(mu, sigma^2);
- categorical: each response gets a distribution over n evenly spaced utility values in [0, 1].
The hidden-context statistic r^2 says how much of the utilities' variance the responses explain; a lower
quantile of the utility (mu + Phi^-1(q) sigma) is the risk-averse reward the paper optimises.
"""

from __future__ import annotations

from statistics import NormalDist

import torch

Tensor = torch.Tensor


def mean_variance_preference_prob(
    chosen_mean: Tensor, chosen_log_var: Tensor, rejected_mean: Tensor, rejected_log_var: Tensor
) -> Tensor:
    """P(chosen > rejected) = Phi((mu_c - mu_r) / sqrt(sigma_c^2 + sigma_r^2)) for independent Gaussian utilities
    N(mu, sigma^2), sigma^2 = exp(log_var) (DPL, sec. 5). (B,) each -> (B,)."""
    z = (chosen_mean - rejected_mean) * torch.rsqrt(chosen_log_var.exp() + rejected_log_var.exp())
    return torch.special.ndtr(z)


def mean_variance_preference_loss(
    chosen_mean: Tensor, chosen_log_var: Tensor, rejected_mean: Tensor, rejected_log_var: Tensor
) -> Tensor:
    """Per-example NLL of the mean-variance DPL model: -log Phi((mu_c - mu_r) / sqrt(sigma_c^2 + sigma_r^2)),
    computed with log Phi (torch.special.log_ndtr), which stays finite and smooth far in the tail. The authors'
    code uses the logistic stand-in -softplus(-sqrt(2 pi) z) for the same quantity; this is the exact probit.
    A larger variance flattens the probability toward 1/2, so pairs that annotators disagree on are explained by
    spread rather than by a smaller mean gap. (B,) each -> (B,)."""
    z = (chosen_mean - rejected_mean) * torch.rsqrt(chosen_log_var.exp() + rejected_log_var.exp())
    return -torch.special.log_ndtr(z)


def _atoms(num_atoms: int, like: Tensor) -> Tensor:
    return torch.linspace(0, 1, num_atoms, dtype=like.dtype, device=like.device)


def categorical_preference_prob(chosen_logits: Tensor, rejected_logits: Tensor) -> Tensor:
    """P(chosen > rejected) for categorical utilities on n atoms 0, 1/(n-1), ..., 1 (DPL, sec. 5), a tie at the
    same atom counting half:
        P = sum_i p_c(i) [ sum_{j < i} p_r(j) + p_r(i) / 2 ].
    chosen_logits, rejected_logits (B, n) -> (B,)."""
    p_chosen, p_rejected = chosen_logits.softmax(-1), rejected_logits.softmax(-1)  # (B, n) each
    rejected_below = p_rejected.cumsum(-1) - p_rejected  # (B, n): P(u_r < atom i)
    return (p_chosen * (rejected_below + p_rejected / 2)).sum(-1)


def categorical_preference_loss(chosen_logits: Tensor, rejected_logits: Tensor) -> Tensor:
    """Per-example NLL of the categorical DPL model, -log `categorical_preference_prob`, (B, n) x2 -> (B,). The
    authors also add entropy_coef (0.1) times the negative entropy of the batch's mean distribution
    (`categorical_batch_entropy`) so that all atoms stay in use."""
    prob = categorical_preference_prob(chosen_logits, rejected_logits)
    return -prob.clamp(min=torch.finfo(prob.dtype).tiny).log()


def categorical_batch_entropy(logits: Tensor) -> Tensor:
    """Entropy of the mean of the softmax distributions in a batch, (B, n) -> 0-d: the DPL categorical head's
    regulariser (subtract coef * this from the loss)."""
    mean_dist = logits.softmax(-1).mean(0)  # (n,)
    return -(mean_dist * mean_dist.clamp(min=torch.finfo(mean_dist.dtype).tiny).log()).sum()


def categorical_reward_moments(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of a categorical utility on atoms linspace(0, 1, n), (B, n) -> ((B,), (B,))."""
    probs = logits.softmax(-1)
    atoms = _atoms(logits.shape[-1], logits)
    mean = (probs * atoms).sum(-1)
    var = (probs * (atoms - mean.unsqueeze(-1)) ** 2).sum(-1)
    return mean, var


def hidden_context_r2(reward_means: Tensor, reward_vars: Tensor) -> Tensor:
    """DPL's hidden-context statistic (sec. 5), the share of the utility's variance explained by the response:
        r^2 = Var_a[mu(a)] / (Var_a[mu(a)] + E_a[sigma^2(a)])
    over a set of responses a (the law of total variance: between-response over total). Near 1: one utility
    explains the labels; well below 1: the labels depend on something the model does not see (who labelled,
    by which criterion). Population variance, as the authors' code; a statistic, so its inputs are detached.
    reward_means, reward_vars (N,) -> 0-d.
    For the mean-variance head reward_vars = log_var.exp(); for the categorical head see
    `categorical_reward_moments`."""
    means, variances = reward_means.detach(), reward_vars.detach()
    between = means.var(unbiased=False)
    return between / (between + variances.mean())


def lower_quantile_reward(mean: Tensor, log_var: Tensor, quantile: float) -> Tensor:
    """The q-quantile of a Gaussian utility, mu + Phi^-1(q) sigma: the risk-averse reward DPL optimises (the
    authors use q = 0.01) for PPO or best-of-N. q = 0.5 is the mean; q < 0.5 penalises responses that some
    annotators would rate low. (N,) each -> (N,)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return mean + NormalDist().inv_cdf(quantile) * (0.5 * log_var).exp()
