"""Unit tests for rlhfkit.losses: numbers worked out by hand (working in each docstring) and behaviour.

Run: PYTHONPATH=. python -m pytest tests/test_losses.py -q
"""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhfkit import losses as L

ATOL = 1e-6
LN2, LN3 = math.log(2), math.log(3)
NLS1 = 0.31326168751822286  # -logsigmoid(1) = log(1 + e^-1)


def t(*rows, grad=False):
    """float64 tensor from nested values."""
    return torch.tensor(rows[0] if len(rows) == 1 else list(rows), dtype=torch.float64, requires_grad=grad)


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )


# --- log-probs and masking --------------------------------------------------------------------------


def test_selective_log_softmax_by_hand():
    """logits [0, ln 3] -> softmax [1/4, 3/4]; token 1 -> log 0.75 = -0.287682, token 0 -> log 0.25."""
    logits = t([[[0.0, LN3], [0.0, LN3]]])  # (1, 2, 2)
    out = L.selective_log_softmax(logits, torch.tensor([[1, 0]]))
    close(out, [[math.log(0.75), math.log(0.25)]])


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_selective_log_softmax_matches_log_softmax_gather(dtype, atol):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, 11, generator=g, dtype=torch.float64)).to(dtype)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    expected = logits.double().log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    close(L.selective_log_softmax(logits, tokens).double(), expected, atol=atol)


def test_selective_log_softmax_gradient_matches():
    logits = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 3))
    (g1,) = torch.autograd.grad(L.selective_log_softmax(logits, tokens).sum(), logits)
    (g2,) = torch.autograd.grad(logits.log_softmax(-1).gather(-1, tokens[..., None]).sum(), logits)
    close(g1, g2, atol=1e-12)


def test_masked_sum_mean_var_by_hand():
    """x = [1, 2, 3, 100], mask [1, 1, 1, 0]: sum 6, mean 2, unbiased var ((1)+(0)+(1))/(3-1) = 1,
    biased 2/3. NaN under the mask is ignored. Per row (dim=-1): [[1, 2], [3, nan]] with [[1,1],[1,0]]
    -> sums [3, 3], means [1.5, 3]."""
    x, mask = t([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0])
    close(L.masked_sum(x, mask), 6.0)
    close(L.masked_mean(x, mask), 2.0)
    close(L.masked_var(x, mask), 1.0)
    close(L.masked_var(x, mask, unbiased=False), 2 / 3)
    x2, m2 = t([[1.0, 2.0], [3.0, float("nan")]]), torch.tensor([[True, True], [True, False]])
    close(L.masked_sum(x2, m2), [3.0, 3.0])
    close(L.masked_mean(x2, m2, dim=-1), [1.5, 3.0])
    close(L.masked_mean(x2, m2), 2.0)


def test_masked_whiten_by_hand():
    """x = [1, 2, 3, 100], mask [1, 1, 1, 0]: mean 2, unbiased var 1 -> (x - 2)/sqrt(1 + 1e-8) = [-1, 0, 1]
    (to 5e-9); shift_mean=False adds the mean 2 back -> [1, 2, 3]."""
    x, mask = t([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0])
    close(L.masked_whiten(x, mask)[:3], [-1.0, 0.0, 1.0])
    close(L.masked_whiten(x, mask, shift_mean=False)[:3], [1.0, 2.0, 3.0])


def test_masked_whiten_gives_mean_0_std_1_on_masked_entries():
    g = torch.Generator().manual_seed(1)
    x = 5 + 3 * torch.randn(4, 9, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 9, generator=g) > 0.3
    w = L.masked_whiten(x, mask)
    close(w[mask].mean(), 0.0)
    close(w[mask].std(), 1.0)  # unbiased, as the whitening uses


def test_sequence_logprobs_by_hand():
    """[-1, -2, -3] with mask [1, 1, 0]: sum -3, mean -1.5."""
    logps, mask = t([[-1.0, -2.0, -3.0]]), torch.tensor([[1, 1, 0]])
    close(L.sequence_logprobs(logps, mask), [-3.0])
    close(L.sequence_logprobs(logps, mask, "mean"), [-1.5])
    with pytest.raises(ValueError, match="choose one of"):
        L.sequence_logprobs(logps, mask, "max")


