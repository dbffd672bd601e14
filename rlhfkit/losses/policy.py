"""Direct preference losses on policy and reference log-probs: the DPO family.

Papers: Rafailov et al. 2023, "Direct Preference Optimization" (DPO); Mitchell 2023, "A note on DPO with
noisy preferences" (cDPO); Azar et al. 2023, "A general theoretical paradigm to understand learning from
human preferences" (IPO); Zhao et al. 2023, "SLiC-HF" (hinge); Chowdhury et al. 2024, "Provably robust
DPO" (rDPO). Formulas follow TRL's DPOTrainer.
- Chen et al. 2024, "On extending Direct Preference Optimization to accommodate ties" (DPO-D and DPO-RK:
  Davidson 1970 and Rao & Kupper 1967 on the implicit rewards).
- Ethayarajh et al. 2024, "KTO: Model alignment as prospect theoretic optimization" (unpaired thumbs up/down);
  the reference point follows TRL's KTOTrainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhfkit.losses.preference import davidson_soft_loss, preference_loss_with_ties

Tensor = torch.Tensor


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


def dpo_soft_label_loss(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float, chosen_prob
):
    """DPO with a soft label per pair: chosen_prob = p in [0, 1], the probability that "chosen" is the better
    response (an AI judge's normalised option probability, a share of annotators). Cross-entropy of the DPO
    preference sigmoid(beta h) against p:
        -p logsigmoid(beta h) - (1 - p) logsigmoid(-beta h)
    which is cDPO (Mitchell 2023) with each pair's own label smoothing eps = 1 - p. p = 1 is plain DPO exactly;
    the loss is smallest where sigmoid(beta h) = p, so p = 0.5 pulls the implicit rewards together.
    chosen_prob (B,) or a float."""
    label_smoothing = 1 - torch.as_tensor(
        chosen_prob, dtype=policy_chosen_logps.dtype, device=policy_chosen_logps.device
    )
    return dpo_sigmoid_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, label_smoothing
    )


# ---------------------------------------------------------------------------------------------------
# Ties in DPO (Chen et al. 2024). Same arguments as the DPO family plus tie (B,) bool; rows with tie False
# mean "chosen preferred". A tie row is scored by the model's probability of a tie, which is largest when the
# two implicit rewards are equal: a tie trains them toward each other, never toward a false preference.
# ---------------------------------------------------------------------------------------------------


def dpo_davidson_tie_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float,
    tie: Tensor,
    nu=1.0,
    chosen_prob: Tensor | None = None,
):
    """DPO-D (Chen et al. 2024): Davidson's (1970) model of ties on DPO's implicit rewards. With
    d = beta h = r_chosen - r_rejected, the implicit-reward margin:
        P(chosen > rejected) = e^{d/2} / (e^{d/2} + e^{-d/2} + nu),   P(tie) = nu / (same)
    non-tie rows score -log P(chosen > rejected), tie rows -log P(tie) (`preference_loss_with_ties` on the
    implicit rewards). nu > 0 is Davidson's own parameter (the tie term nu sqrt(pi_a pi_b)); a paper that
    writes the tie term as 2 nu sqrt(pi_a pi_b) means half this nu. P(tie) at d = 0 is nu / (2 + nu);
    nu = 0 on non-tie rows is plain DPO. With chosen_prob (B,) (soft labels), a non-tie row scores
    -p log P(chosen > rejected) - (1 - p) log P(rejected > chosen) (`davidson_soft_loss`); p = 1 is the above."""
    h, chosen_rewards, rejected_rewards = _dpo_parts(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    if chosen_prob is None:
        losses = preference_loss_with_ties(beta * h, torch.zeros_like(h), tie, nu)
    else:
        losses = davidson_soft_loss(beta * h, torch.zeros_like(h), tie, chosen_prob, nu)
    return losses, chosen_rewards, rejected_rewards


def dpo_rao_kupper_tie_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float,
    tie: Tensor,
    theta=3.0,
):
    """DPO-RK (Chen et al. 2024): Rao & Kupper's (1967) model of ties on DPO's implicit rewards. With strengths
    lambda = e^r, d = beta h and theta > 1:
        P(chosen > rejected) = lambda_c / (lambda_c + theta lambda_r) = sigmoid(d - log theta)
        P(tie) = (theta^2 - 1) lambda_c lambda_r / ((lambda_c + theta lambda_r)(lambda_r + theta lambda_c))
               = (theta^2 - 1) sigmoid(d - log theta) sigmoid(-d - log theta)
    non-tie rows score -log P(chosen > rejected), tie rows -log P(tie). P(tie) at d = 0 is
    (theta - 1) / (theta + 1); theta = 1 allows no ties and is plain DPO on non-tie rows."""
    h, chosen_rewards, rejected_rewards = _dpo_parts(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    log_theta = torch.as_tensor(theta, dtype=h.dtype, device=h.device).log()
    d = beta * h
    log_win = F.logsigmoid(d - log_theta)
    log_tie = torch.log(torch.expm1(2 * log_theta)) + log_win + F.logsigmoid(-d - log_theta)  # theta^2 - 1
    losses = -torch.where(tie.bool(), log_tie, log_win)
    return losses, chosen_rewards, rejected_rewards


DPO_TIE_LOSSES = {"davidson": dpo_davidson_tie_loss, "rao_kupper": dpo_rao_kupper_tie_loss}


# ---------------------------------------------------------------------------------------------------
# KTO: unpaired thumbs up / down (TRL's unpaired-preference format: prompt, completion, label).
# ---------------------------------------------------------------------------------------------------


def kto_mismatched_indices(batch_size: int) -> Tensor:
    """Which completion goes with each prompt for KTO's KL estimate: prompt i with completion i - 1 (prompt 0 with
    the last), the cyclic shift TRL's KTOTrainer uses, so no prompt meets its own completion. -> (B,) int64."""
    if batch_size < 2:
        raise ValueError(f"KTO's KL estimate needs at least 2 examples in a batch, got {batch_size}")
    return torch.arange(batch_size).roll(1)


