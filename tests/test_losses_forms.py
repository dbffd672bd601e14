"""Unit tests for the losses that train on every form of feedback: KTO (thumbs), ties in DPO, soft labels,
ratings (regression and ordered logit). Numbers worked out by hand (working in each docstring) and behaviour.

Run: PYTHONPATH=. python -m pytest tests/test_losses_forms.py -q
"""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhfkit import losses as L

ATOL = 1e-6
LN2, LN3 = math.log(2), math.log(3)
NLS1 = 0.31326168751822286  # -logsigmoid(1) = log(1 + e^-1)
ENTROPY_3_4 = 0.5623351446188083  # -(3/4 ln 3/4 + 1/4 ln 1/4)


def t(*rows, grad=False):
    """float64 tensor from nested values."""
    return torch.tensor(rows[0] if len(rows) == 1 else list(rows), dtype=torch.float64, requires_grad=grad)


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )


def dpo_inputs(grad=False):
    """pc = -1, pr = -3, rc = -2, rr = -2 -> h = (-1 - -3) - (-2 - -2) = 2."""
    return t([-1.0], grad=grad), t([-3.0], grad=grad), t([-2.0], grad=grad), t([-2.0], grad=grad)


# --- KTO ------------------------------------------------------------------------------------------------


def test_kto_mismatched_indices_pair_each_prompt_with_the_previous_completion():
    """TRL rotates completions by one within a batch: (x1, y4), (x2, y1), (x3, y2), (x4, y3)."""
    assert L.kto_mismatched_indices(4).tolist() == [3, 0, 1, 2]
    assert L.kto_mismatched_indices(2).tolist() == [1, 0]
    with pytest.raises(ValueError, match="at least 2"):
        L.kto_mismatched_indices(1)


def test_kto_batch_kl_by_hand_clamped_and_detached():
    """policy - ref on mismatched pairs: [-1 - -2, -3 - -3, -2 - -2.5] = [1, 0, 0.5] -> mean 0.5.
    [-1.5, 0, 1] -> mean -1/6 -> clamped to 0 (a KL is never negative)."""
    policy, ref = t([-1.0, -3.0, -2.0], grad=True), t([-2.0, -3.0, -2.5], grad=True)
    z0 = L.kto_batch_kl(policy, ref)
    close(z0, 0.5)
    assert z0.dim() == 0 and not z0.requires_grad
    close(L.kto_batch_kl(t([-3.5, -3.0, -1.5]), t([-2.0, -3.0, -2.5])), 0.0)


def test_kto_loss_by_hand():
    """beta 1, z0 0.5, ref = -2 everywhere, w_D 1, w_U 2.
    Row 0 desirable, r = (-1.5 + ln 3) - (-2) = 0.5 + ln 3: 1 - sigmoid(1 (r - z0)) = 1 - sigmoid(ln 3) = 1/4.
    Row 1 undesirable, same r: 2 (1 - sigmoid(z0 - r)) = 2 (1 - sigmoid(-ln 3)) = 2 * 3/4 = 1.5.
    Row 2 desirable, r = 0.5 = z0: 1 - sigmoid(0) = 1/2.
    Mean (TRL's loss) = (0.25 + 1.5 + 0.5) / 3 = 0.75. Rewards beta r = [0.5 + ln 3, 0.5 + ln 3, 0.5]."""
    policy = t([-1.5 + LN3, -1.5 + LN3, -1.5])
    ref = t([-2.0, -2.0, -2.0])
    desirable = torch.tensor([True, False, True])
    losses, rewards = L.kto_loss(policy, ref, desirable, kl=0.5, beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    close(losses, [0.25, 1.5, 0.5])
    close(losses.mean(), 0.75)
    close(rewards, [0.5 + LN3, 0.5 + LN3, 0.5])


def test_kto_loss_with_beta_scales_the_margin():
    """beta 0.5, z0 0, r = 2 ln 3 (desirable): 1 - sigmoid(0.5 * 2 ln 3) = 1/4; undesirable: 1 - sigmoid(-ln 3) = 3/4."""
    policy, ref = t([2 * LN3, 2 * LN3]), t([0.0, 0.0])
    losses, rewards = L.kto_loss(policy, ref, torch.tensor([True, False]), kl=torch.tensor(0.0), beta=0.5)
    close(losses, [0.25, 0.75])
    close(rewards, [LN3, LN3])


def test_kto_gradients_raise_desirable_lower_undesirable_and_skip_reference_and_kl():
    policy = t([-2.0, -2.0], grad=True)
    ref = t([-2.5, -2.5], grad=True)
    kl = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    losses, rewards = L.kto_loss(policy, ref, torch.tensor([True, False]), kl, beta=0.1)
    assert not rewards.requires_grad
    losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]  # descent raises the thumbs-up, lowers the thumbs-down
    assert ref.grad is None and kl.grad is None


