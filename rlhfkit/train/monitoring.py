"""The over-optimisation monitor inside the trainers: what PPO, DPO, rejection sampling and best-of-N measure at each
check, and what they do with the answer (log it, write it to the run folder, stop and keep the best model).

    monitor = PolicyMonitor(cfg, run_dir, logger, prompts, training_reward=reward_fn)   # cfg has MonitorPart
    if monitor.due(step):
        samples = monitor.sample(model, tokenizer, cfg.sampling(), reference_logprobs)
        monitor.check(step, monitor.measure(samples), save=lambda path: save_model(model, tokenizer, path))
        if monitor.stop: break
    ...
    monitor.keep_best(run_dir.final)                    # the best check's model replaces final/ after a stop

The decision itself is ``rlhfkit.evaluate.monitor.OveroptimisationMonitor`` (pure, tested on synthetic signals);
this module feeds it signals that need no gold utility:

- ``proxy_reward``: the training reward's mean score of the policy's samples on held-out prompts (and its standard
  error over the samples, the floor of the monitor's noise estimate; the second reward model's too);
- ``second_rm_reward``: a second reward model's (``monitor_reward``, trained on held-out labels) mean score of the
  same samples; the gap to the training reward is logged as ``monitor/rm_gap``;
- ``ensemble_std``: the mean std across an ensemble's members (``monitor_ensemble``, or the training reward when it
  is an ensemble) on those samples (Coste et al. 2023);
- ``heldout_accuracy``: DPO's implicit reward's accuracy on its held-out labels (a frozen reward model's accuracy on
  fixed labels cannot move, so reward-driven stages watch the second reward model instead);
- ``kl``: Monte-Carlo KL(policy || start) per response, from the sampled tokens' log-probs (k1, as the demo
  reports it); best-of-N's is log N - (N - 1) / N;
- ``mean_length`` (tokens) and ``entropy`` (per token, of the sampling distribution);
- ``degenerate_share``: the share of the samples that loop (``rlhfkit.evaluate.monitor.is_degenerate``: fewer than
  half of their last 64 tokens distinct), the shape the toy world's over-optimised PPO runs took as their gold fell.

Every check samples the same prompts with the same random stream, so check-to-check noise comes from the policy
changing and not from the draw. The gold utility never enters (a test checks the imports, and ``refuse_gold``
refuses it as a monitor reward): it only judges the monitor, afterwards, from ``monitor/samples.jsonl``.

Written to ``<run>/monitor/``: ``monitor.json`` (settings, history, fits, alarm, best check), ``samples.jsonl``
(each check's prompts and responses), ``step-N/`` (the model at the kept checks: the best one and the last few,
which are the only ones that can still become the best).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import get_args, get_type_hints

import torch

from rlhfkit.config import SamplingPart
from rlhfkit.data.records import to_json
from rlhfkit.evaluate.monitor import Check, MonitorSettings, MonitorStatus, OveroptimisationMonitor, is_degenerate
from rlhfkit.losses import ensemble_spread, masked_sum
from rlhfkit.rewards import Reward, load_reward

GOLD_MODULES = ("rlhfkit.toy.judge", "rlhfkit.toy.gold")
CHECK_SEED = 1_234_577  # every check draws the same random stream (plus the run's seed)


def refuse_gold(spec: str | None, setting: str) -> None:
    """The toy world's gold utility may judge the monitor but never feed it."""
    if spec and any(part.strip().startswith(GOLD_MODULES) for part in spec.split(",")):
        raise ValueError(
            f"setting '{setting}': {spec} is the toy world's gold utility, which the monitor must not see; give a "
            "reward model trained on held-out labels"
        )