def kto_batch_kl(policy_mismatched_logps: Tensor, ref_mismatched_logps: Tensor) -> Tensor:
    """KTO's reference point z0 (Ethayarajh et al. 2024, sec. 4.1), a batch estimate of KL(pi || pi_ref):
        z0 = max(0, mean_j [log pi(y'_j | x_j) - log pi_ref(y'_j | x_j)])
    over mismatched pairs (x_j, y'_j) (see `kto_mismatched_indices`), sequence log-probs (B,) each -> 0-d.
    Detached: z0 shifts the loss but no gradient flows through it; clamped at 0 because a KL is never negative.
    With several processes, TRL averages the per-process means before clamping."""
    return (policy_mismatched_logps - ref_mismatched_logps).detach().mean().clamp(min=0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
):
    """KTO (Ethayarajh et al. 2024, sec. 4.1) for unpaired thumbs up (desirable) / down. With the log-ratio
    r = log pi(y|x) - log pi_ref(y|x) and the reference point z0 = kl (`kto_batch_kl`):
        desirable:    w_D (1 - sigmoid(beta (r - z0)))
        undesirable:  w_U (1 - sigmoid(beta (z0 - r)))
    = lambda_y - v(x, y) of the paper. The paper suggests w_D n_D / (w_U n_U) in [1, 4/3] for n_D desirable
    and n_U undesirable examples. The batch mean of the losses is TRL KTOTrainer's loss.

    policy_logps, ref_logps (B,) sequence log-probs; desirable (B,) bool (thumbs up). Returns (losses, rewards),
    (B,) each, rewards = beta r detached. Reference log-probs and kl are detached."""
    logratio = policy_logps - ref_logps.detach()
    z0 = torch.as_tensor(kl, dtype=logratio.dtype, device=logratio.device).detach()
    desirable = desirable.bool()
    value = torch.where(desirable, beta * (logratio - z0), beta * (z0 - logratio))
    weight = torch.where(
        desirable,
        torch.as_tensor(desirable_weight, dtype=logratio.dtype, device=logratio.device),
        torch.as_tensor(undesirable_weight, dtype=logratio.dtype, device=logratio.device),
    )
    return weight * torch.sigmoid(-value), (beta * logratio).detach()
