"""The over-optimisation monitor's decisions on synthetic signal sequences, and its isolation from the gold utility.

Synthetic runs, one check per step t = 1..T:
- over-optimising: KL = 0.5 t (a near-zero KL coefficient lets it grow), d = sqrt(KL); the proxy rises as d; the
  second reward model (and the gold it stands in for) follows Gao et al.'s RL form d (1 - 0.5 log d), which peaks
  at d* = e, i.e. KL e^2 = 7.39, step 14.8, value e / 2 = 1.359, and is at 90% of that peak at d ~ 4.0 (step 32).
- healthy: everything rises and saturates as 1 - exp(-t / 8) (KL too, as a KL penalty makes it), disagreement flat.
Noise is Gaussian per check, seeded.

Run: PYTHONPATH=. python -m pytest tests/test_monitor.py -q
"""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from rlhfkit.evaluate.monitor import (
    Check,
    MonitorSettings,
    OveroptimisationMonitor,
    is_degenerate,
    noise_scale,
    trailing_median,
)

PEAK_STEP = 2 * math.e**2  # KL = 0.5 t = e^2


def gold_like(step: float) -> float:
    d = math.sqrt(0.5 * step)
    return d * (1 - 0.5 * math.log(d))


def over_optimising(seed: int, steps: int = 60, noise: float = 0.03) -> list[Check]:
    rng = np.random.default_rng(seed)
    return [
        Check(
            step=t,
            kl=0.5 * t + rng.normal(0, 0.1),
            proxy_reward=math.sqrt(0.5 * t) + rng.normal(0, noise),
            second_rm_reward=gold_like(t) + rng.normal(0, noise),
        )
        for t in range(1, steps + 1)
    ]


def healthy(seed: int, steps: int = 80, noise: float = 0.05) -> list[Check]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(1, steps + 1):
        f = 1 - math.exp(-t / 8)
        out.append(
            Check(
                step=t,
                kl=4 * f + rng.normal(0, 0.1),
                proxy_reward=1.5 * f + rng.normal(0, noise),
                second_rm_reward=f + rng.normal(0, noise),
                heldout_accuracy=0.7 + rng.normal(0, 0.01),
                ensemble_std=0.2 + rng.normal(0, 0.01),
                mean_length=50 * (1 + 0.3 * f) + rng.normal(0, 2),
                entropy=2.0 - 0.5 * f + rng.normal(0, 0.05),
            )
        )
    return out


def run(checks, settings=None):
    """Feed the checks until the alarm; returns the monitor and the last status."""
    monitor = OveroptimisationMonitor(settings)
    for check in checks:
        status = monitor.update(check)
        if status.alarm:
            break
    return monitor, status


# --- helpers ------------------------------------------------------------------------------------------------


def test_trailing_median_ignores_one_outlier():
    np.testing.assert_array_equal(trailing_median(np.array([1.0, 9.0, 2.0, 3.0]), 3), [1.0, 5.0, 2.0, 3.0])


def test_noise_scale_sees_the_noise_not_the_trend():
    """A straight line has zero second differences: noise 0 however steep. Added N(0, 0.1) noise comes back as
    ~0.1 (MAD of 1000 second differences: within ~10%)."""
    t = np.arange(1000, dtype=float)
    assert noise_scale(5 * t) == pytest.approx(0.0, abs=1e-9)
    assert noise_scale(5 * t + np.random.default_rng(0).normal(0, 0.1, 1000)) == pytest.approx(0.1, rel=0.1)
    assert noise_scale(np.arange(4.0)) == math.inf  # too few values to tell


# --- the three behaviours asked for ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_alarm_shortly_after_the_second_reward_model_turns(seed):
    """The proxy keeps rising, the second reward model peaks at step 14.8: no alarm before the peak, an alarm
    before the gold-like curve falls under 90% of its peak (step 32), and the best check kept is within 5% of it."""
    monitor, status = run(over_optimising(seed))
    assert status.alarm
    assert PEAK_STEP < status.alarm_step <= 32
    assert set(status.alarm_reasons) & {"second_rm_falls", "second_rm_peak_passed"}
    assert gold_like(status.best_step) >= 0.95 * gold_like(PEAK_STEP)
    assert status.second_rm_fit.peak_kl == pytest.approx(math.e**2, rel=0.3)


@pytest.mark.parametrize("seed", range(5))
def test_no_alarm_on_a_healthy_run(seed):
    """Both reward models rise and saturate, KL saturates, disagreement stays flat: 80 checks, no alarm."""
    _, status = run(healthy(seed))
    assert not status.alarm, status.alarm_reasons