# --- reward models and preferences ------------------------------------------------------------------


def test_bradley_terry_by_hand_and_equal_to_trl():
    """r_c = [2, 0], r_r = [1, 0]: -logsigmoid(1) = 0.313262, -logsigmoid(0) = log 2.
    With margin [0, 1]: second row -logsigmoid(-1) = 1 + 0.313262 = 1.313262.
    TRL RewardTrainer: -logsigmoid(r_c - r_r - margin).mean()."""
    rc, rr, margin = t([2.0, 0.0]), t([1.0, 0.0]), t([0.0, 1.0])
    close(L.bradley_terry_loss(rc, rr), [NLS1, LN2])
    close(L.bradley_terry_loss(rc, rr, margin), [NLS1, 1 + NLS1])
    close(L.bradley_terry_loss(rc, rr, margin).mean(), -F.logsigmoid(rc - rr - margin).mean())


def test_davidson_ties_by_hand():
    """Row 1: d = 0, nu = 1 -> Z = e^0 + e^0 + 1 = 3, P(a) = P(tie) = 1/3 -> NLL log 3 = 1.098612 either way.
    Row 2: d = 2 ln 2 -> e^{d/2} = 2, e^{-d/2} = 0.5; nu = 0.5 -> Z = 3: P(a) = 2/3 -> log 1.5 = 0.405465,
    P(tie) = 0.5/3 = 1/6 -> log 6 = 1.791759, P(b) = 1/6."""
    a, b = t([0.0, 2 * LN2]), t([0.0, 0.0])
    close(L.preference_loss_with_ties(a[:1], b[:1], torch.tensor([False]), nu=1.0), [LN3])
    close(L.preference_loss_with_ties(a[:1], b[:1], torch.tensor([True]), nu=1.0), [LN3])
    close(L.preference_loss_with_ties(a[1:], b[1:], torch.tensor([False]), nu=0.5), [math.log(1.5)])
    close(L.tie_loss_davidson(a[1:], b[1:], torch.tensor([True]), nu=0.5), [math.log(6)])
    close(L.davidson_probs(a[1:], b[1:], nu=0.5), [[2 / 3, 1 / 6, 1 / 6]])


def test_davidson_nu_zero_is_bradley_terry_and_nu_learnable():
    """nu = 0: P(a > b) = e^{d/2} / (e^{d/2} + e^{-d/2}) = sigmoid(d)."""
    a, b = t([0.3, -1.2, 2.0]), t([0.1, 0.4, -0.5])
    close(L.preference_loss_with_ties(a, b, torch.zeros(3, dtype=torch.bool), nu=0.0), L.bradley_terry_loss(a, b))
    log_nu = torch.zeros((), dtype=torch.float64, requires_grad=True)
    L.preference_loss_with_ties(a, b, torch.tensor([True, False, True]), nu=log_nu.exp()).sum().backward()
    assert log_nu.grad is not None and torch.isfinite(log_nu.grad)


def test_plackett_luce_by_hand_with_padding():
    """Row 1: weights e^s = [1, 2, 3], ranking [2, 0, 1]: P = 3/6 * 1/3 * 1/1 = 1/6 -> log 6 = 1.791759.
    Row 2: e^s = [4, 1, e^99], ranking [0, 1, -1] (item 2 absent): P = 4/5 -> log 1.25 = 0.223144."""
    rewards = t([[0.0, LN2, LN3], [math.log(4), 0.0, 99.0]], grad=True)
    ranking = torch.tensor([[2, 0, 1], [0, 1, -1]])
    out = L.plackett_luce_loss(rewards, ranking)
    close(out, [math.log(6), math.log(1.25)])
    with_mask = L.plackett_luce_loss(rewards, ranking.clamp(min=0), mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    close(with_mask, out)
    out.sum().backward()
    assert torch.isfinite(rewards.grad).all() and rewards.grad[1, 2] == 0


def test_plackett_luce_k2_equals_bradley_terry():
    rewards = torch.randn(5, 2, dtype=torch.float64)
    close(L.plackett_luce_loss(rewards, torch.tensor([[0, 1]] * 5)), L.bradley_terry_loss(rewards[:, 0], rewards[:, 1]))


def test_expected_calibration_error_by_hand():
    """Bins of width 0.1. probs [0.85, 0.85, 0.15, 0.15], labels [1, 0, 0, 0]:
    bin (0.8, 0.9]: conf 0.85, acc 0.5 -> 2/4 * 0.35 = 0.175; bin (0.1, 0.2]: conf 0.15, acc 0 -> 2/4 * 0.15
    = 0.075; ECE = 0.25. Same bins with 3 bins of width 1/3: 0.85 and 0.15 still in separate bins -> 0.25."""
    probs, labels = t([0.85, 0.85, 0.15, 0.15]), torch.tensor([1, 0, 0, 0])
    close(L.expected_calibration_error(probs, labels), 0.25)
    close(L.expected_calibration_error(probs, labels, n_bins=3), 0.25)


def test_expected_calibration_error_zero_when_calibrated():
    """Bin at 0.25 with 1 of 4 positive, bin at 0.75 with 3 of 4 positive, p = 0 with 0 and 1 with 1."""
    probs = t([0.25] * 4 + [0.75] * 4 + [0.0, 1.0])
    labels = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0, 0, 1])
    close(L.expected_calibration_error(probs, labels), 0.0)