def test_kto_higher_reference_point_makes_desirable_harder():
    """z0 is the bar a desirable response must clear: raising it raises a desirable row's loss and lowers an
    undesirable row's."""
    policy, ref = t([-1.0, -1.0]), t([-1.2, -1.2])
    desirable = torch.tensor([True, False])
    low, _ = L.kto_loss(policy, ref, desirable, 0.0, 0.5)
    high, _ = L.kto_loss(policy, ref, desirable, 1.0, 0.5)
    assert high[0] > low[0] and high[1] < low[1]


# --- ties in DPO ------------------------------------------------------------------------------------------


def test_dpo_davidson_tie_by_hand():
    """h = 2, beta = ln 2 -> d = 2 ln 2, e^{d/2} = 2, e^{-d/2} = 1/2; nu = 0.5 -> Z = 2 + 0.5 + 0.5 = 3.
    Not a tie: -log(2/3) = log 1.5 = 0.405465; a tie: -log(0.5/3) = log 6 = 1.791759.
    Rewards: beta (pc - rc) = ln 2, beta (pr - rr) = -ln 2."""
    tie = torch.tensor([False])
    losses, chosen_rewards, rejected_rewards = L.dpo_davidson_tie_loss(*dpo_inputs(), LN2, tie, nu=0.5)
    close(losses, [math.log(1.5)])
    close(chosen_rewards, [LN2])
    close(rejected_rewards, [-LN2])
    losses, _, _ = L.DPO_TIE_LOSSES["davidson"](*dpo_inputs(), LN2, torch.tensor([True]), nu=0.5)
    close(losses, [math.log(6)])


def test_dpo_rao_kupper_tie_by_hand():
    """theta = 3, h = 2, beta = ln 3 / 2 -> d = ln 3. P(chosen) = sigmoid(ln 3 - ln 3) = 1/2 -> loss ln 2;
    P(tie) = (9 - 1) sigmoid(0) sigmoid(-2 ln 3) = 8 * 1/2 * 1/10 = 0.4 -> loss ln 2.5 = 0.916291;
    P(rejected) = sigmoid(-2 ln 3) = 0.1, and 0.5 + 0.4 + 0.1 = 1."""
    beta = LN3 / 2
    win, _, _ = L.dpo_rao_kupper_tie_loss(*dpo_inputs(), beta, torch.tensor([False]), theta=3.0)
    tie, _, _ = L.DPO_TIE_LOSSES["rao_kupper"](*dpo_inputs(), beta, torch.tensor([True]), theta=3.0)
    close(win, [LN2])
    close(tie, [math.log(2.5)])


@pytest.mark.parametrize("name,kw", [("davidson", {"nu": 0.0}), ("rao_kupper", {"theta": 1.0})])
def test_dpo_tie_losses_without_ties_are_plain_dpo(name, kw):
    """Davidson nu = 0 and Rao-Kupper theta = 1 put no mass on ties: non-tie rows are -logsigmoid(beta h)."""
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    losses, _, _ = L.DPO_TIE_LOSSES[name](pc, pr, rc, rr, 0.2, torch.zeros(6, dtype=torch.bool), **kw)
    close(losses, L.dpo_sigmoid_loss(pc, pr, rc, rr, 0.2)[0], atol=1e-12)