def spoil(checks: list[Check], index: int) -> list[Check]:
    """One bad check: the second model's score, accuracy and entropy collapse, disagreement and length jump."""
    c = checks[index]
    bad = replace(
        c,
        second_rm_reward=c.second_rm_reward - 1.0,
        heldout_accuracy=0.3,
        ensemble_std=5 * c.ensemble_std,
        mean_length=4 * c.mean_length,
        entropy=0.1 * c.entropy,
    )
    return checks[:index] + [bad] + checks[index + 1 :]


def test_one_outlying_check_does_not_trip_it_thanks_to_patience():
    """A quiet healthy run (noise 0.01) with one bad check at step 41. Without smoothing (window 1) every reason
    holds at that check; patience 1 alarms there, patience 2 does not (the next check is normal again). The
    defaults (median of five, patience 2) stay quiet too."""
    checks = spoil(healthy(0, noise=0.01), 40)
    _, status = run(checks, MonitorSettings(window=1, patience=1))
    assert status.alarm and status.alarm_step == 41
    assert {"second_rm_falls", "heldout_accuracy_falls", "disagreement_grows", "length_drifts"} <= set(
        status.alarm_reasons
    )
    assert not run(checks, MonitorSettings(window=1, patience=2))[1].alarm
    assert not run(checks)[1].alarm


# --- each reason on its own --------------------------------------------------------------------------------------


def steady(steps: int = 12, **signals) -> list[Check]:
    """Flat signals with a little deterministic jitter (so the noise estimate is not zero)."""
    jitter = [0.01 * (-1) ** t for t in range(steps)]
    return [Check(step=t + 1, **{k: v + jitter[t] for k, v in signals.items()}) for t in range(steps)]


def test_disagreement_growing_past_its_factor():
    """Ensemble std 0.2 +- 0.01 (lowest 0.19), then 0.5 from check 7 on (2.6x > 1.5x): the reason holds from check 7
    and, with patience 2, raises the alarm at check 8."""
    checks = steady(ensemble_std=0.2)
    checks = checks[:6] + [replace(c, ensemble_std=0.5) for c in checks[6:]]
    _, status = run(checks)
    assert status.alarm_step == 8 and list(status.alarm_reasons) == ["disagreement_grows"]


def test_disagreement_is_measured_from_its_lowest_not_its_start():
    """Disagreement 0.30 at the start, down to 0.20 (the policy moves to answers the members agree on), then up to
    0.33: 1.1x its start but 1.65x its lowest (> 1.5x). Alarm at check 9 (the reason holds at 8 and 9); a rise
    that stays under 1.5x its lowest (0.29) raises none."""
    stds = [0.30, 0.25, 0.20, 0.20, 0.20, 0.20, 0.20, 0.33, 0.33, 0.33, 0.33]
    checks = [Check(step=t, ensemble_std=v) for t, v in enumerate(stds, start=1)]
    _, status = run(checks)
    assert status.alarm_step == 9 and list(status.alarm_reasons) == ["disagreement_grows"]
    assert not run([replace(c, ensemble_std=min(c.ensemble_std, 0.29)) for c in checks])[1].alarm


def test_members_that_agree_exactly_say_nothing_rather_than_raise_the_alarm():
    """An ensemble of copies of one model: std exactly 0 at every check, or 0 then 1e-9. The ratio to the lowest
    (0/0, x/0) was nan or inf and raised "disagreement at nanx its lowest"; agreeing exactly is no signal."""
    for stds in ([0.0] * 8, [0.0] + [1e-9] * 7):
        checks = [Check(step=t, ensemble_std=v) for t, v in enumerate(stds, start=1)]
        monitor, status = run(checks)
        assert not status.alarm and status.best_step is not None


def test_the_kept_check_is_one_where_the_ensemble_still_agrees():
    """The second model keeps rising (0.1 .. 1.0 at steps 1-6, then 1.1 .. 1.4), but from step 7 its members
    disagree 1.4x as much as at their lowest (0.28 against 0.19-0.21: over trust_factor 1.2, under the alarm's
    1.5x). Steps 7-10 are not trusted: of steps 1-6 the best centred median is step 6's (median of 0.7, 0.9, 1.0,
    1.1, 1.2 = 1.0). Trusting every check keeps step 10 (median of 1.2, 1.3, 1.4)."""
    values = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4]
    stds = [0.2 + 0.01 * (-1) ** t for t in range(6)] + [0.28] * 4
    checks = [Check(step=t + 1, second_rm_reward=v, ensemble_std=e) for t, (v, e) in enumerate(zip(values, stds))]
    monitor, status = run(checks)
    assert not status.alarm and status.best_step == 6
    assert run(checks, MonitorSettings(trust_factor=2.0))[1].best_step == 10


