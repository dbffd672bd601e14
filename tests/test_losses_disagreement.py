"""Unit tests for disagreement-aware rewards: distributional preference learning (mean-variance and categorical
heads, the hidden-context statistic, the lower-quantile reward) and ensemble rewards. Numbers worked out by hand
(working in each docstring) and behaviour.

Run: PYTHONPATH=. python -m pytest tests/test_losses_disagreement.py -q
"""

import itertools
import math

import pytest
import torch

from rlhfkit import losses as L

ATOL = 1e-6
LN2 = math.log(2)
PHI_1 = 0.8413447460685429  # Phi(1)
PHI_MINUS_1 = 1 - PHI_1  # Phi(-1) = 0.158655


def t(*rows, grad=False):
    """float64 tensor from nested values."""
    return torch.tensor(rows[0] if len(rows) == 1 else list(rows), dtype=torch.float64, requires_grad=grad)


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )


# --- mean-variance head -----------------------------------------------------------------------------------


def test_mean_variance_preference_by_hand():
    """Row 1: mu_c - mu_r = 1, variances 0.5 + 0.5 = 1 -> z = 1 -> P = Phi(1) = 0.841345, loss -ln Phi(1) = 0.172754.
    Row 2: mu_c - mu_r = 2, variances 1.5 + 2.5 = 4 -> z = 2 / 2 = 1 -> the same.
    Row 3: equal means -> z = 0 -> P = 1/2, loss ln 2 whatever the variances."""
    chosen_mean, rejected_mean = t([1.0, 3.0, 0.7]), t([0.0, 1.0, 0.7])
    chosen_log_var = t([math.log(0.5), math.log(1.5), 2.0])
    rejected_log_var = t([math.log(0.5), math.log(2.5), -1.0])
    args = (chosen_mean, chosen_log_var, rejected_mean, rejected_log_var)
    close(L.mean_variance_preference_prob(*args), [PHI_1, PHI_1, 0.5])
    close(L.mean_variance_preference_loss(*args), [-math.log(PHI_1), -math.log(PHI_1), LN2])


def test_mean_variance_loss_matches_the_normal_cdf_and_stays_finite_in_the_tail():
    g = torch.Generator().manual_seed(0)
    mc, mr, lc, lr = (torch.randn(10, generator=g, dtype=torch.float64) * 2 for _ in range(4))
    z = (mc - mr) / (lc.exp() + lr.exp()).sqrt()
    close(L.mean_variance_preference_loss(mc, lc, mr, lr), -torch.distributions.Normal(0.0, 1.0).cdf(z).log(), 1e-10)
    # 40 standard deviations the wrong way: Phi underflows in float64 (~1e-350) but log Phi does not
    chosen_mean = t([0.0], grad=True)
    loss = L.mean_variance_preference_loss(chosen_mean, t([0.0]), t([40 * math.sqrt(2)]), t([0.0]))
    loss.backward()
    assert torch.isfinite(loss).all() and torch.isfinite(chosen_mean.grad).all() and chosen_mean.grad < 0


def test_mean_variance_spread_explains_a_wrongly_ordered_pair():
    """With mu_c < mu_r the label is surprising; raising the variance flattens P toward 1/2 and lowers the loss,
    so descent raises log_var; with mu_c > mu_r it lowers log_var (a confident, right pair wants no spread)."""
    for gap, sign in ((-1.0, -1), (1.0, 1)):
        log_var = t([0.0], grad=True)
        L.mean_variance_preference_loss(t([gap]), log_var, t([0.0]), t([0.0])).sum().backward()
        assert sign * log_var.grad.item() > 0


def test_lower_quantile_reward_by_hand():
    """mu = 1, sigma = 2 (log_var = ln 4): q = Phi(-1) -> 1 - 2 = -1; q = 0.5 -> 1; q = Phi(1) -> 3."""
    mean, log_var = t([1.0]), t([math.log(4.0)])
    close(L.lower_quantile_reward(mean, log_var, PHI_MINUS_1), [-1.0])
    close(L.lower_quantile_reward(mean, log_var, 0.5), [1.0])
    close(L.lower_quantile_reward(mean, log_var, PHI_1), [3.0])
    for q in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            L.lower_quantile_reward(mean, log_var, q)


def test_lower_quantile_prefers_the_safe_response_that_the_mean_ranks_second():
    """The paper's jailbreak picture: the unsafe answer has the higher mean but far more spread."""
    mean, log_var = t([1.0, 1.5]), t([math.log(0.1), math.log(4.0)])  # [safe, unsafe]
    assert mean.argmax() == 1
    assert L.lower_quantile_reward(mean, log_var, 0.01).argmax() == 0


# --- categorical head -----------------------------------------------------------------------------------------


def test_categorical_preference_by_hand():
    """Atoms [0, 0.5, 1]; p_c = [1/4, 1/4, 1/2], p_r = [1/2, 1/4, 1/4].
    P(c > r) = sum_i p_c(i) [P(u_r below atom i) + p_r(i) / 2]
             = 1/4 (0 + 1/8) + 1/4 (1/2 + 1/8) + 1/2 (3/4 + 1/8) = 0.0625 + 0.15625 + 0.4375 = 0.65625
    -> loss -ln 0.65625 = 0.421213; read the other way round 0.34375 (ties split, so they sum to 1).
    Moments of p_c: mean 0.125 + 0.5 = 0.625; var 1/4 0.625^2 + 1/4 0.125^2 + 1/2 0.375^2 = 0.171875.
    Batch entropy of [p_c, p_r]: mean [0.375, 0.25, 0.375] -> -(2 * 0.375 ln 0.375 + 0.25 ln 0.25) = 1.082196."""
    chosen_logits = t([[0.25, 0.25, 0.5]]).log()
    rejected_logits = t([[0.5, 0.25, 0.25]]).log()
    close(L.categorical_preference_prob(chosen_logits, rejected_logits), [0.65625])
    close(L.categorical_preference_prob(rejected_logits, chosen_logits), [0.34375])
    close(L.categorical_preference_loss(chosen_logits, rejected_logits), [-math.log(0.65625)])
    mean, var = L.categorical_reward_moments(chosen_logits)
    close(mean, [0.625])
    close(var, [0.171875])
    entropy = -(2 * 0.375 * math.log(0.375) + 0.25 * math.log(0.25))
    close(L.categorical_batch_entropy(torch.cat([chosen_logits, rejected_logits])), entropy)