def monitor_settings(chosen: dict, kl_budget: float | None) -> MonitorSettings:
    """``MonitorSettings`` from a run's ``monitor_settings`` (``chosen``) and ``monitor_kl_budget`` over today's
    defaults; an unknown or bad threshold names the setting."""
    known = {f.name for f in fields(MonitorSettings)}
    unknown = sorted(set(chosen) - known)
    if unknown:
        raise ValueError(f"setting 'monitor_settings': unknown {unknown}; known: {sorted(known)}")
    values = dict(chosen)
    hints = get_type_hints(MonitorSettings)
    can_be_off = sorted(f.name for f in fields(MonitorSettings) if type(None) in get_args(hints[f.name]))
    nulls = sorted(name for name, value in values.items() if value is None and name not in can_be_off)
    if nulls:
        raise ValueError(f"setting 'monitor_settings': {nulls} cannot be null; only {can_be_off} can (switched off)")
    for name in ("patience", "window", "min_checks"):
        if name in values:
            values[name] = int(values[name])
    try:
        return MonitorSettings(**{"kl_budget": kl_budget, **values})
    except ValueError as e:
        raise ValueError(f"setting 'monitor_settings': {e}") from None


def check_sampling(cfg) -> SamplingPart:
    """How a check samples: the stage's own sampling settings (a stage without them, DPO, the shared defaults), with
    ``monitor_max_new_tokens`` as the budget when it is set."""
    sampling = cfg.sampling() if hasattr(cfg, "sampling") else SamplingPart()
    # a check samples a few prompts from the trainer's own model, which holds the current weights: a vLLM engine
    # of its own would cost a second copy on the GPU and a weight push for each check
    sampling = sampling.model_copy(update={"rollout_backend": "transformers"})
    if cfg.monitor_max_new_tokens:
        sampling = sampling.model_copy(update={"max_new_tokens": cfg.monitor_max_new_tokens})
    return sampling


def standard_error(scores: torch.Tensor | None) -> float | None:
    """The standard error of the mean of one check's scores, (N,): their std / sqrt(N); None for fewer than two."""
    if scores is None or scores.numel() < 2:
        return None
    return float(scores.float().std() / scores.numel() ** 0.5)


@dataclass
class CheckSamples:
    """One check's samples: prompts and responses, and what the sampler knew about them."""

    prompts: list
    texts: list[str]
    lengths: torch.Tensor  # (N,) response tokens
    kl: torch.Tensor | None = None  # (N,) KL(policy || start) per response
    entropy: float | None = None  # mean per-token entropy
    given_kl: float | None = None  # a known KL (best-of-N's analytic one) instead of a Monte-Carlo estimate
    degenerate: torch.Tensor | None = None  # (N,) bool: the response loops (``is_degenerate``)


