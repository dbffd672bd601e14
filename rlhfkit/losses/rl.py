"""PPO and online RL: whitening, KL estimators and penalties, GAE, PPO policy/value losses, critic and
controller metrics, group-relative advantages.

Papers: Schulman et al. 2017, "Proximal Policy Optimization"; Schulman et al. 2016, "High-dimensional
continuous control using generalized advantage estimation" (GAE); Ziegler et al. 2019, "Fine-tuning language
models from human preferences"; Stiennon et al. 2020, "Learning to summarize from human feedback";
Huang et al. 2024, "The N+ implementation details of RLHF with PPO"; Schulman 2020, "Approximating KL
divergence" (blog, k1/k2/k3); Ahmadian et al. 2024, "Back to basics: revisiting REINFORCE style
optimization" (RLOO); Shao et al. 2024, "DeepSeekMath" (GRPO).
"""

from __future__ import annotations

import math

import torch

from rlhfkit.losses.tokens import _pick, masked_mean, masked_var

Tensor = torch.Tensor


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x - mean) / sqrt(var + 1e-8) with masked mean and unbiased masked variance (lm-human-preferences,
    TRL). shift_mean=False adds the mean back (used for rewards). Entries under mask 0 are not zeroed."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log p - log q, unbiased estimate of KL(p || q) for samples from p (Schulman 2020). Per token."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = (log p - log q)^2 / 2: biased, low variance, never negative (Schulman 2020). Per token."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = (q/p - 1) - log(q/p): unbiased, never negative (Schulman 2020). Per token."""
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_penalized_rewards(
    score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_coef: float, estimator: str = "k1"
) -> Tensor:
    """Per-token PPO rewards (Ziegler et al. 2019; Stiennon et al. 2020): -kl_coef * KL_t on every response
    token, plus the reward model's score on the last token where mask is 1.

    score (B,); logp, ref_logp, mask (B, T) -> (B, T), zero under the mask, detached (rewards are constants).
    """
    mask = mask.bool()
    if not mask.any(-1).all():
        raise ValueError("kl_penalized_rewards: a row of `mask` has no response token to put the score on")
    kl = _pick(KL_ESTIMATORS, estimator, "KL estimator")(logp.detach(), ref_logp.detach())
    rewards = torch.where(mask, -kl_coef * kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = positions.masked_fill(~mask, -1).amax(-1, keepdim=True)  # (B, 1) index of the last response token
    return rewards.scatter_add(-1, last, score.detach().to(rewards.dtype).unsqueeze(-1))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016), a reversed loop as in CleanRL:
        delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1},  returns = A + V.
    rewards, values, mask (B, T), responses right-padded; rewards and values under mask 0 count as 0,
    so the last response token's next value is 0. Returns (advantages, returns), (B, T), detached.
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    rewards = torch.where(mask, rewards.detach(), zero)
    values = torch.where(mask, values.detach(), zero)
    T = rewards.shape[-1]
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t < T - 1 else zero
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    return advantages, advantages + values


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float = 0.2):
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:
        masked_mean(max(-A r, -A clip(r, 1 - eps, 1 + eps))),  r = exp(logprobs - old_logprobs).
    (B, T) inputs -> (loss, {"clipfrac", "approx_kl"}). clipfrac: share of tokens where the clipped term
    is the larger (lm-human-preferences); approx_kl: mean of (r - 1) - log r (k3, as CleanRL).
    Gradients reach `logprobs` only.
    """
    advantages = advantages.detach()
    logratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(logratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(pg_losses, pg_losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses_clipped > pg_losses).to(ratio.dtype), mask),
            "approx_kl": masked_mean((ratio - 1) - logratio, mask),
        }
    return loss, stats


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float = 0.2):
    """Clipped value loss (lm-human-preferences, TRL):
        0.5 * masked_mean(max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)).
    (B, T) inputs -> (loss, {"vf_clipfrac"}). Gradients reach `values` only.
    """
    old_values, returns = old_values.detach(), returns.detach()
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(vf_losses, vf_losses_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((vf_losses_clipped > vf_losses).to(values.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits): logsumexp(l) - sum softmax(l) l. (B, T, V) -> (B, T)."""
    return torch.logsumexp(logits, -1) - (logits.softmax(-1) * logits).sum(-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 is a perfect critic, 0 no better than a constant,
    NaN if the returns do not vary. (B, T) -> 0-d tensor."""
    values, returns = values.detach(), returns.detach()
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask)


def adaptive_kl_coef(kl_coef: float, current_kl: float, target_kl: float, horizon: float, n_steps: int) -> float:
    """Adaptive KL controller (Ziegler et al. 2019, sec. 2.2): err = clip(KL / target - 1, -0.2, 0.2),
    beta <- beta (1 + err n / horizon), n = samples since the last update. Returns the new coefficient."""
    err = min(max(float(current_kl) / target_kl - 1, -0.2), 0.2)
    return kl_coef * (1 + err * n_steps / horizon)


def _groups(scores: Tensor, group_size: int, need: int) -> Tensor:
    """(B,) -> (B / group_size, group_size), consecutive samples of one prompt per row."""
    if group_size < need or scores.numel() % group_size:
        raise ValueError(
            f"scores ({scores.numel()}) must split into groups of group_size >= {need}, got group_size={group_size}"
        )
    return scores.detach().view(-1, group_size)


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): A_i = s_i - mean of the other
    k - 1 scores of the same prompt. scores (B,), consecutive groups of group_size -> (B,)."""
    grouped = _groups(scores, group_size, need=2)  # (G, k)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).flatten()


def grpo_advantages(scores: Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """GRPO group-relative advantages (Shao et al. 2024): (s - group mean) / (group std + eps), std with
    Bessel's correction and eps = 1e-4 as TRL's GRPOTrainer; scale=False only subtracts the mean (Dr. GRPO).
    scores (B,), consecutive groups of group_size -> (B,)."""
    grouped = _groups(scores, group_size, need=2 if scale else 1)  # (G, k)
    advantages = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(-1, keepdim=True) + eps)
    return advantages.flatten()


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n (Stiennon et al. 2020, app.; Hilton & Gao)."""
    return math.log(n) - (n - 1) / n
