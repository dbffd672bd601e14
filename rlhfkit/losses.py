"""Losses, advantages and metrics for RLHF as pure functions over tensors (no I/O, no models).

Shapes: B = batch, T = tokens of the response, V = vocabulary, K = items in a ranking.
Masks are 0/1 (bool or numeric) and mark the positions that count; what sits under a 0 is ignored.

Papers:
- Bradley & Terry 1952 (paired comparisons); Davidson 1970, "On extending the Bradley-Terry model to
  accommodate ties in paired comparison experiments"; Plackett 1975 / Luce 1959 (rankings);
  Naeini et al. 2015 and Guo et al. 2017, "On calibration of modern neural networks" (calibration error).
- Rafailov et al. 2023, "Direct Preference Optimization" (DPO); Mitchell 2023, "A note on DPO with noisy
  preferences" (cDPO); Azar et al. 2023, "A general theoretical paradigm to understand learning from
  human preferences" (IPO); Zhao et al. 2023, "SLiC-HF" (hinge); Chowdhury et al. 2024, "Provably robust
  DPO" (rDPO). Formulas follow TRL's DPOTrainer.
- Schulman et al. 2017, "Proximal Policy Optimization"; Schulman et al. 2016, "High-dimensional continuous
  control using generalized advantage estimation" (GAE); Ziegler et al. 2019, "Fine-tuning language models
  from human preferences"; Stiennon et al. 2020, "Learning to summarize from human feedback";
  Huang et al. 2024, "The N+ implementation details of RLHF with PPO"; Schulman 2020, "Approximating KL
  divergence" (blog, k1/k2/k3).
- Ahmadian et al. 2024, "Back to basics: revisiting REINFORCE style optimization" (RLOO);
  Shao et al. 2024, "DeepSeekMath" (GRPO).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _pick(table: dict, name: str, what: str):
    """table[name], or an error that lists the names that would be right."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


# ---------------------------------------------------------------------------------------------------
# Log-probs and masking
# ---------------------------------------------------------------------------------------------------


def selective_log_softmax(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(tokens) under softmax(logits) without materialising the full (B, T, V) log-softmax.

    logits (B, T, V), tokens (B, T) int -> (B, T). float32/float64: logit of the token minus logsumexp,
    one batch row at a time. Half precision: logsumexp loses too much there, so log_softmax row by row
    (as TRL's `selective_log_softmax`).
    """
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # (B, T), one (T, V) at a time
        return picked - lse
    return torch.stack(
        [row.log_softmax(-1).gather(-1, tok.unsqueeze(-1)).squeeze(-1) for row, tok in zip(logits, tokens)]
    )


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = -1) -> Tensor:
    """Sum of x where mask is 1, over `dim` (all dims if None). Values under mask 0 (even NaN) are ignored."""
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over the positions where mask is 1, over `dim` (all dims if None)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries of x (scalar), with Bessel's correction n/(n-1) by default (as TRL)."""
    centred = x - masked_mean(x, mask)
    var = masked_mean(centred**2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x - mean) / sqrt(var + 1e-8) with masked mean and unbiased masked variance (lm-human-preferences,
    TRL). shift_mean=False adds the mean back (used for rewards). Entries under mask 0 are not zeroed."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


_REDUCTIONS = {
    "sum": lambda x, mask: masked_sum(x, mask, dim=-1),
    "mean": lambda x, mask: masked_mean(x, mask, dim=-1),
}


def sequence_logprobs(token_logps: Tensor, mask: Tensor, reduction: str = "sum") -> Tensor:
    """Per-sequence log-prob from per-token ones: (B, T) -> (B,). "sum" = log p(response); "mean" =
    per-token average (what TRL feeds IPO)."""
    return _pick(_REDUCTIONS, reduction, "reduction")(token_logps, mask)


# ---------------------------------------------------------------------------------------------------
# Reward models and preferences
# ---------------------------------------------------------------------------------------------------


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
    """Per-example NLL of the Bradley-Terry model P(c > r) = sigmoid(r_c - r_r) (Bradley & Terry 1952;
    Ouyang et al. 2022), optionally with a margin (Llama 2): -logsigmoid(r_c - r_r - margin).

    (B,), (B,), margin (B,) or None -> (B,). Its .mean() equals TRL RewardTrainer's loss.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def _davidson_logits(reward_a: Tensor, reward_b: Tensor, nu) -> Tensor:
    """(B,) x2 -> (B, 3) unnormalised log-probs of [a wins, tie, b wins]: [d/2, log nu, -d/2], d = r_a - r_b."""
    half = (reward_a - reward_b) / 2
    log_nu = torch.as_tensor(nu, dtype=half.dtype, device=half.device).log().expand_as(half)
    return torch.stack([half, log_nu, -half], dim=-1)


def davidson_probs(reward_a: Tensor, reward_b: Tensor, nu=1.0) -> Tensor:
    """Davidson (1970) probabilities [P(a > b), P(tie), P(b > a)], (B,) x2 -> (B, 3); see
    `preference_loss_with_ties`."""
    return _davidson_logits(reward_a, reward_b, nu).softmax(-1)


def preference_loss_with_ties(reward_a: Tensor, reward_b: Tensor, tie: Tensor, nu=1.0) -> Tensor:
    """Per-example NLL of the Davidson (1970) Bradley-Terry-with-ties model.

    With strengths pi = exp(r):
        P(a > b) = pi_a / (pi_a + pi_b + nu * sqrt(pi_a pi_b)) = e^{d/2} / (e^{d/2} + e^{-d/2} + nu)
        P(tie)   = nu * sqrt(pi_a pi_b) / (same)               = nu      / (e^{d/2} + e^{-d/2} + nu)
    where d = r_a - r_b and nu >= 0 (a float, or a tensor such as log_nu.exp() to learn it). nu = 0 is
    plain Bradley-Terry; the tie probability peaks at d = 0 with nu / (2 + nu).

    reward_a, reward_b (B,); tie (B,) bool. Rows with tie False mean "a preferred over b" and score
    -log P(a > b); tie rows score -log P(tie). Returns (B,).
    """
    log_probs = _davidson_logits(reward_a, reward_b, nu).log_softmax(-1)  # (B, 3)
    return -torch.where(tie.bool(), log_probs[:, 1], log_probs[:, 0])


tie_loss_davidson = preference_loss_with_ties  # the same function, named by its model


def plackett_luce_loss(rewards: Tensor, ranking: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-example NLL of a ranking under the Plackett-Luce model (Plackett 1975; Luce 1959):
        P(ranking) = prod_j exp(s_{pi_j}) / sum_{l >= j} exp(s_{pi_l}),  s = rewards, pi = ranking.

    rewards (B, K); ranking (B, K) item indices, best first; rows with fewer items pad ranking with -1,
    or pass mask (B, K) marking the real positions of `ranking`. Padded items take no part (not even in
    the denominators). K = 2 gives Bradley-Terry. Returns (B,).
    """
    valid = ranking >= 0 if mask is None else mask.bool() & (ranking >= 0)
    s = rewards.gather(1, ranking.clamp(min=0))  # (B, K) scores in ranked order
    s = s.masked_fill(~valid, torch.finfo(s.dtype).min)  # finite, so no NaN gradients
    suffix_lse = s.flip(-1).logcumsumexp(-1).flip(-1)  # (B, K): log sum_{l >= j} exp(s_l)
    return -masked_sum(s - suffix_lse, valid, dim=-1)


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """ECE = sum_b (n_b / N) |mean(labels in b) - mean(probs in b)| over n_bins equal-width bins of [0, 1]
    (Naeini et al. 2015; Guo et al. 2017), bins right-closed: (0, 0.1], (0.1, 0.2], ... (0 goes in the first).

    probs (N,) = predicted P(a preferred); labels (N,) 1 where a was preferred, else 0. Returns a 0-d tensor.
    Calibration of P(label = 1) itself, not of the top-label confidence max(p, 1 - p).
    """
    probs, labels = probs.detach().flatten().double(), labels.detach().flatten().double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype, device=probs.device)[1:-1]
    bins = torch.bucketize(probs, edges)  # (N,) in 0..n_bins-1
    count = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device).index_add_(0, bins, torch.ones_like(probs))
    gap = torch.zeros_like(count).index_add_(0, bins, labels - probs)  # per bin: sum(labels) - sum(probs)
    return gap.abs().sum() / probs.numel()


