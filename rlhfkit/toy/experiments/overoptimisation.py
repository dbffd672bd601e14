"""Does the over-optimisation monitor stop a run that over-optimises near its best, and stay quiet on healthy runs?

    python -m rlhfkit.toy.experiments.overoptimisation --seeds 0 1 2 3 4   # runs/overoptimisation/seed-S, summary.json
    python -m rlhfkit.toy.experiments.overoptimisation --seeds 0 --quick   # a smoke run
    python -m rlhfkit.toy.experiments.overoptimisation --seeds 0 1 2 3 4 --replay-settings "{degenerate_share: null}"
        # the same runs judged by other monitor thresholds (here: without the looping alarm)

Per seed, beside the seed's demo run with ``--monitor`` (``demo_dir``; its PPO, DPO and rejection sampling carry the
monitor, with a second reward model, an ensemble of 4, trained on the held-out labels):

- an over-optimising PPO run: the demo's SFT policy against a reward model trained on only the demo's first
  ``few_labels`` comparisons, KL coefficient 0, ``ppo_steps`` steps (5x the demo's), answers up to
  ``max_new_tokens`` (2x the demo's), with the demo's monitor settings (a check every 10 steps on 128 held-out
  prompts, the second reward model and its members' disagreement as signals), run to the end so that the whole
  gold curve is seen;
- the demo's best-of-16 with the monitor on, on the same 128 held-out prompts.

Where a run with ``--monitor-stop`` would stop, and which check it would keep, is read from the full run's check
history by the same ``OveroptimisationMonitor`` fed the checks up to the alarm: the stopped run is the same run up to
its stop (same seed, same batches), so this is its decision without running it twice (the stop itself, keeping the
best check's model, is tested in tests/test_monitor_hooks.py).

The gold utility judges afterwards, from each check's samples: peak gold is the highest check of the full run, gold
at stop the kept check's. Gold is compared as a gain over the starting policy, as Gao et al. measure it:
gain ratio = (gold at stop - gold at step 0) / (peak gold - gold at step 0); the target is >= 0.9. A false alarm is
an alarm on the demo's default PPO, DPO or best-of-16; its cost is the gold a ``--monitor-stop`` run would have lost
by keeping the check the monitor chose instead of running to the end (``alarm_cost``: negative is a loss).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.config.pipelines import DemoConfig, OveroptimisationConfig
from rlhfkit.evaluate.monitor import Check, MonitorSettings, OveroptimisationMonitor
from rlhfkit.evaluate.stats import mean_std
from rlhfkit.pipelines.base import Pipeline, pick_threads
from rlhfkit.toy.experiments.common import (
    check_gold,
    demo_folder,
    finished_figures,
    first_labels,
    monitored_demo,
    run_seeds,
    stage_settings,
)


def healthy_runs(demo_dir: Path, root: Path) -> dict[str, Path]:
    """The runs meant to stay quiet: the demo's default PPO and DPO, and the seed's best-of-16."""
    return {"ppo": demo_dir / "ppo", "dpo": demo_dir / "dpo", "best-of-16": root / "bon-16"}


def replay_stop(run: Path, replay: dict | None = None) -> tuple[int | None, int | None, list[str]]:
    """(alarm step, the check a monitor_stop run keeps, the alarm's reasons) from a monitored run's history, by the
    monitor's rule as it is now: its thresholds are today's defaults with the run's own ``monitor_settings`` and
    ``monitor_kl_budget`` over them (``monitor.json`` records every threshold as it was, defaults of the day
    included), and ``replay`` (the experiment's ``replay_settings``) over those; (None, None, []) if no alarm."""
    import yaml

    from rlhfkit.train.monitoring import monitor_settings

    config = yaml.safe_load((run / "config.yaml").read_text())
    monitor = OveroptimisationMonitor(
        monitor_settings({**(config.get("monitor_settings") or {}), **(replay or {})}, config.get("monitor_kl_budget"))
    )
    saved = json.loads((run / "monitor" / "monitor.json").read_text())
    for check in saved["history"]:
        status = monitor.update(Check(**check))
        if status.alarm:
            return status.alarm_step, status.best_step, sorted(status.alarm_reasons)
    return None, None, []


def stop_figures(curve: dict[int, float], run: Path, replay: dict | None = None) -> dict:
    """Where a ``--monitor-stop`` run would stop (``replay_stop``), the gold of the check it keeps, and the share of
    the run's peak gold gain that keeps: (gold at stop - gold at step 0) / (peak gold - gold at step 0)."""
    start, end, peak = curve[min(curve)], curve[max(curve)], max(curve.values())
    alarm_step, kept, reasons = replay_stop(run, replay)
    gold_at_stop = curve[kept] if kept is not None else end
    ratio = (gold_at_stop - start) / (peak - start) if peak > start else None
    return {
        "alarm_step": alarm_step,
        "alarm_reasons": reasons or None,
        "kept_step": kept,
        "gold_at_stop": gold_at_stop,
        "gain_ratio": ratio,
    }


def alarm_cost(run: Path, replay: dict | None = None) -> dict:
    """What an alarm on a run meant to be healthy would have cost a ``--monitor-stop`` run, in gold: the kept
    check's gold against the end's (positive: stopping kept a better model than running on). The peak tells whether
    the run's gold fell at all."""
    curve = check_gold(run)
    stop = stop_figures(curve, run, replay)
    end = curve[max(curve)]
    return {**stop, "final_gold": end, "peak_gold": max(curve.values()), "kept_minus_end": stop["gold_at_stop"] - end}


def most_looping(run: Path) -> float | None:
    """The largest share of looping samples at any check of a monitored run (None where the run did not record
    it: runs made before the monitor measured it)."""
    history = json.loads((run / "monitor" / "monitor.json").read_text())["history"]
    shares = [c["degenerate_share"] for c in history if c.get("degenerate_share") is not None]
    return max(shares) if shares else None


def judged(curve: dict[int, float], over: Path, healthy: dict[str, Path], replay: dict | None = None) -> dict:
    """What the monitor's rule decides, replayed from the runs' check histories (a finished seed's figures follow
    the rule as it is now): the over-optimising run's stop (``curve``: its gold by check), and the alarms on the
    runs meant to be healthy, with their cost and the most their samples looped."""
    alarmed = {name: replay_stop(path, replay)[0] is not None for name, path in healthy.items()}
    return {
        **stop_figures(curve, over, replay),
        "false_alarms": alarmed,
        "false_alarm_cost": {name: alarm_cost(path, replay) for name, path in healthy.items() if alarmed[name]},
        "healthy_most_looping": {name: most_looping(path) for name, path in healthy.items()},
    }


def run(cfg: OveroptimisationConfig) -> dict:
    from rlhfkit.config.stages import BestOfNConfig, PPOConfig, RewardConfig
    from rlhfkit.pipelines.toy import monitor_settings
    from rlhfkit.train.best_of_n import run as bon_run
    from rlhfkit.train.ppo import run as ppo_run
    from rlhfkit.train.reward import run as rm_run

    cfg = cfg.budgets()
    torch.set_num_threads(pick_threads(cfg.threads))
    cfg = cfg if cfg.output_dir else cfg.model_copy(update={"output_dir": f"runs/overoptimisation/seed-{cfg.seed}"})
    root = Path(cfg.output_dir)
    if finished := finished_figures(cfg):  # decided again: the figures follow the monitor's rule now
        curve = {int(step): gold for step, gold in finished["curve"].items()}  # JSON keys are strings
        demo_dir = demo_folder(cfg.demo_dir, cfg.seed, cfg.quick)
        return {**finished, **judged(curve, root / "ppo-over", healthy_runs(demo_dir, root), cfg.replay_settings)}
    demo_dir = monitored_demo(cfg.demo_dir, cfg.seed, cfg.quick)
    demo = DemoConfig(seed=cfg.seed, quick=cfg.quick).budgets()
    pipe = Pipeline(cfg, "overoptimisation")
    data = demo_dir / "data"
    few = first_labels(data, cfg.few_labels, root / "data" / "few_labels.jsonl")
    rm_few = pipe.stage(
        "rm-few",
        lambda: rm_run(
            RewardConfig(
                model=str(demo_dir / "sft"), data=str(few), eval_data=str(data / "comparisons_eval.jsonl"),
                max_steps=cfg.rm_steps, lr=1e-3, batch_size=32, **stage_settings(root, "rm-few", cfg.seed),
            )
        ),
    )  # fmt: skip
    watch = monitor_settings(demo, demo_dir / "rm-heldout", data)  # rewrites the demo's monitor prompts, unchanged
    over = pipe.stage(
        "ppo-over",
        lambda: ppo_run(
            PPOConfig(
                model=str(demo_dir / "sft"), reward=str(rm_few), data=str(data / "prompts.jsonl"),
                max_steps=cfg.ppo_steps, kl_coef=cfg.ppo_kl_coef, lr=cfg.ppo_lr, batch_size=32,
                max_new_tokens=cfg.max_new_tokens, **{**watch, "monitor_max_new_tokens": None},
                **stage_settings(root, "ppo-over", cfg.seed),
            )
        ),
    )  # fmt: skip
    bon = pipe.stage(
        "bon-16",
        lambda: bon_run(
            BestOfNConfig(
                model=str(demo_dir / "sft"), reward=str(demo_dir / "rm"), data=watch["monitor_data"],
                n_max=demo.bon_n, max_prompts=watch["monitor_prompts"], batch_size=16,
                max_new_tokens=demo.max_new_tokens, missing_eos_penalty=None, monitor=True,
                monitor_reward=watch["monitor_reward"], monitor_ensemble=watch["monitor_ensemble"],
                **stage_settings(root, "bon-16", cfg.seed + 11),
            )
        ),
    )  # fmt: skip

    curve = check_gold(over)
    start, end = curve[min(curve)], curve[max(curve)]
    peak_step = max(curve, key=curve.get)
    decided = judged(curve, over, healthy_runs(demo_dir, root), cfg.replay_settings)
    alarm_step, kept, gold_at_stop = decided["alarm_step"], decided["kept_step"], decided["gold_at_stop"]
    figures = {
        "start_gold": start,
        "peak_gold": curve[peak_step],
        "peak_step": peak_step,
        "final_gold": end,
        **decided,
        "curve": curve,
        "monitor_history": json.loads((over / "monitor" / "monitor.json").read_text())["history"],
        "seed": cfg.seed,
    }
    pipe.finish(figures, {"demo": demo_dir, "rm-few": rm_few, "ppo-over": over, "bon-16": bon})
    ratio = "-" if figures["gain_ratio"] is None else f"{figures['gain_ratio']:.0%}"
    pipe.log(
        f"gold {start:.3f} -> peak {curve[peak_step]:.3f} (step {peak_step}) -> {end:.3f} at the end; alarm at step "
        f"{alarm_step}, kept step {kept} with gold {gold_at_stop:.3f} ({ratio} of the peak gain); "
        f"false alarms {figures['false_alarms']}"
    )
    return figures


def looped(result: dict) -> str:
    """The most the demo's runs looped, per run: "ppo 0.8%, dpo 2.3%, best-of-16 0.0%" ("-" where not recorded)."""
    shares = result.get("healthy_most_looping") or {}
    return ", ".join(f"{k} {v:.1%}" for k, v in shares.items() if v is not None) or "-"


def summarise(results: list[dict], root: Path) -> dict:
    good = [r for r in results if r["kept_step"] is not None and (r["gain_ratio"] or 0) >= 0.9]
    false = {k: sum(r["false_alarms"][k] for r in results) for k in ("ppo", "dpo", "best-of-16")}

    def spread(key: str) -> str:
        values = [r[key] for r in results if r[key] is not None]
        return "-" if not values else "{:.3f} ± {:.3f}".format(*mean_std(values))

    print("seed | gold@0 | peak (step) | end | alarm | kept | gold@stop | gain ratio | false alarms | most looping")
    for r in results:
        fa = ", ".join(k for k, v in r["false_alarms"].items() if v) or "none"
        ratio = "-" if r["gain_ratio"] is None else f"{r['gain_ratio']:.0%}"
        print(
            f"{r['seed']} | {r['start_gold']:.3f} | {r['peak_gold']:.3f} ({r['peak_step']}) | {r['final_gold']:.3f} | "
            f"{r['alarm_step']} | {r['kept_step']} | {r['gold_at_stop']:.3f} | {ratio} | {fa} | {looped(r)}"
        )
    out = {k: spread(k) for k in ("peak_gold", "gold_at_stop", "final_gold", "gain_ratio", "alarm_step", "kept_step")}
    out |= {"seeds_stopped_at_90pct": len(good), "false_alarms": false, "seeds": len(results)}
    for r in results:
        for name, cost in (r.get("false_alarm_cost") or {}).items():
            print(
                f"seed {r['seed']} {name}: alarm at step {cost['alarm_step']}, kept step {cost['kept_step']} with gold "
                f"{cost['gold_at_stop']:.3f}; the run's peak {cost['peak_gold']:.3f}, its end {cost['final_gold']:.3f} "
                f"(stopping: {cost['kept_minus_end']:+.3f} gold)"
            )
    looping = [v for r in results for v in (r.get("healthy_most_looping") or {}).values() if v is not None]
    if looping:
        out["healthy_most_looping"] = max(looping)
        alarm = MonitorSettings().degenerate_share
        print(
            f"the demo's runs: at most {max(looping):.1%} of a check's samples loop (the alarm's default: over {alarm:.0%})"
        )
    print(
        f"mean ± std: peak {out['peak_gold']}, at stop {out['gold_at_stop']}, end {out['final_gold']}, gain ratio "
        f"{out['gain_ratio']}, alarm step {out['alarm_step']}; stopped with >= 90% of the peak gain in {len(good)} "
        f"of {len(results)} seeds; false alarms (seeds) {false}"
    )
    plot(results, root / "overoptimisation.png")
    return {**out, "per_seed": results}


def plot(results: list[dict], path: Path) -> None:
    """Per seed: gold, the training reward and the second reward model at each check against the step, the alarm
    and the kept check marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.0), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], results):
        steps = [int(s) for s in r["curve"]]
        ax.plot(steps, list(r["curve"].values()), "k-", label="gold")
        history = r["monitor_history"]
        ax.plot([h["step"] for h in history], [h["proxy_reward"] for h in history], "C0--", label="training RM")
        ax.plot([h["step"] for h in history], [h["second_rm_reward"] for h in history], "C1:", label="second RM")
        if r["alarm_step"] is not None:
            ax.axvline(r["alarm_step"], color="C3", alpha=0.6, label="alarm")
        if r["kept_step"] is not None:
            ax.axvline(r["kept_step"], color="C2", alpha=0.6, label="kept")
        ax.set_title(f"seed {r['seed']}", fontsize=9)
        ax.set_xlabel("PPO step", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    run_seeds(__doc__.splitlines()[0], OveroptimisationConfig, run, summarise, "runs/overoptimisation")