def test_categorical_same_distribution_is_a_coin_flip_and_gradients_flow():
    logits = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    close(L.categorical_preference_prob(logits, logits.detach()), torch.full((4,), 0.5), atol=1e-12)
    L.categorical_preference_loss(logits, torch.zeros(4, 7, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[:, -1].sum() < 0 < logits.grad[:, 0].sum()  # descent moves the chosen's mass up the atoms


# --- hidden-context statistic ----------------------------------------------------------------------------------


def test_hidden_context_r2_by_hand():
    """means [0, 2] -> population variance 1; variances [1, 3] -> mean 2; r^2 = 1 / (1 + 2) = 1/3.
    No spread -> 1. Equal means with spread -> 0."""
    close(L.hidden_context_r2(t([0.0, 2.0]), t([1.0, 3.0])), 1 / 3)
    close(L.hidden_context_r2(t([0.0, 2.0, 5.0]), t([0.0, 0.0, 0.0])), 1.0)
    close(L.hidden_context_r2(t([1.0, 1.0]), t([0.5, 2.0])), 0.0)


def _fit_mean_variance(persona_utilities: list[list[float]], steps: int = 300) -> float:
    """Fit a mean and log-variance per item on every persona's label of every pair; return r^2."""
    n = len(persona_utilities[0])
    winners, losers = [], []
    for u in persona_utilities:
        for i, j in itertools.combinations(range(n), 2):
            winners.append(i if u[i] > u[j] else j)
            losers.append(j if u[i] > u[j] else i)
    w, lo = torch.tensor(winners), torch.tensor(losers)
    mean = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    log_var = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([mean, log_var], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        L.mean_variance_preference_loss(mean[w], log_var[w], mean[lo], log_var[lo]).mean().backward()
        opt.step()
    return L.hidden_context_r2(mean, log_var.exp()).item()


def test_hidden_context_r2_separates_one_persona_from_disagreeing_personas():
    """One persona ranking six items: the means explain the labels (r^2 near 1). Add a second persona who
    agrees on everything except item 5, which it ranks last: item 5's labels depend on who labelled, the model
    puts spread there, and r^2 drops far below."""
    one = [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
    two = one + [[0.0, 1.0, 2.0, 3.0, 4.0, -1.0]]
    r2_one, r2_two = _fit_mean_variance(one), _fit_mean_variance(two)
    assert r2_one > 0.9 and r2_two < 0.5, (r2_one, r2_two)


# --- ensembles ----------------------------------------------------------------------------------------------


def test_ensemble_rewards_by_hand():
    """scores (E = 3, N = 2) = [[1, 0], [2, 0], [3, 3]]: mean [2, 1]; population variance [2/3, 2];
    std [0.816497, 1.414214]; worst [1, 0].
    mean - 1 * std = [1.183503, -0.414214]; UWO lambda 0.5: [2 - 1/3, 1 - 1] = [1.666667, 0]."""
    scores = t([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]])
    close(L.ensemble_mean(scores), [2.0, 1.0])
    close(L.ensemble_mean_minus_std(scores, 1.0), [2 - math.sqrt(2 / 3), 1 - math.sqrt(2)])
    close(L.ensemble_uncertainty_weighted(scores, 0.5), [2 - 1 / 3, 0.0])
    close(L.ensemble_worst(scores), [1.0, 0.0])
    close(L.ensemble_reward(scores, "mean", 0.0), [2.0, 1.0])
    close(L.ensemble_reward(scores, "mean_minus_std", 1.0), [2 - math.sqrt(2 / 3), 1 - math.sqrt(2)])
    close(L.ensemble_reward(scores, "uncertainty_weighted", 0.5), [2 - 1 / 3, 0.0])
    close(L.ensemble_reward(scores, "worst", 123.0), [1.0, 0.0])


@pytest.mark.parametrize("how", ["mean_minus_std", "uncertainty_weighted", "worst"])
def test_penalised_ensembles_rank_agreement_above_disagreement_at_the_same_mean(how):
    """Both responses have mean 1; the members agree on the first and split on the second."""
    scores = t([[1.0, 3.0], [1.0, -1.0]])
    assert L.ENSEMBLE_REWARDS["mean"](scores, 0.5).diff().item() == 0
    out = L.ensemble_reward(scores, how, 0.5)
    assert out[0] > out[1]


@pytest.mark.parametrize("how", sorted(L.ENSEMBLE_REWARDS))
def test_ensemble_of_one_or_of_agreeing_members_is_that_score(how):
    scores = t([[0.3, -1.2, 2.0]])
    close(L.ensemble_reward(scores, how, 2.0), scores[0])
    close(L.ensemble_reward(scores.expand(4, 3), how, 2.0), scores[0])


def test_ensemble_reward_refuses_unknown_names_and_wrong_shapes():
    with pytest.raises(ValueError, match="choose one of"):
        L.ensemble_reward(torch.zeros(2, 3), "median", 1.0)
    with pytest.raises(ValueError, match=r"\(members, responses\)"):
        L.ensemble_reward(torch.zeros(3), "mean", 1.0)
