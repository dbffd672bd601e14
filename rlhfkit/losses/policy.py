"""Direct preference losses on policy and reference log-probs: the DPO family.

Papers: Rafailov et al. 2023, "Direct Preference Optimization" (DPO); Mitchell 2023, "A note on DPO with
noisy preferences" (cDPO); Azar et al. 2023, "A general theoretical paradigm to understand learning from
human preferences" (IPO); Zhao et al. 2023, "SLiC-HF" (hinge); Chowdhury et al. 2024, "Provably robust
DPO" (rDPO). Formulas follow TRL's DPOTrainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