# --- DPO family ---------------------------------------------------------------------------------------


def dpo_inputs(grad=False):
    """pc = -1, pr = -3, rc = -2, rr = -2 -> h = (-1 - -3) - (-2 - -2) = 2."""
    return t([-1.0], grad=grad), t([-3.0], grad=grad), t([-2.0], grad=grad), t([-2.0], grad=grad)


@pytest.mark.parametrize(
    "name,kw,beta,expected",
    [
        # beta h = 0.5 * 2 = 1 -> -logsigmoid(1) = log(1 + e^-1) = 0.313262
        ("sigmoid", {}, 0.5, NLS1),
        # cDPO eps 0.1: 0.9 * 0.313262 + 0.1 * (-logsigmoid(-1) = 1.313262) = 0.313262 + 0.1 = 0.413262
        ("sigmoid", {"label_smoothing": 0.1}, 0.5, NLS1 + 0.1),
        # IPO: (h - 1/(2 beta))^2 = (2 - 1)^2 = 1; beta 0.25: (2 - 2)^2 = 0
        ("ipo", {}, 0.5, 1.0),
        ("ipo", {}, 0.25, 0.0),
        # hinge: relu(1 - 0.5 * 2) = 0; beta 0.25: relu(1 - 0.5) = 0.5
        ("hinge", {}, 0.5, 0.0),
        ("hinge", {}, 0.25, 0.5),
        # robust eps 0.1: (0.9 * 0.313262 - 0.1 * 1.313262) / 0.8 = (0.8 * 0.313262 - 0.1) / 0.8 = 0.313262 - 0.125
        ("robust", {"label_smoothing": 0.1}, 0.5, NLS1 - 0.125),
        ("robust", {}, 0.5, NLS1),
    ],
)
def test_dpo_losses_by_hand(name, kw, beta, expected):
    """Rewards: chosen beta (pc - rc) = beta * 1, rejected beta (pr - rr) = beta * -1."""
    losses, chosen_rewards, rejected_rewards = L.DPO_LOSSES[name](*dpo_inputs(), beta, **kw)
    close(losses, [expected])
    close(chosen_rewards, [beta])
    close(rejected_rewards, [-beta])


@pytest.mark.parametrize("name", sorted(L.DPO_LOSSES))
def test_dpo_preferring_chosen_lowers_loss(name):
    pc, pr, rc, rr = dpo_inputs()
    kw = {"label_smoothing": 0.1} if name == "robust" else {}
    good, _, _ = L.DPO_LOSSES[name](pc, pr, rc, rr, 0.1, **kw)
    bad, _, _ = L.DPO_LOSSES[name](pr, pc, rc, rr, 0.1, **kw)  # policy prefers the rejected answer
    assert good.item() < bad.item()


@pytest.mark.parametrize("name", sorted(L.DPO_LOSSES))
def test_dpo_rewards_detached_and_gradients_reach_policy_only(name):
    pc, pr, rc, rr = dpo_inputs(grad=True)
    losses, chosen_rewards, rejected_rewards = L.DPO_LOSSES[name](pc, pr, rc, rr, 0.1)
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # raise chosen, lower rejected
    assert rc.grad is None and rr.grad is None