def test_kl_budget_length_and_entropy_drift():
    over_budget = [Check(step=t, kl=float(t)) for t in range(1, 8)]
    assert run(over_budget, MonitorSettings(kl_budget=4.0))[1].alarm_step == 6  # KL 5 and 6 > 4
    assert not run(over_budget)[1].alarm  # no budget by default

    long = steady(mean_length=50.0)
    long = long[:6] + [replace(c, mean_length=120.0) for c in long[6:]]
    assert list(run(long)[1].alarm_reasons) == ["length_drifts"]

    collapse = steady(entropy=2.0)
    collapse = collapse[:6] + [replace(c, entropy=0.8) for c in collapse[6:]]
    assert list(run(collapse, MonitorSettings(entropy_factor=0.5))[1].alarm_reasons) == ["entropy_collapses"]
    assert not run(collapse)[1].alarm  # measured and logged, but an alarm only when asked for


def test_a_response_loops_when_fewer_than_half_of_its_last_64_tokens_are_distinct():
    assert not is_degenerate([5, 6, 7, 8]) and not is_degenerate([])
    assert not is_degenerate([5, 5, 6, 6])  # 2 distinct of 4: half, not fewer
    assert is_degenerate([5, 5, 5, 6, 6])  # 2 of 5
    assert is_degenerate([9, 9, 9])  # "no no no"
    distinct = list(range(100, 200))
    loop = [7, 8] * 32  # 64 tokens, 2 distinct
    assert is_degenerate(distinct + loop)  # a long good start does not hide a loop at the end
    assert not is_degenerate(loop + distinct)  # ... nor does a loop it recovered from count: the last 64 are distinct
    assert not is_degenerate(list(range(40)) * 3)  # 120 tokens repeating 40 (a long answer): 40 distinct of the last 64


def test_looping_samples_raise_the_alarm_and_their_checks_are_not_kept():
    """The second model keeps rising (0.1 .. 1.0) while a growing share of the samples loops: 0 up to step 5, then
    0.04, 0.08, 0.15, 0.20, 0.25. Over 0.1 at steps 8 and 9: the alarm at step 9 (patience 2). Only checks with at
    most 0.05 looping are kept: of steps 1-6 the best centred median is step 6's (median of 0.4 .. 0.8 = 0.6);
    trusting every check would keep step 9 (median of 0.7, 0.8, 0.9 = 0.8: the checks after it are yet to come)."""
    shares = [0.0] * 5 + [0.04, 0.08, 0.15, 0.20, 0.25]
    checks = [
        Check(step=t, second_rm_reward=0.1 * t, degenerate_share=share) for t, share in enumerate(shares, start=1)
    ]
    _, status = run(checks)
    assert status.alarm_step == 9 and list(status.alarm_reasons) == ["degeneration"]
    assert status.alarm_reasons["degeneration"] == "20% of the samples loop (> 10%)"
    assert status.best_step == 6
    assert run(checks, MonitorSettings(degenerate_trust=1.0))[1].best_step == 9
    off = OveroptimisationMonitor(MonitorSettings(degenerate_share=None))  # switched off: no alarm, every check kept
    statuses = [off.update(c) for c in checks]
    assert not statuses[-1].alarm and statuses[-1].best_step == 10
    assert not run(checks[:8])[1].alarm  # one check over 0.1 is not enough


def settling(se: float | None, last: float = 0.9) -> list[Check]:
    """A DPO-like run whose learning rate decays to zero: the second reward model rises by 0.1 a check to 1.0, stays
    there three checks, then settles at ``last`` and, the policy no longer moving, repeats that very value twelve
    times; ``se`` is the standard error of each check's mean over its samples."""
    values = [0.1 * t for t in range(11)] + [1.0] * 3 + [last] * 12
    return [Check(step=10 * t, second_rm_reward=v, second_rm_reward_se=se) for t, v in enumerate(values)]


def test_a_fall_within_the_checks_sampling_error_is_no_alarm():
    """Once the checks repeat one value their second differences vanish, and so does the noise estimate: without
    the standard errors the trainer records, a fall of 0.1 from the best (10% of the rise, past min_fall's 5%) raises
    the alarm. With each check's mean carrying an error of 0.08 the fall is inside z = 3 of it: no alarm. A fall to
    0.5 is far outside it and still raises it."""
    assert "second_rm_falls" in run(settling(None))[1].alarm_reasons
    assert not run(settling(0.08))[1].alarm
    assert "second_rm_falls" in run(settling(0.08, last=0.5))[1].alarm_reasons


