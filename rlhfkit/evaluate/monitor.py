"""The over-optimisation monitor's decision logic: signals in, alarm and best check out. No models, no I/O.

A policy optimised against a learned reward model first improves and then exploits the model's errors: the proxy
reward keeps rising while the true quality turns down (Gao et al. 2022, "Scaling Laws for Reward Model
Overoptimization"). The true quality (the toy world's gold utility, or people) is not available during training,
so the monitor watches signals that are, each optional at every check:

- ``second_rm_reward``: the policy samples' score under a second reward model trained on held-out labels; its
  errors differ from the training model's, so it turns down with the true quality while the proxy keeps rising
  (the gap between the two models widening is what ``second_rm_falls`` detects).
- ``heldout_accuracy``: the training reward model's accuracy on held-out human labels, ideally of the policy's recent
  samples (on a fixed set it only moves if the model is retrained; on the policy's samples it falls as the policy
  moves to where the model is wrong).
- ``ensemble_std``: disagreement (std) among reward-model members on the policy's samples, which grows as the
  policy leaves the data the members agree on (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
  Overoptimization"). It is measured against its lowest value so far, not its start: early optimisation moves the
  policy to answers the members agree on, so disagreement first falls, and a rise from there is what exploitation
  looks like. The same ratio says which checks the second model can be trusted at (``best_check``).
- ``kl`` to the initial policy (a budget), ``mean_length`` and ``entropy`` (drift from the start: verbosity is a
  usual shape of reward hacking, Singhal et al. 2023). Entropy is measured and logged, but its collapse raises the
  alarm only when ``entropy_factor`` is set: preference optimisation sharpens the policy by design, and in the toy
  world's runs entropy fell under half its start in DPO and PPO runs whose gold kept rising (docs/evaluation.md).
- ``proxy_reward`` against d = sqrt(KL), fitted with Gao et al.'s RL form d (a - b log d): past the fitted peak the
  policy is spending KL without gaining even proxy reward.
- ``degenerate_share``: the share of the samples that loop (``is_degenerate``). Reward models trained on a sensible
  policy's samples have never seen loops and may rate them well (in the toy world's over-optimised runs both reward
  models did, as gold fell); a check with more than ``degenerate_share`` of them raises the alarm, and only checks with
  at most ``degenerate_trust`` are kept.

Each reason must hold at ``patience`` consecutive checks before it raises the alarm, so one noisy check does not
trip it; signals are smoothed by a trailing median, and "falls" means more than ``z`` noise scales, the noise
estimated from the signal's own second differences, and never taken below the standard error of a check's mean
over its samples where the trainer measured it (``proxy_reward_se``, ``second_rm_reward_se``): once the policy
stops moving (a learning rate decayed to zero), checks on the same prompts repeat the same value, their second
differences vanish, and without that floor any fall from a best that was one lucky sample would count. The alarm
latches; the monitor keeps tracking the best check so a trainer can stop and keep that checkpoint.

    monitor = OveroptimisationMonitor(MonitorSettings(kl_budget=20.0))
    status = monitor.update(Check(step=100, kl=3.1, proxy_reward=0.8, second_rm_reward=0.4))
    if status.alarm: stop and keep checkpoint status.best_step

This module must not read the gold utility (a test checks its imports): it only judges what training can see.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rlhfkit.evaluate.overoptimisation import GaoFit, fit_gao


@dataclass(frozen=True)
class Check:
    """What the trainer measured at one check; any signal may be None (not measured this time)."""

    step: int
    kl: float | None = None  # KL(policy || initial policy), nats per response
    proxy_reward: float | None = None  # the training reward model's mean score of the policy's samples
    second_rm_reward: float | None = None  # a second reward model's (trained on held-out labels) mean score
    proxy_reward_se: float | None = None  # standard error of proxy_reward: the samples' std / sqrt(count)
    second_rm_reward_se: float | None = None  # the same for second_rm_reward
    heldout_accuracy: float | None = None  # training reward model's accuracy on held-out human labels
    ensemble_std: float | None = None  # mean over samples of the std across reward-model members
    mean_length: float | None = None  # mean response length (tokens or characters, consistently)
    entropy: float | None = None  # mean per-token entropy of the policy on its samples
    degenerate_share: float | None = None  # share of the samples that loop (``is_degenerate``)


DEGENERATE_WINDOW = 64  # tokens: the end of a response where a loop shows


def is_degenerate(token_ids: list[int]) -> bool:
    """A response that loops: fewer than half of its last ``DEGENERATE_WINDOW`` tokens are distinct (seq-rep-1 above
    0.5, Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training"). A model that starts repeating
    itself rarely stops, so the end of the response is where to look, and the window keeps long answers, which
    repeat common tokens by nature, from counting."""
    tail = token_ids[-DEGENERATE_WINDOW:]
    return 2 * len(set(tail)) < len(tail)


NOISE_MIN_VALUES = 5  # a signal's noise is estimated from its second differences: at least three of them


@dataclass(frozen=True)
class MonitorSettings:
    """Thresholds. The defaults lean towards staying quiet on healthy runs (a false alarm stops a good run); they
    were checked on the synthetic runs of tests/test_monitor.py and are to be calibrated on real training runs."""

    patience: int = 2  # consecutive checks a reason must hold before it raises the alarm
    window: int = 5  # trailing-median window: one or two outlying checks do not move the median of five
    min_checks: int = 5  # values of a signal needed before trends, fits and noise are trusted
    z: float = 3.0  # a fall counts when larger than z noise scales of the signal
    min_fall: float = 0.05  # ... and larger than this share of the signal's rise from its start to its best
    accuracy_fall: float = 0.05  # held-out accuracy: absolute fall from its best that counts (5 points)
    disagreement_factor: float = 1.5  # ensemble std above this multiple of its lowest value so far
    trust_factor: float = 1.2  # the kept check's ensemble std at most this multiple of its lowest up to that check
    kl_budget: float | None = None  # nats; None: no budget
    length_factor: float = 2.0  # mean length above this multiple, or below its inverse, of the start
    entropy_factor: float | None = None  # entropy below this multiple of its start value (e.g. 0.5); None: no alarm
    degenerate_share: float | None = 0.1  # share of looping samples (``is_degenerate``) above which a check alarms
    degenerate_trust: float = 0.05  # the kept check's share of looping samples at most this (unless the above is None)

    def __post_init__(self):
        if self.patience < 1 or self.window < 1:
            raise ValueError("patience and window must be at least 1")
        if self.min_checks < NOISE_MIN_VALUES:
            raise ValueError(f"min_checks must be at least {NOISE_MIN_VALUES}: the noise estimate needs that many")


@dataclass(frozen=True)
class MonitorStatus:
    step: int
    alarm: bool  # latched: True from the first check at which a reason had held for ``patience`` checks on
    alarm_step: int | None
    alarm_reasons: dict[str, str]  # the reasons that raised the alarm, by name
    reasons: dict[str, str]  # reasons holding at this check (not yet necessarily for ``patience`` checks)
    best_step: int  # the check to keep
    proxy_fit: GaoFit | None  # Gao RL curve of proxy reward against sqrt(KL)
    second_rm_fit: GaoFit | None  # the same for the second reward model


# --- small pure helpers ----------------------------------------------------------------------------------


def series(history: list[Check], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(indices into history, values) of the checks that measured ``name``."""
    pairs = [(i, getattr(c, name)) for i, c in enumerate(history) if getattr(c, name) is not None]
    return np.array([i for i, _ in pairs], dtype=int), np.array([v for _, v in pairs], dtype=float)


def trailing_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median of each value and up to window - 1 before it."""
    padded = np.concatenate([np.full(window - 1, np.nan), values])  # NaNs stand for the checks before the first
    return np.nanmedian(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1)


def noise_scale(values: np.ndarray) -> float:
    """Robust estimate of the check-to-check noise sigma of a signal with a smooth trend: second differences
    cancel a linear trend and have variance 6 sigma^2 for independent noise; their median absolute deviation
    (x 1.4826, the normal consistency factor) ignores outliers. Curvature in the trend only makes it larger."""
    if values.size < NOISE_MIN_VALUES:
        return float("inf")
    second = np.diff(values, 2)
    mad = np.median(np.abs(second - np.median(second)))
    return float(1.4826 * mad / np.sqrt(6.0))


def check_noise(history: list[Check], name: str) -> float:
    """The check-to-check noise sigma of a reward signal (``proxy_reward`` or ``second_rm_reward``): ``noise_scale``
    of its values, but never below the median standard error of a check's mean that the trainer recorded beside it
    (``<name>_se``; see the module docstring)."""
    sigma = noise_scale(series(history, name)[1])
    errors = series(history, f"{name}_se")[1]
    return max(sigma, float(np.median(errors))) if errors.size else sigma


def fall(
    values: np.ndarray, s: MonitorSettings, floor: float | None = None, noise: float | None = None
) -> tuple[float, float, int] | None:
    """(fall, tolerance, index of the best) when the smoothed signal's latest value lies more than the tolerance
    below its smoothed best; the tolerance is the larger of z noise scales (``noise``, default ``noise_scale`` of the
    values) and ``floor`` (default: min_fall of the rise from the start to the best)."""
    if values.size < s.min_checks:
        return None
    smooth = trailing_median(values, s.window)
    best = int(np.argmax(smooth))
    drop = float(smooth[best] - smooth[-1])
    rise = float(smooth[best] - smooth[0])
    sigma = noise_scale(values) if noise is None else noise
    tol = max(s.z * sigma, s.min_fall * rise if floor is None else floor, 1e-12)
    return (drop, tol, best) if drop > tol else None


def drift(values: np.ndarray, s: MonitorSettings) -> float | None:
    """Smoothed latest value over the mean of the first ``window`` values (None until past that window)."""
    if values.size <= s.window:
        return None
    start = float(values[: s.window].mean())
    return float(np.median(values[-s.window :]) / start) if start != 0 else None


def curve_fit(history: list[Check], name: str, s: MonitorSettings) -> GaoFit | None:
    """Gao et al.'s RL form of ``name`` against sqrt(KL) over the checks that measured both, offset fitted."""
    pairs = [(c.kl, getattr(c, name)) for c in history if c.kl is not None and getattr(c, name) is not None]
    if len(pairs) < s.min_checks:
        return None
    kl, values = np.array(pairs, dtype=float).T
    return fit_gao(kl, values, form="rl")


# --- reasons: each (history, settings) -> message or None ---------------------------------------------------


def second_rm_falls(history: list[Check], s: MonitorSettings) -> str | None:
    """The second reward model's score has fallen from its best while the proxy is at least where it was then."""
    idx, values = series(history, "second_rm_reward")
    found = fall(values, s, noise=check_noise(history, "second_rm_reward"))
    if found is None:
        return None
    drop, tol, best = found
    p_idx, proxy = series(history, "proxy_reward")
    if proxy.size:  # proxy smoothed now vs at the second model's best check
        smooth = trailing_median(proxy, s.window)
        then = smooth[np.searchsorted(p_idx, idx[best], side="right") - 1] if p_idx[0] <= idx[best] else smooth[0]
        if smooth[-1] < then:
            return None  # both falling: a bad update, not the proxy being exploited
    return f"second reward model fell {drop:.3g} (> {tol:.3g}) from its best at step {history[idx[best]].step}"


def heldout_accuracy_falls(history: list[Check], s: MonitorSettings) -> str | None:
    _, values = series(history, "heldout_accuracy")
    found = fall(values, s, floor=s.accuracy_fall)
    return None if found is None else f"held-out accuracy fell {found[0]:.3g} (> {found[1]:.3g}) from its best"


def disagreement_over_lowest(history: list[Check]) -> dict[int, float]:
    """Per check that measured ``ensemble_std`` (by index into history): its value over the lowest value up to and
    including it. Only the past enters, so a check's ratio never changes once it is made. While the lowest is 0 (the
    members agreed exactly: copies of one model) disagreement says nothing, and the ratio is 1."""
    idx, values = series(history, "ensemble_std")
    lowest = np.minimum.accumulate(values)
    ratios = np.where(lowest > 0, values / np.where(lowest > 0, lowest, 1.0), 1.0)
    return dict(zip(idx.tolist(), ratios.tolist())) if values.size else {}


def disagreement_grows(history: list[Check], s: MonitorSettings) -> str | None:
    """The latest ensemble disagreement above ``disagreement_factor`` times its lowest so far (once more than
    ``window`` checks have measured it; patience absorbs a single spike)."""
    ratios = disagreement_over_lowest(history)
    if len(ratios) <= s.window or (len(history) - 1) not in ratios:
        return None
    ratio = ratios[len(history) - 1]
    if ratio <= s.disagreement_factor:
        return None
    return f"ensemble disagreement at {ratio:.2f}x its lowest so far (> {s.disagreement_factor}x)"


def _peak_passed(history: list[Check], name: str, label: str, s: MonitorSettings) -> str | None:
    """The fitted curve of ``name`` peaked at a smaller KL than now and predicts a fall past the tolerance."""
    fit = curve_fit(history, name, s)
    kl_now = next((c.kl for c in reversed(history) if c.kl is not None), None)
    if fit is None or fit.peak_d is None or kl_now is None or np.sqrt(max(kl_now, 0.0)) <= fit.peak_d:
        return None
    d_now = float(np.sqrt(max(kl_now, 0.0)))
    predicted_fall = float(fit.peak_reward - fit.predict(d_now))
    rise = float(fit.peak_reward - fit.predict(0.0))
    # z standard errors of the fitted fall (the fit pools every check, so it sees a slow fall long before any
    # single check does), and at least min_fall of the curve's rise
    tol = max(s.z * fit.difference_se(fit.peak_d, d_now, check_noise(history, name)), s.min_fall * rise, 1e-12)
    if predicted_fall <= tol:
        return None
    return (
        f"{label} curve fitted on sqrt(KL) peaked at KL {fit.peak_kl:.3g}; now {kl_now:.3g}, {predicted_fall:.3g} below"
    )


def proxy_peak_passed(history: list[Check], s: MonitorSettings) -> str | None:
    return _peak_passed(history, "proxy_reward", "proxy reward", s)


def second_rm_peak_passed(history: list[Check], s: MonitorSettings) -> str | None:
    return _peak_passed(history, "second_rm_reward", "second reward model", s)


def kl_over_budget(history: list[Check], s: MonitorSettings) -> str | None:
    kl = history[-1].kl  # the latest estimate as it is: a budget is a hard line, patience absorbs its noise
    if s.kl_budget is None or kl is None or kl <= s.kl_budget:
        return None
    return f"KL {kl:.3g} over the budget {s.kl_budget:.3g}"


def length_drifts(history: list[Check], s: MonitorSettings) -> str | None:
    ratio = drift(series(history, "mean_length")[1], s)
    if ratio is None or 1 / s.length_factor <= ratio <= s.length_factor:
        return None
    return f"mean length at {ratio:.2f}x its start (outside 1/{s.length_factor}x..{s.length_factor}x)"


def entropy_collapses(history: list[Check], s: MonitorSettings) -> str | None:
    if s.entropy_factor is None:
        return None
    ratio = drift(series(history, "entropy")[1], s)
    if ratio is None or ratio >= s.entropy_factor:
        return None
    return f"entropy at {ratio:.2f}x its start (< {s.entropy_factor}x)"


def degeneration(history: list[Check], s: MonitorSettings) -> str | None:
    share = history[-1].degenerate_share
    if s.degenerate_share is None or share is None or share <= s.degenerate_share:
        return None
    return f"{share:.0%} of the samples loop (> {s.degenerate_share:.0%})"


REASONS = {
    "second_rm_falls": second_rm_falls,
    "second_rm_peak_passed": second_rm_peak_passed,
    "heldout_accuracy_falls": heldout_accuracy_falls,
    "disagreement_grows": disagreement_grows,
    "proxy_peak_passed": proxy_peak_passed,
    "kl_over_budget": kl_over_budget,
    "length_drifts": length_drifts,
    "entropy_collapses": entropy_collapses,
    "degeneration": degeneration,
}


def best_check(history: list[Check], clean: list[bool], s: MonitorSettings) -> int:
    """Index of the check to keep: the peak of the second reward model (median of a window centred on each check,
    so one lucky check is not picked) when one is measured, else the last check at which no reason held (the one
    before the trouble began). Neighbouring windows often share their median (the same middle value), so a tie
    goes to the check whose own value is highest, not to the earliest of the plateau.

    The second model is trusted only where its members agree: checks whose ensemble disagreement is over
    ``trust_factor`` times its lowest up to them are passed over. Past that point the policy is where the members
    (and so their mean, the second model) are guessing, and in the toy world's over-optimised runs the second
    model's score kept rising there for several checks after the true quality had turned (docs/evaluation.md). Checks
    where more than ``degenerate_trust`` of the samples loop are passed over too: the reward models rate loops well."""
    idx, values = series(history, "second_rm_reward")
    if values.size:
        half = s.window // 2
        centred = [np.median(values[max(0, i - half) : i + half + 1]) for i in range(values.size)]
        ratios = disagreement_over_lowest(history)
        trusted = [
            i
            for i in range(values.size)
            if ratios.get(int(idx[i]), 1.0) <= s.trust_factor
            and (s.degenerate_share is None or (history[idx[i]].degenerate_share or 0.0) <= s.degenerate_trust)
        ]
        best = max(trusted or range(values.size), key=lambda i: (centred[i], values[i]))
        return int(idx[best])
    return max((i for i, ok in enumerate(clean) if ok), default=0)


class OveroptimisationMonitor:
    """Feed it one ``Check`` per evaluation interval with ``update``; it keeps the history and says when to stop."""

    def __init__(self, settings: MonitorSettings | None = None):
        self.settings = settings or MonitorSettings()
        self.history: list[Check] = []
        self._clean: list[bool] = []  # per check: no reason held
        self._streaks: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.alarm_step: int | None = None
        self.alarm_reasons: dict[str, str] = {}

    def update(self, check: Check) -> MonitorStatus:
        if self.history and check.step <= self.history[-1].step:
            raise ValueError(f"checks must come in increasing step order: {check.step} after {self.history[-1].step}")
        self.history.append(check)
        s = self.settings
        reasons = {}
        for name, reason in REASONS.items():
            message = reason(self.history, s)
            self._streaks[name] = self._streaks[name] + 1 if message else 0
            if message:
                reasons[name] = message
        self._clean.append(not reasons)
        firing = {name: m for name, m in reasons.items() if self._streaks[name] >= s.patience}
        if firing and self.alarm_step is None:
            self.alarm_step, self.alarm_reasons = check.step, firing
        return MonitorStatus(
            step=check.step,
            alarm=self.alarm_step is not None,
            alarm_step=self.alarm_step,
            alarm_reasons=dict(self.alarm_reasons),
            reasons=reasons,
            best_step=self.best_step,
            proxy_fit=curve_fit(self.history, "proxy_reward", s),
            second_rm_fit=curve_fit(self.history, "second_rm_reward", s),
        )

    @property
    def best_step(self) -> int | None:
        """Step of the check to keep (``best_check``); None before the first check."""
        if not self.history:
            return None
        return self.history[best_check(self.history, self._clean, self.settings)].step

    def summary(self) -> dict:
        """Plain values (JSON-ready) for a report: settings, the alarm, the best check, the fitted curves and the
        history."""
        return {
            "settings": asdict(self.settings),
            "alarm": self.alarm_step is not None,
            "alarm_step": self.alarm_step,
            "alarm_reasons": dict(self.alarm_reasons),
            "best_step": self.best_step,
            "fits": self._fits(),
            "history": [asdict(c) for c in self.history],
        }

    def _fits(self) -> dict:
        out = {}
        for name in ("proxy_reward", "second_rm_reward"):
            fit = curve_fit(self.history, name, self.settings)
            if fit is not None:
                out[name] = {
                    **{k: getattr(fit, k) for k in ("form", "a", "b", "c", "n")},
                    "r2": None if np.isnan(fit.r2) else fit.r2,  # NaN is not JSON
                    "peak_kl": fit.peak_kl,
                    "peak_reward": fit.peak_reward,
                }
        return out