def test_dpo_sigmoid_matches_trl_formula_on_random_batch():
    """TRL: h = (pc - pr) - (rc - rr); -(1 - eps) logsigmoid(beta h) - eps logsigmoid(-beta h)."""
    pc, pr, rc, rr = (torch.randn(8, dtype=torch.float64) * 5 for _ in range(4))
    h = (pc - pr) - (rc - rr)
    expected = -F.logsigmoid(0.2 * h) * 0.7 - F.logsigmoid(-0.2 * h) * 0.3
    close(L.dpo_sigmoid_loss(pc, pr, rc, rr, 0.2, label_smoothing=0.3)[0], expected, atol=1e-12)


def test_dpo_robust_rejects_bad_label_smoothing():
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        L.dpo_robust_loss(*dpo_inputs(), 0.1, label_smoothing=0.5)


def test_implicit_reward_by_hand():
    """0.1 * (-1 - -3) = 0.2."""
    close(L.implicit_reward(t([-1.0]), t([-3.0]), 0.1), [0.2])


# --- PPO and online RL ----------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    """logp = 0, ref = ln 2 (q/p = 2): k1 = -ln 2 = -0.693147; k2 = 0.5 ln^2 2 = 0.240227;
    k3 = (2 - 1) - ln 2 = 0.306853."""
    logp, ref = t([0.0]), t([LN2])
    close(L.KL_ESTIMATORS["k1"](logp, ref), [-LN2])
    close(L.kl_k2(logp, ref), [0.5 * LN2**2])
    close(L.kl_k3(logp, ref), [1 - LN2])


def test_kl_penalized_rewards_by_hand():
    """kl_coef 0.1, k1. Row 0: mask [1, 1, 0], kl = logp - ref = [-1 - -1.5, 0, (masked)] = [0.5, 0, -]
    -> [-0.05, 0, 0], score 2 on t=1 -> [-0.05, 2, 0]. Row 1: mask [1, 1, 1], logp == ref -> [0, 0, -1]."""
    logp = t([[-1.0, -1.0, -1.0], [-2.0, -3.0, -4.0]], grad=True)
    ref = t([[-1.5, -1.0, -5.0], [-2.0, -3.0, -4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = L.kl_penalized_rewards(t([2.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    close(out, [[-0.05, 2.0, 0.0], [0.0, 0.0, -1.0]])
    assert not out.requires_grad


@pytest.mark.parametrize("estimator", sorted(L.KL_ESTIMATORS))
def test_kl_penalty_exactly_zero_when_policy_is_reference(estimator):
    logp = -torch.rand(3, 6, dtype=torch.float64) * 5
    mask = torch.ones(3, 6, dtype=torch.bool)
    out = L.kl_penalized_rewards(torch.zeros(3, dtype=torch.float64), logp, logp.clone(), mask, 0.3, estimator)
    assert torch.equal(out, torch.zeros_like(out))


def test_kl_penalized_rewards_refuses_empty_rows_and_unknown_estimator():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="no response token"):
        L.kl_penalized_rewards(torch.zeros(2), x, x, torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.1)
    with pytest.raises(ValueError, match="k1"):
        L.kl_penalized_rewards(torch.zeros(2), x, x, torch.ones(2, 3), 0.1, estimator="k4")


def test_gae_by_hand():
    """gamma 1, lam 0.5; r = [1, 0, 2, (pad 7)], V = [0.5, 1.0, 1.5, (pad 9 -> 0)]:
    t2: delta = 2 + 0 - 1.5 = 0.5, A = 0.5
    t1: delta = 0 + 1.5 - 1.0 = 0.5, A = 0.5 + 0.5 * 0.5 = 0.75
    t0: delta = 1 + 1.0 - 0.5 = 1.5, A = 1.5 + 0.5 * 0.75 = 1.875
    returns = A + V = [2.375, 1.75, 2.0]; the pad token gets 0 and 0."""
    rewards, values = t([[1.0, 0.0, 2.0, 7.0]]), t([[0.5, 1.0, 1.5, 9.0]], grad=True)
    adv, ret = L.gae(rewards, values, torch.tensor([[1, 1, 1, 0]]), gamma=1.0, lam=0.5)
    close(adv, [[1.875, 0.75, 0.5, 0.0]])
    close(ret, [[2.375, 1.75, 2.0, 0.0]])
    assert not adv.requires_grad and not ret.requires_grad


def test_gae_discount_by_hand():
    """gamma 0.5, lam 1, r = [0, 4], V = [1, 2]: t1: delta = 4 - 2 = 2, A = 2; t0: delta = 0 + 0.5 * 2 - 1 = 0,
    A = 0 + 0.5 * 2 = 1; returns = [2, 4] = discounted sums [0 + 0.5 * 4, 4]."""
    adv, ret = L.gae(t([[0.0, 4.0]]), t([[1.0, 2.0]]), torch.ones(1, 2), gamma=0.5, lam=1.0)
    close(adv, [[1.0, 2.0]])
    close(ret, [[2.0, 4.0]])


def test_gae_gamma_1_lam_1_returns_are_suffix_sums():
    rewards, values = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    _, ret = L.gae(rewards, values, torch.ones(3, 5), gamma=1.0, lam=1.0)
    close(ret, rewards.flip(-1).cumsum(-1).flip(-1), atol=1e-12)


def test_ppo_policy_loss_by_hand():
    """eps 0.2. t0: r 1.5, A 1: max(-1.5, -1.2) = -1.2 (clipped). t1: r 0.5, A -1: max(0.5, 0.8) = 0.8 (clipped).
    t2: r 1, A 2: -2. t3: r 1.5, A -1: max(1.5, 1.2) = 1.5 (not clipped). t4 masked (r e^5, A 100).
    loss = (-1.2 + 0.8 - 2 + 1.5) / 4 = -0.225; clipfrac 2/4.
    approx_kl = mean((r - 1) - log r) = [0.5 - ln 1.5, -0.5 + ln 2, 0, 0.5 - ln 1.5] / 4
              = (0.094535 + 0.193147 + 0 + 0.094535) / 4 = 0.095554."""
    old = t([[-1.0] * 5])
    logp = (old + t([[math.log(1.5), math.log(0.5), 0.0, math.log(1.5), 5.0]])).detach().requires_grad_()
    adv, mask = t([[1.0, -1.0, 2.0, -1.0, 100.0]]), torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = L.ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    close(loss, -0.225)
    close(stats["clipfrac"], 0.5)
    kl = 2 * (0.5 - math.log(1.5)) + (-0.5 + LN2)
    close(stats["approx_kl"], kl / 4)
    loss.backward()
    # only t2 and t3 are unclipped: d/dlogp of -A r / 4 = -A r / 4 -> [0, 0, -0.5, 0.375, 0]
    close(logp.grad, [[0.0, 0.0, -0.5, 0.375, 0.0]])


def test_ppo_policy_loss_at_ratio_one():
    """r = 1 everywhere: loss = -mean(A) = -(1 - 3) / 2 = 1, clipfrac 0, approx_kl 0."""
    logp = t([[-0.7, -1.3]])
    loss, stats = L.ppo_policy_loss(logp, logp.clone(), t([[1.0, -3.0]]), torch.ones(1, 2))
    close(loss, 1.0)
    assert stats["clipfrac"].item() == 0 and stats["approx_kl"].item() == 0


def test_ppo_value_loss_by_hand():
    """eps 0.2. t0: V 1, old 0.5, R 0: (1-0)^2 = 1, clipped V 0.7 -> 0.49; max 1.
    t1: V 1, old 0.5, R 2: (1-2)^2 = 1, clipped 0.7 -> 1.69; max 1.69 (clipped). t2: V 0 = old, R 1: 1.
    t3 masked. loss = 0.5 * (1 + 1.69 + 1) / 3 = 0.615; vf_clipfrac 1/3."""
    values = t([[1.0, 1.0, 0.0, 50.0]], grad=True)
    old, ret = t([[0.5, 0.5, 0.0, 0.0]]), t([[0.0, 2.0, 1.0, 0.0]], grad=True)
    loss, stats = L.ppo_value_loss(values, old, ret, torch.tensor([[1, 1, 1, 0]]), clip_range=0.2)
    close(loss, 0.615)
    close(stats["vf_clipfrac"], 1 / 3)
    loss.backward()
    # d/dV of 0.5 (V - R)^2 / 3 = (V - R) / 3 on unclipped t0, t2: [1/3, 0, -1/3, 0]
    close(values.grad, [[1 / 3, 0.0, -1 / 3, 0.0]])
    assert ret.grad is None


def test_entropy_from_logits_by_hand():
    """[0, 0] -> ln 2; [0, ln 3] -> p = [1/4, 3/4], H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335."""
    close(L.entropy_from_logits(t([[[0.0, 0.0], [0.0, LN3]]])), [[LN2, 0.5623351446188083]])


def test_entropy_from_logits_matches_categorical():
    logits = 4 * torch.randn(2, 3, 9, dtype=torch.float64)
    close(L.entropy_from_logits(logits), torch.distributions.Categorical(logits=logits).entropy(), atol=1e-12)


def test_explained_variance_by_hand():
    """R = [1, 2, 3], V = [1, 2, 2] (t3 masked): R - V = [0, 0, 1], unbiased var = ((1/3)^2 * 2 + (2/3)^2) / 2
    = 1/3; var(R) = 1 -> 1 - 1/3 = 2/3."""
    ev = L.explained_variance(t([[1.0, 2.0, 2.0, 0.0]]), t([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]]))
    close(ev, 2 / 3)


def test_adaptive_kl_coef_by_hand():
    """coef 0.1, target 5, horizon 10000, n 256 (n/horizon = 0.0256):
    KL 6 -> err 0.2 -> 0.1 * 1.00512 = 0.100512; KL 5.5 -> err 0.1 -> 0.100256;
    KL 4 -> err -0.2 -> 0.099488; KL 100 -> err clipped to 0.2 -> 0.100512; KL 0 -> clipped -0.2; KL 5 -> 0.1."""
    f = lambda kl: L.adaptive_kl_coef(0.1, kl, 5.0, 10000, 256)  # noqa: E731
    close(f(6.0), 0.100512)
    close(f(5.5), 0.100256)
    close(f(4.0), 0.099488)
    close(f(100.0), 0.100512)
    close(f(0.0), 0.099488)
    close(f(5.0), 0.1)
    assert f(5.1) > 0.1 > f(4.9)


def test_rloo_advantages_by_hand():
    """k = 3. [1, 2, 3]: baselines (2+3)/2 = 2.5, (1+3)/2 = 2, (1+2)/2 = 1.5 -> [-1.5, 0, 1.5].
    [10, 10, 10] -> 0."""
    close(L.rloo_advantages(t([1.0, 2.0, 3.0, 10.0, 10.0, 10.0]), 3), [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="group_size"):
        L.rloo_advantages(t([1.0, 2.0, 3.0]), 2)


def test_grpo_advantages_by_hand():
    """k = 3, eps 1e-4. [1, 2, 3]: mean 2, unbiased std 1 -> [-1, 0, 1] / 1.0001 = [-0.999900, 0, 0.999900].
    [0, 0, 4]: mean 4/3, var ((4/3)^2 * 2 + (8/3)^2) / 2 = 16/3, std 4/sqrt 3 = 2.309401
    -> [-4/3, -4/3, 8/3] / 2.309501 = [-0.577325, -0.577325, 1.154651]. scale=False: [-1, 0, 1, -4/3, -4/3, 8/3]."""
    scores = t([1.0, 2.0, 3.0, 0.0, 0.0, 4.0])
    s = 4 / math.sqrt(3) + 1e-4
    close(L.grpo_advantages(scores, 3), [-1 / 1.0001, 0.0, 1 / 1.0001, -4 / 3 / s, -4 / 3 / s, 8 / 3 / s])
    close(L.grpo_advantages(scores, 3, scale=False), [-1.0, 0.0, 1.0, -4 / 3, -4 / 3, 8 / 3])


def test_best_of_n_kl_by_hand():
    """n = 1 -> 0; n = 4 -> ln 4 - 3/4 = 0.636294."""
    assert L.best_of_n_kl(1) == 0.0
    close(L.best_of_n_kl(4), 0.6362943611198906)