class PolicyMonitor:
    def __init__(self, cfg, run_dir, logger, prompts: list, *, training_reward: Reward | None = None, device=None):
        refuse_gold(cfg.monitor_reward, "monitor_reward")
        refuse_gold(cfg.monitor_ensemble, "monitor_ensemble")
        if not prompts:
            raise ValueError(
                "the monitor needs held-out prompts: give monitor_data, eval_data, or an eval_fraction above 0"
            )
        self.cfg, self.logger, self.device = cfg, logger, device
        self.settings = monitor_settings(cfg.monitor_settings, cfg.monitor_kl_budget)
        self.prompts = prompts[: cfg.monitor_prompts]
        self.training_reward = training_reward
        batch = getattr(cfg, "reward_batch_size", 32)
        self.second = load_reward(cfg.monitor_reward, batch, device, "monitor_reward") if cfg.monitor_reward else None
        self.ensemble = (
            load_reward(cfg.monitor_ensemble, batch, device, "monitor_ensemble") if cfg.monitor_ensemble else None
        )
        self.folder = Path(run_dir.path) / "monitor"
        self.is_main = getattr(run_dir, "is_main", True)
        self.monitor = OveroptimisationMonitor(self.settings)
        self.status: MonitorStatus | None = None
        self.stopped_at: int | None = None
        self.switched_at: int | None = None  # step at which the alarm switched the reward (monitor_switch_to)

    # --- resuming ---------------------------------------------------------------------------------------------

    def resume(self, step: int) -> None:
        """Replay the checks an interrupted run made up to ``step`` (later ones are dropped with their models)."""
        path = self.folder / "monitor.json"
        if not path.exists():
            return
        history = [Check(**c) for c in json.loads(path.read_text()).get("history", []) if c["step"] <= step]
        for check in history:
            self.status = self.monitor.update(check)
        for folder in self.folder.glob("step-*"):
            if int(folder.name.split("-")[1]) > step:
                shutil.rmtree(folder, ignore_errors=True)
        samples = self.folder / "samples.jsonl"
        if samples.exists() and self.is_main:
            kept = [line for line in samples.read_text().splitlines() if json.loads(line)["step"] <= step]
            samples.write_text("".join(line + "\n" for line in kept))

    # --- measuring ----------------------------------------------------------------------------------------------

    def pending(self, step: int) -> bool:
        """No check has been made at ``step`` yet (a resumed run does not repeat one)."""
        return all(c.step != step for c in self.monitor.history)

    def due(self, step: int) -> bool:
        return step % self.cfg.monitor_every == 0 and self.pending(step)

    @torch.no_grad()
    def sample(
        self,
        model,
        tokenizer,
        sampling: SamplingPart,
        reference_logprobs: Callable | None = None,
        batch_size: int = 64,
        seed: int = 0,
        **sampler_options,
    ) -> CheckSamples:
        """One response per check prompt from ``model``, with the KL of each to the start when
        ``reference_logprobs(rollout) -> (B, T)`` is given; ``sampler_options`` as ``make_sampler`` takes them
        (``weights_owner``: the sharded module to gather the weights from). With several processes every one
        samples every check prompt with the same stream, so all measure the same check and run the same
        (under a sharding engine, collective) forwards."""
        from rlhfkit.rollout_forward import response_forward
        from rlhfkit.samplers import make_sampler

        sampler = make_sampler(model, tokenizer, sampling, return_states=True, **sampler_options)
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(CHECK_SEED + seed)
        texts, lengths, kls, degenerate, entropy_sum, entropy_count = [], [], [], [], 0.0, 0.0
        for s in range(0, len(self.prompts), batch_size):
            rollout = sampler.generate(self.prompts[s : s + batch_size], generator=generator)
            mask = rollout.response_mask
            texts += rollout.texts
            degenerate += [is_degenerate(tokens) for tokens in rollout.response_tokens()]
            lengths.append(rollout.lengths.float().cpu())
            if rollout.entropy is not None:
                entropy_sum += float(masked_sum(rollout.entropy, mask, dim=None))
                entropy_count += float(mask.sum())
            if reference_logprobs is not None:
                policy_lp = rollout.logprobs if rollout.hidden is not None else None
                if policy_lp is None:  # a sampler that ran other kernels: the policy's own log-probs again
                    policy_lp = response_forward(model, rollout, sampling.temperature)["logprobs"]
                kls.append(masked_sum(policy_lp - reference_logprobs(rollout), mask, dim=-1).float().cpu())
        return CheckSamples(
            prompts=list(self.prompts),
            texts=texts,
            lengths=torch.cat(lengths),
            kl=torch.cat(kls) if kls else None,
            entropy=entropy_sum / entropy_count if entropy_count else None,
            degenerate=torch.tensor(degenerate, dtype=torch.bool),
        )

    def measure(self, samples: CheckSamples, step: int, **extra) -> Check:
        """The signals of a check from its samples; ``extra`` adds signals the trainer measured itself."""
        prompts, texts = samples.prompts, samples.texts
        proxy_members = variances = None
        if self.training_reward is not None:
            proxy_members, variances = self.training_reward.distribution(prompts, texts)  # (E, N) each
        if self.cfg.monitor_switch_to and (
            proxy_members is None or (proxy_members.size(0) < 2 and not bool((variances > 0).any()))
        ):
            raise ValueError(
                f"setting 'monitor_switch_to': {self.cfg.monitor_switch_to} needs a training reward with a spread "
                "(an ensemble: a,b,c or `rm train --ensemble N`, or a mean-variance reward model)"
            )
        # what is optimised: the training reward by its transform
        proxy = None if proxy_members is None else self.training_reward.combine(proxy_members, variances)
        second = self.second(prompts, texts) if self.second is not None else None
        members = self.ensemble.members(prompts, texts) if self.ensemble is not None else proxy_members  # (E, N)
        spread = float(ensemble_spread(members).mean()) if members is not None and members.size(0) > 1 else None
        kl = samples.given_kl if samples.given_kl is not None else None
        if kl is None and samples.kl is not None:
            kl = float(samples.kl.mean())
        return Check(
            step=step,
            kl=kl,
            proxy_reward=None if proxy is None else float(proxy.mean()),
            second_rm_reward=None if second is None else float(second.mean()),
            proxy_reward_se=standard_error(proxy),
            second_rm_reward_se=standard_error(second),
            ensemble_std=spread,
            mean_length=float(samples.lengths.float().mean()),
            entropy=samples.entropy,
            degenerate_share=None if samples.degenerate is None else float(samples.degenerate.float().mean()),
            **extra,
        )

    # --- deciding -----------------------------------------------------------------------------------------------

    def check(
        self, check: Check, samples: CheckSamples | None = None, save: Callable[[Path], object] | None = None
    ) -> MonitorStatus:
        """Feed one check to the monitor: log it, write its samples, keep the model (``save(folder)``) while it may
        still be the best, and print the alarm the first time it is raised."""
        first_alarm = self.status is None or not self.status.alarm
        self.status = status = self.monitor.update(check)
        metrics = {f"monitor/{k}": v for k, v in asdict(check).items() if k != "step" and v is not None}
        if check.proxy_reward is not None and check.second_rm_reward is not None:
            metrics["monitor/rm_gap"] = check.proxy_reward - check.second_rm_reward
        metrics["monitor/alarm"] = float(status.alarm)
        if self.logger is not None:
            self.logger.log(check.step, metrics)
        if self.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            if samples is not None:
                with (self.folder / "samples.jsonl").open("a") as f:
                    for p, t in zip(samples.prompts, samples.texts):
                        f.write(json.dumps({"step": check.step, "prompt": to_json(p), "response": t}) + "\n")
        if save is not None:
            # on every process: a sharded model's full weights are gathered by all of them (``save`` writes on the
            # main process only, as ``common.save_final_model`` does)
            save(self.folder / f"step-{check.step}")
        if self.is_main:
            if save is not None:
                self._prune()
            self.write()
        if status.alarm and first_alarm:
            reasons = "; ".join(f"{k}: {v}" for k, v in status.alarm_reasons.items())
            print(f"monitor: over-optimisation alarm at step {status.alarm_step} ({reasons}); best check: step "
                  f"{status.best_step}" + (", stopping" if self.cfg.monitor_stop else ""), flush=True)  # fmt: skip
        if status.alarm and self.cfg.monitor_stop and not self.cfg.monitor_switch_to and self.stopped_at is None:
            self.stopped_at = check.step
        return status

    @property
    def stop(self) -> bool:
        """True once the alarm has been raised and the run was told to stop on it."""
        return self.stopped_at is not None

    def _prune(self) -> None:
        """Keep the best check's model and the last window // 2 + 1 ones: a check's centred median no longer changes
        once its window has filled, so only those can still become the best."""
        steps = [c.step for c in self.monitor.history]
        keep = set(steps[-(self.settings.window // 2 + 1) :]) | {self.monitor.best_step}
        for folder in self.folder.glob("step-*"):
            if int(folder.name.split("-")[1]) not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def write(self) -> None:
        summary = self.monitor.summary()
        summary["stopped_at"] = self.stopped_at
        (self.folder / "monitor.json").write_text(json.dumps(summary, indent=2))

    def keep_best(self, final: Path) -> int | None:
        """After a stop: the best check's saved model replaces ``final``; returns its step (None when nothing was
        replaced: no stop, or the best check's model was not saved)."""
        best = self.monitor.best_step
        source = self.folder / f"step-{best}"
        if not self.stop or best is None or not source.is_dir() or not self.is_main:
            return None
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(source, final)
        return best

    def figures(self) -> dict:
        """The monitor's part of the run card."""
        status = self.status
        return {
            "checks": len(self.monitor.history),
            "alarm": bool(status and status.alarm),
            "alarm_step": status.alarm_step if status else None,
            "alarm_reasons": dict(status.alarm_reasons) if status else {},
            "best_step": self.monitor.best_step,
            "stopped_at": self.stopped_at,
            "switched_at": self.switched_at,
        }