# ---------------------------------------------------------------------------------------------------
# DPO family. All: (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
# beta, **variant args), each (B,) sequence log-probs -> (losses, chosen_rewards, rejected_rewards), (B,)
# each, rewards = beta * (policy - ref), detached. Reference log-probs are detached too.
# ---------------------------------------------------------------------------------------------------


def implicit_reward(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al. 2023, eq. 5). Not detached."""
    return beta * (policy_logps - ref_logps)


def _dpo_parts(pc, pr, rc, rr, beta):
    """h = (pc - pr) - (rc - rr) and the detached implicit rewards of chosen and rejected."""
    rc, rr = rc.detach(), rr.detach()
    h = (pc - pr) - (rc - rr)
    return h, implicit_reward(pc, rc, beta).detach(), implicit_reward(pr, rr, beta).detach()


def dpo_sigmoid_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float,
    label_smoothing: float = 0.0,
):
    """DPO (Rafailov et al. 2023): -logsigmoid(beta h), h = (pc - pr) - (rc - rr).
    label_smoothing = eps > 0 is conservative DPO (cDPO, Mitchell 2023), labels flipped with prob. eps:
    -(1 - eps) logsigmoid(beta h) - eps logsigmoid(-beta h)."""
    h, chosen_rewards, rejected_rewards = _dpo_parts(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    return losses, chosen_rewards, rejected_rewards


def dpo_ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float):
    """IPO (Azar et al. 2023, eq. 17, beta = tau): (h - 1 / (2 beta))^2. Uses whatever log-probs it is
    given; TRL feeds per-token averages (sequence_logprobs(..., "mean")) so beta does not depend on length."""
    h, chosen_rewards, rejected_rewards = _dpo_parts(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    return (h - 1 / (2 * beta)) ** 2, chosen_rewards, rejected_rewards


def dpo_hinge_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float):
    """Hinge loss of SLiC-HF (Zhao et al. 2023) on the DPO margin: relu(1 - beta h)."""
    h, chosen_rewards, rejected_rewards = _dpo_parts(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    return torch.relu(1 - beta * h), chosen_rewards, rejected_rewards


def dpo_robust_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float,
    label_smoothing: float = 0.0,
):
    """Robust DPO (Chowdhury et al. 2024), unbiased under label-flip rate eps = label_smoothing in [0, 0.5):
    (-(1 - eps) logsigmoid(beta h) + eps logsigmoid(-beta h)) / (1 - 2 eps)."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5), got {label_smoothing}")
    h, chosen_rewards, rejected_rewards = _dpo_parts(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    return losses, chosen_rewards, rejected_rewards


# cDPO is "sigmoid" with label_smoothing > 0, as in TRL.
DPO_LOSSES = {"sigmoid": dpo_sigmoid_loss, "ipo": dpo_ipo_loss, "hinge": dpo_hinge_loss, "robust": dpo_robust_loss}


# ---------------------------------------------------------------------------------------------------
# PPO and online RL
# ---------------------------------------------------------------------------------------------------


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