def test_heldout_accuracy_falling():
    """Accuracy 0.72 then 0.60 (12 points, above the 5-point floor and the noise)."""
    checks = steady(heldout_accuracy=0.72)
    checks = checks[:6] + [replace(c, heldout_accuracy=0.60) for c in checks[6:]]
    assert list(run(checks)[1].alarm_reasons) == ["heldout_accuracy_falls"]


def test_second_model_falling_with_the_proxy_is_not_over_optimisation():
    """If the proxy falls too, the update was bad rather than the proxy exploited: no 'second_rm_falls'."""
    checks = over_optimising(0)
    both_fall = [replace(c, proxy_reward=c.second_rm_reward + 1.0, kl=None) for c in checks]
    _, status = run(both_fall)
    assert "second_rm_falls" not in status.alarm_reasons


def test_proxy_past_its_fitted_peak_without_a_second_model():
    """No second reward model: the proxy itself follows the RL form (KL spent without gain) -> proxy_peak_passed,
    and the best check is the last one before any reason held."""
    rng = np.random.default_rng(0)
    checks = [Check(step=t, kl=0.5 * t, proxy_reward=gold_like(t) + rng.normal(0, 0.02)) for t in range(1, 61)]
    monitor, status = run(checks)
    assert list(status.alarm_reasons) == ["proxy_peak_passed"]
    assert PEAK_STEP < status.alarm_step <= 32
    assert status.best_step == status.alarm_step - 2  # patience 2: trouble began one check before the alarm


def test_the_kept_check_breaks_a_plateau_of_window_medians_by_its_own_value():
    """Second reward model 0.1, 0.4, 0.6, 1.0, 1.1, 1.05, 0.9, 0.9, 0.9 (steps 1..9), window 5: the centred medians
    of steps 4, 5 and 6 are all 1.0 (windows {0.4, 0.6, 1.0, 1.1, 1.05}, {0.6, 1.0, 1.1, 1.05, 0.9},
    {1.0, 1.1, 1.05, 0.9, 0.9}), the others lower (step 3: median of {0.1, 0.4, 0.6, 1.0, 1.1} = 0.6; step 7: of
    {1.1, 1.05, 0.9, 0.9, 0.9} = 0.9). Of the three, step 5 is itself highest (1.1): it is kept, not step 4."""
    values = [0.1, 0.4, 0.6, 1.0, 1.1, 1.05, 0.9, 0.9, 0.9]
    monitor = OveroptimisationMonitor(MonitorSettings(window=5))
    for t, v in enumerate(values, start=1):
        status = monitor.update(Check(step=t, second_rm_reward=v))
    assert status.best_step == 5


# --- bookkeeping --------------------------------------------------------------------------------------------------


def test_missing_signals_are_fine_and_steps_must_increase():
    monitor = OveroptimisationMonitor()
    for t in range(1, 10):
        status = monitor.update(Check(step=t))
    assert not status.alarm and status.best_step == 9 and status.proxy_fit is None
    with pytest.raises(ValueError, match="increasing step"):
        monitor.update(Check(step=9))
    with pytest.raises(ValueError, match="min_checks"):
        MonitorSettings(min_checks=3)


def test_alarm_latches_and_summary_is_plain_json():
    monitor, status = run(over_optimising(0))
    first = status.alarm_step
    later = monitor.update(Check(step=1000, kl=1.0, proxy_reward=0.0))
    assert later.alarm and later.alarm_step == first
    summary = json.loads(json.dumps(monitor.summary()))
    assert summary["alarm_step"] == first and summary["best_step"] == status.best_step
    assert summary["fits"]["second_rm_reward"]["peak_kl"] > 0 and len(summary["history"]) == len(monitor.history)


def test_the_gate_judges_this_rounds_check_not_an_earlier_rejected_ones():
    """The promotion gate replays the earlier rounds' checks, rejected ones too: one that looped latched the monitor's
    alarm and failed every later candidate with its old reason. The verdict is the current check's. And with no
    reference (no KL) an alarm's detail said "no alarm"."""
    from rlhfkit.evaluate.gate import GateSettings, overoptimisation_check

    looping = Check(step=1, kl=1.0, mean_length=10.0, degenerate_share=0.5)
    clean = Check(step=2, kl=1.0, mean_length=10.0, degenerate_share=0.0)
    verdict = overoptimisation_check([looping], clean, GateSettings())
    assert verdict["passed"] and verdict["detail"] == "KL to the reference 1 nats"
    verdict = overoptimisation_check([], replace(looping, kl=None), GateSettings())
    assert not verdict["passed"] and "loop" in verdict["detail"]
