"""Reward-model losses over scores: Bradley-Terry, Davidson ties, Plackett-Luce rankings, and calibration.

Papers: Bradley & Terry 1952 (paired comparisons); Davidson 1970, "On extending the Bradley-Terry model to
accommodate ties in paired comparison experiments"; Plackett 1975 / Luce 1959 (rankings); Naeini et al. 2015
and Guo et al. 2017, "On calibration of modern neural networks" (calibration error).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhfkit.losses.tokens import masked_sum

Tensor = torch.Tensor


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
    """Per-example NLL of the Bradley-Terry model P(c > r) = sigmoid(r_c - r_r) (Bradley & Terry 1952;
    Ouyang et al. 2022), optionally with a margin (Llama 2): -logsigmoid(r_c - r_r - margin).

    (B,), (B,), margin (B,) or None -> (B,). Its .mean() equals TRL RewardTrainer's loss.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def bradley_terry_soft_loss(reward_a: Tensor, reward_b: Tensor, prob_a: Tensor) -> Tensor:
    """Bradley-Terry with a soft label: cross-entropy of P(a > b) = sigmoid(r_a - r_b) against the target
    p = prob_a in [0, 1] (e.g. an AI judge's normalised option probability, Bai et al. 2022; a share of votes):
        -p logsigmoid(r_a - r_b) - (1 - p) logsigmoid(r_b - r_a)
    p = 1 is `bradley_terry_loss` exactly; the loss is smallest, at the entropy of p, where sigmoid(r_a - r_b) = p,
    so p = 0.5 pulls the two rewards together. (B,), (B,), prob_a (B,) or a float -> (B,)."""
    diff = reward_a - reward_b
    return -(prob_a * F.logsigmoid(diff) + (1 - prob_a) * F.logsigmoid(-diff))


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


def davidson_soft_loss(reward_a: Tensor, reward_b: Tensor, tie: Tensor, prob_a: Tensor, nu=1.0) -> Tensor:
    """Davidson's model (see `preference_loss_with_ties`) with soft labels on the decided rows: a tie row scores
    -log P(tie); any other row the cross-entropy of the decided outcome against p = prob_a,
        -p log P(a > b) - (1 - p) log P(b > a),
    so p = 1 is `preference_loss_with_ties` exactly (for data where some pairs are ties and others carry an AI
    judge's probability). reward_a, reward_b, prob_a (B,); tie (B,) bool. Returns (B,)."""
    log_probs = _davidson_logits(reward_a, reward_b, nu).log_softmax(-1)  # (B, 3): a wins, tie, b wins
    decided = prob_a * log_probs[:, 0] + (1 - prob_a) * log_probs[:, 2]
    return -torch.where(tie.bool(), log_probs[:, 1], decided)


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
    edges = torch.arange(1, n_bins, dtype=probs.dtype, device=probs.device) / n_bins  # k / n, as reliability_bins
    bins = torch.bucketize(probs, edges)  # (N,) in 0..n_bins-1
    count = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device).index_add_(0, bins, torch.ones_like(probs))
    gap = torch.zeros_like(count).index_add_(0, bins, labels - probs)  # per bin: sum(labels) - sum(probs)
    return gap.abs().sum() / probs.numel()