@pytest.mark.parametrize("name", sorted(L.DPO_TIE_LOSSES))
def test_dpo_tie_loss_is_smallest_at_equal_implicit_rewards(name):
    """A tie row's loss over the policy's chosen log-prob (h = pc + 1 here) is lowest at h = 0, and its gradient
    pulls h back to 0 from either side: a tie is never trained as a preference."""
    pr, rc, rr = t([-1.0]), t([-2.0]), t([-2.0])
    tie = torch.tensor([True])
    grid = torch.linspace(-4.0, 2.0, 61, dtype=torch.float64)  # pc values; h = pc - (-1) = pc + 1
    values = torch.stack([L.DPO_TIE_LOSSES[name](pc.view(1), pr, rc, rr, 0.5, tie)[0][0] for pc in grid])
    close(grid[values.argmin()] + 1, 0.0)
    for pc_value, sign in ((-0.5, 1), (-1.5, -1)):  # h = +0.5 and h = -0.5
        pc = t([pc_value], grad=True)
        L.DPO_TIE_LOSSES[name](pc, pr, rc, rr, 0.5, tie)[0].sum().backward()
        assert sign * pc.grad.item() > 0  # descent moves pc toward h = 0


@pytest.mark.parametrize("name", sorted(L.DPO_TIE_LOSSES))
def test_dpo_tie_losses_detach_reference_and_rewards(name):
    pc, pr, rc, rr = dpo_inputs(grad=True)
    losses, chosen_rewards, rejected_rewards = L.DPO_TIE_LOSSES[name](pc, pr, rc, rr, 0.1, torch.tensor([False]))
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()
    assert rc.grad is None and rr.grad is None


# --- soft labels ------------------------------------------------------------------------------------------


def test_bradley_terry_soft_by_hand():
    """r_a - r_b = ln 3 -> sigmoid = 3/4. p = 3/4: -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.562335 (the entropy of p);
    p = 1: -ln 3/4 = 0.287682; p = 0: -ln 1/4 = ln 4; p = 1/2: (ln 4/3 + ln 4) / 2 = 0.836988."""
    a, b = t([LN3, LN3, LN3, LN3]), t([0.0, 0.0, 0.0, 0.0])
    out = L.bradley_terry_soft_loss(a, b, t([0.75, 1.0, 0.0, 0.5]))
    close(out, [ENTROPY_3_4, math.log(4 / 3), math.log(4), (math.log(4 / 3) + math.log(4)) / 2])


def test_bradley_terry_soft_with_hard_labels_is_bradley_terry_exactly():
    """p = 1 reproduces bradley_terry_loss bit for bit; p = 0 is the pair read the other way round."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(9, generator=g, dtype=torch.float64) * 4, torch.randn(9, generator=g, dtype=torch.float64) * 4
    assert torch.equal(L.bradley_terry_soft_loss(a, b, torch.ones(9, dtype=torch.float64)), L.bradley_terry_loss(a, b))
    assert torch.equal(L.bradley_terry_soft_loss(a, b, 1.0), L.bradley_terry_loss(a, b))
    close(L.bradley_terry_soft_loss(a, b, 0.0), L.bradley_terry_loss(b, a), atol=1e-12)


def test_bradley_terry_soft_is_minimised_where_the_model_matches_the_label():
    """d/dd [-p log s(d) - (1 - p) log s(-d)] = s(d) - p = 0 at d = logit(p): for p = 0.8, d = ln 4."""
    d = t([math.log(4.0)], grad=True)
    L.bradley_terry_soft_loss(d, torch.zeros(1, dtype=torch.float64), t([0.8])).sum().backward()
    close(d.grad, [0.0], atol=1e-12)


def test_dpo_soft_label_by_hand_and_equal_to_cdpo():
    """h = 2, beta = ln 3 / 2 -> beta h = ln 3: p = 3/4 gives the entropy 0.562335. p = 0.9 equals cDPO with
    label_smoothing 0.1; at beta 0.5 (beta h = 1) that is 0.313262 + 0.1 = 0.413262 (test_losses.py)."""
    losses, chosen_rewards, rejected_rewards = L.dpo_soft_label_loss(*dpo_inputs(), LN3 / 2, t([0.75]))
    close(losses, [ENTROPY_3_4])
    close(chosen_rewards, [LN3 / 2])
    close(rejected_rewards, [-LN3 / 2])
    close(L.dpo_soft_label_loss(*dpo_inputs(), 0.5, 0.9)[0], [NLS1 + 0.1])


def test_dpo_soft_label_with_hard_labels_is_dpo_exactly():
    g = torch.Generator().manual_seed(2)
    pc, pr, rc, rr = (torch.randn(7, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    hard = L.dpo_soft_label_loss(pc, pr, rc, rr, 0.1, torch.ones(7, dtype=torch.float64))[0]
    assert torch.equal(hard, L.dpo_sigmoid_loss(pc, pr, rc, rr, 0.1)[0])
    p = torch.rand(7, generator=g, dtype=torch.float64)
    h = (pc - pr) - (rc - rr)
    expected = -p * F.logsigmoid(0.1 * h) - (1 - p) * F.logsigmoid(-0.1 * h)  # per pair, its own label
    close(L.dpo_soft_label_loss(pc, pr, rc, rr, 0.1, p)[0], expected, atol=1e-12)


def test_dpo_soft_label_of_one_half_pulls_the_implicit_rewards_together():
    """p = 0.5 with h = 2 > 0: descent lowers pc and raises pr. Reference log-probs get no gradient."""
    pc, pr, rc, rr = dpo_inputs(grad=True)
    losses, chosen_rewards, _ = L.dpo_soft_label_loss(pc, pr, rc, rr, 0.5, t([0.5]))
    assert not chosen_rewards.requires_grad
    losses.sum().backward()
    assert pc.grad.item() > 0 > pr.grad.item()
    assert rc.grad is None and rr.grad is None


# --- ratings ----------------------------------------------------------------------------------------------


def test_ratings_to_unit_interval_by_hand():
    """(r - 1) / (scale - 1): [1, 3, 5] of 5 -> [0, 0.5, 1]; 5 of 10 -> 4/9."""
    close(L.ratings_to_unit_interval(t([1.0, 3.0, 5.0]), 5), [0.0, 0.5, 1.0])
    close(L.ratings_to_unit_interval(t([1.0, 3.0, 5.0]), torch.tensor([5, 5, 10])), [0.0, 0.5, 4 / 9])


def test_standardize_ratings_by_hand():
    """All together: [1, 2, 3, 5, 5], mean 3.2, population var (4.84 + 1.44 + 0.04 + 3.24 + 3.24) / 5 = 2.56,
    std 1.6 -> [-1.375, -0.75, -0.125, 1.125, 1.125].
    Per group [0, 0, 0, 1, 1]: group 0 mean 2, std sqrt(2/3) -> [-1.224745, 0, 1.224745]; group 1 all equal -> 0."""
    ratings = t([1.0, 2.0, 3.0, 5.0, 5.0])
    close(L.standardize_ratings(ratings), [-1.375, -0.75, -0.125, 1.125, 1.125])
    s = math.sqrt(1.5)
    close(L.standardize_ratings(ratings, torch.tensor([0, 0, 0, 1, 1])), [-s, 0.0, s, 0.0, 0.0])


def test_rating_regression_loss_by_hand_and_gradient():
    """(0.5 - 0)^2 = 0.25, (1 - 1)^2 = 0; d/dr = 2 (r - t) = [1, 0]."""
    rewards = t([0.5, 1.0], grad=True)
    out = L.rating_regression_loss(rewards, t([0.0, 1.0]))
    close(out, [0.25, 0.0])
    out.sum().backward()
    close(rewards.grad, [1.0, 0.0])


def test_ordered_thresholds_by_hand_and_always_increasing():
    """raw [0, ln(e - 1), 0] -> [0, 0 + softplus(ln(e - 1)) = 1, 1 + softplus(0) = 1 + ln 2]. Any raw gives an
    increasing sequence. initial_threshold_params(5) -> [-1.5, -0.5, 0.5, 1.5]."""
    close(L.ordered_thresholds(t([0.0, math.log(math.e - 1), 0.0])), [0.0, 1.0, 1 + LN2])
    raw = torch.randn(50, 6, dtype=torch.float64) * 5
    assert all((L.ordered_thresholds(r).diff() > 0).all() for r in raw)
    close(L.ordered_thresholds(L.initial_threshold_params(5)), [-1.5, -0.5, 0.5, 1.5])
    close(L.ordered_thresholds(L.initial_threshold_params(2)), [0.0])


def test_ordinal_logit_by_hand():
    """K = 3, thresholds [-ln 3, ln 3].
    r = 0: P(<= 1) = sigmoid(-ln 3) = 1/4, P(<= 2) = sigmoid(ln 3) = 3/4 -> P = [1/4, 1/2, 1/4]:
    NLL of ratings 1, 2, 3 = ln 4, ln 2, ln 4.
    r = ln 3: P(<= 1) = sigmoid(-2 ln 3) = 1/10, P(<= 2) = sigmoid(0) = 1/2 -> P = [0.1, 0.4, 0.5]:
    NLL of rating 3 = ln 2, of rating 1 = ln 10."""
    thresholds = t([-LN3, LN3])
    close(L.ordinal_log_probs(t([0.0, LN3]), thresholds).exp(), [[0.25, 0.5, 0.25], [0.1, 0.4, 0.5]])
    rewards = t([0.0, 0.0, 0.0, LN3, LN3])
    ratings = torch.tensor([1, 2, 3, 3, 1])
    close(L.ordinal_logit_loss(rewards, ratings, thresholds), [math.log(4), LN2, math.log(4), LN2, math.log(10)])
    close(
        L.ordinal_logit_loss(rewards, ratings.double(), thresholds), [math.log(4), LN2, math.log(4), LN2, math.log(10)]
    )


def test_ordinal_logit_with_two_levels_is_logistic_regression():
    """K = 2: P(rating 2) = 1 - sigmoid(theta - r) = sigmoid(r - theta)."""
    rewards, theta = torch.randn(8, dtype=torch.float64) * 3, t([0.7])
    ratings = torch.tensor([1, 2] * 4)
    expected = torch.where(ratings == 2, -F.logsigmoid(rewards - 0.7), -F.logsigmoid(0.7 - rewards))
    close(L.ordinal_logit_loss(rewards, ratings, theta), expected, atol=1e-12)


def test_ordinal_probabilities_sum_to_one_and_gradients_are_finite():
    raw = L.initial_threshold_params(5).double().requires_grad_()
    rewards = t([-30.0, -1.0, 0.0, 2.0, 30.0], grad=True)
    thresholds = L.ordered_thresholds(raw)
    close(L.ordinal_log_probs(rewards, thresholds).exp().sum(-1), torch.ones(5), atol=1e-12)
    L.ordinal_logit_loss(rewards, torch.tensor([1, 2, 3, 4, 5]), thresholds).sum().backward()
    assert torch.isfinite(rewards.grad).all() and torch.isfinite(raw.grad).all()
    assert raw.grad.abs().sum() > 0  # the thresholds learn


def test_ordinal_higher_reward_means_higher_expected_rating():
    thresholds = L.ordered_thresholds(L.initial_threshold_params(5)).double()
    probs = L.ordinal_log_probs(t([-2.0, 0.0, 2.0]), thresholds).exp()
    expected_rating = (probs * torch.arange(1, 6, dtype=torch.float64)).sum(-1)
    assert (expected_rating.diff() > 0).all()


def test_ordinal_logit_refuses_ratings_off_the_scale():
    thresholds = t([-1.0, 1.0])
    with pytest.raises(ValueError, match=r"whole numbers in 1\.\.3"):
        L.ordinal_logit_loss(t([0.0]), torch.tensor([4]), thresholds)
    with pytest.raises(ValueError, match="whole numbers"):
        L.ordinal_logit_loss(t([0.0]), t([2.5]), thresholds)


# --- soft labels with ties (Davidson) ----------------------------------------------------------------------


def test_davidson_soft_loss_by_hand():
    """d = r_a - r_b = 2 ln 2 -> e^{d/2} = 2, e^{-d/2} = 1/2; nu = 0.5 -> Z = 3: P(a) = 2/3, P(tie) = 1/6,
    P(b) = 1/6. p = 3/4: -(3/4 ln 2/3 + 1/4 ln 1/6) = 0.75 * 0.405465 + 0.25 * 1.791759 = 0.752039;
    p = 1: ln 1.5 = 0.405465 (Davidson's hard loss); a tie row ignores p: ln 6 = 1.791759."""
    a, b = t([2 * LN2, 2 * LN2, 2 * LN2]), t([0.0, 0.0, 0.0])
    tie = torch.tensor([False, False, True])
    out = L.davidson_soft_loss(a, b, tie, t([0.75, 1.0, 0.3]), nu=0.5)
    close(out, [0.75 * math.log(1.5) + 0.25 * math.log(6), math.log(1.5), math.log(6)])
    close(L.davidson_soft_loss(a, b, tie, t([1.0, 1.0, 1.0]), 0.5), L.preference_loss_with_ties(a, b, tie, 0.5))


def test_dpo_davidson_with_soft_labels_is_davidson_soft_on_the_implicit_rewards():
    """DPO-D with chosen_prob = p on a decided row: h = 2, beta = ln 2 -> d = 2 ln 2 as above; p = 1 is DPO-D."""
    tie = torch.tensor([False])
    soft, _, _ = L.dpo_davidson_tie_loss(*dpo_inputs(), LN2, tie, nu=0.5, chosen_prob=t([0.75]))
    close(soft, [0.75 * math.log(1.5) + 0.25 * math.log(6)])
    hard, _, _ = L.dpo_davidson_tie_loss(*dpo_inputs(), LN2, tie, nu=0.5, chosen_prob=t([1.0]))
    close(hard, L.dpo_davidson_tie_loss(*dpo_inputs(), LN2, tie, nu=0.5)[0])


# --- one reward from a spread: ensembles and reward distributions -----------------------------------------


def test_mixture_moments_by_hand():
    """Two members, one response: N(1, 1) and N(3, 4): mean 2; variance (1 + 4) / 2 + ((1-2)^2 + (3-2)^2) / 2
    = 2.5 + 1 = 3.5."""
    mean, var = L.mixture_moments(t([[1.0], [3.0]]), t([[1.0], [4.0]]))
    close(mean, [2.0])
    close(var, [3.5])


def test_transformed_reward_by_hand():
    """Means [[1, 0], [3, 0]], variances [[1, 0], [4, 0]]: response 1 mean 2, var 3.5 (above), response 2 mean 0,
    var 0. mean_minus_std 2: [2 - 2 sqrt 3.5, 0] = [-1.741657, 0]; uncertainty_weighted 0.5: [2 - 1.75, 0];
    quantile Phi(-1): [2 - sqrt 3.5, 0]; worst: [1, 0]."""
    means, variances = t([[1.0, 0.0], [3.0, 0.0]]), t([[1.0, 0.0], [4.0, 0.0]])
    close(L.transformed_reward(means, variances, "mean"), [2.0, 0.0])
    close(L.transformed_reward(means, variances, "mean_minus_std", 2.0), [2 - 2 * math.sqrt(3.5), 0.0])
    close(L.transformed_reward(means, variances, "uncertainty_weighted", 0.5), [0.25, 0.0])
    close(L.transformed_reward(means, variances, "quantile", 0.15865525393145707), [2 - math.sqrt(3.5), 0.0])
    close(L.transformed_reward(means, variances, "worst"), [1.0, 0.0])


@pytest.mark.parametrize("how, coef", [("mean", None), ("mean_minus_std", 0.7), ("uncertainty_weighted", 0.7),
                                       ("worst", None)])  # fmt: skip
def test_transforms_of_point_scores_are_the_ensemble_rewards(how, coef):
    """With variance 0 everywhere, one mechanism gives exactly Coste et al.'s ensemble rewards."""
    scores = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    close(L.transformed_reward(scores, torch.zeros_like(scores), how, coef), L.ensemble_reward(scores, how, coef or 0))


def test_quantile_of_one_distribution_is_the_lower_quantile_reward():
    mean = torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_var = torch.randn(5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    close(
        L.transformed_reward(mean[None], log_var.exp()[None], "quantile", 0.1),
        L.lower_quantile_reward(mean, log_var, 0.1),
    )


def test_transformed_reward_refuses_bad_names_shapes_and_quantiles():
    with pytest.raises(ValueError, match="choose one of"):
        L.transformed_reward(torch.zeros(1, 2), torch.zeros(1, 2), "median")
    with pytest.raises(ValueError, match=r"\(members, responses\)"):
        L.transformed_reward(torch.zeros(2), torch.zeros(2), "mean")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        L.transformed_reward(torch.zeros(1, 2), torch.zeros(1, 2), "quantile", 1.5)
