"""Does the length-controlled win rate see through a verbose policy that a length-biased judge prefers?

    python -m rlhfkit.toy.experiments.length_control --seeds 0 1 2 3 4    # runs/length-control/seed-S, summary.json
    python -m rlhfkit.toy.experiments.length_control --seeds 0 --quick    # a smoke run

Per seed, beside the seed's demo (``demo_dir``): the demo's SFT policy is trained by PPO on a reward that only
counts words (``rlhfkit.toy.rewards:length``, the demo's KL coefficient, 2.5x its PPO steps): a deliberately
verbose policy. `rlhfkit eval` then judges it and the demo's DPO policy (its samples from the demo's evaluation)
against the demo's SFT baseline sample, on the demo's first ``eval_prompts`` held-out prompts and the demo's policy
seed, by a judge that likes length (``rlhfkit.toy.judge:length_biased``: the gold utility plus 0.15 per word) and
by the gold utility itself. The claim checked: the length-biased judge's raw win rate ranks the verbose policy at
or above DPO, while its length-controlled win rate ranks it below.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit.config.pipelines import DemoConfig, LengthControlConfig
from rlhfkit.evaluate.stats import mean_std
from rlhfkit.pipelines.base import Pipeline, pick_threads
from rlhfkit.toy.experiments.common import finished_figures, monitored_demo, run_seeds, stage_settings

BIASED = "rlhfkit.toy.judge:length_biased"
GOLD = "rlhfkit.toy.judge:gold"


def run(cfg: LengthControlConfig) -> dict:
    from rlhfkit.config.evaluation import EvalConfig
    from rlhfkit.config.stages import PPOConfig
    from rlhfkit.evaluate.schema import EvalReport
    from rlhfkit.evaluate.suite import run as eval_run
    from rlhfkit.train.ppo import run as ppo_run

    cfg = cfg.budgets()
    torch.set_num_threads(pick_threads(cfg.threads))
    cfg = cfg if cfg.output_dir else cfg.model_copy(update={"output_dir": f"runs/length-control/seed-{cfg.seed}"})
    if finished := finished_figures(cfg):
        return finished
    demo_dir = monitored_demo(cfg.demo_dir, cfg.seed, cfg.quick)
    demo = DemoConfig(seed=cfg.seed, quick=cfg.quick).budgets()
    pipe = Pipeline(cfg, "length_control")
    root, data = pipe.root, demo_dir / "data"
    verbose = pipe.stage(
        "verbose",
        lambda: ppo_run(
            PPOConfig(
                model=str(demo_dir / "sft"), reward="rlhfkit.toy.rewards:length", data=str(data / "prompts.jsonl"),
                max_steps=cfg.verbose_steps, kl_coef=demo.ppo_kl_coef, lr=1e-4, batch_size=32,
                max_new_tokens=demo.max_new_tokens, **stage_settings(root, "verbose", cfg.seed),
            )
        ),
    )  # fmt: skip
    judged = pipe.stage(
        "eval",
        lambda: eval_run(
            EvalConfig(
                models=[f"dpo={demo_dir / 'generate-policies'}", f"verbose={verbose}"],
                baseline=str(demo_dir / "generate-baseline"), data=str(data / "eval_prompts.jsonl"),
                max_prompts=cfg.eval_prompts, judges=[BIASED, GOLD], max_new_tokens=demo.max_new_tokens,
                output_dir=str(root / "eval"), seed=cfg.seed + 9, progress=False,  # the demo's policy seed
            )
        ),
    )  # fmt: skip
    report = EvalReport.read(judged / "eval.json")
    rows = {}
    for name in ("dpo", "verbose"):
        m = report.model(name)
        biased, gold = m.judges[BIASED], m.judges[GOLD]
        rows[name] = {
            "raw": biased.win_rate,
            "raw_lo": biased.win_lo,
            "raw_hi": biased.win_hi,
            "lc": biased.lc_win_rate,
            "lc_lo": biased.lc_lo,
            "lc_hi": biased.lc_hi,
            "gold": gold.reward_mean,
            "gold_win": gold.win_rate,
            "length": m.mean_length,
        }
    figures = {
        "rows": rows,
        "raw_prefers_verbose": rows["verbose"]["raw"] >= rows["dpo"]["raw"],
        "lc_prefers_dpo": rows["verbose"]["lc"] < rows["dpo"]["lc"],
        "seed": cfg.seed,
    }
    pipe.finish(figures, {"demo": demo_dir, "verbose": verbose, "eval": judged})
    d, v = rows["dpo"], rows["verbose"]
    pipe.log(
        f"length-biased judge: raw win rate dpo {d['raw']:.3f}, verbose {v['raw']:.3f}; LC dpo {d['lc']:.3f}, "
        f"verbose {v['lc']:.3f}; gold dpo {d['gold']:.3f}, verbose {v['gold']:.3f}; mean length dpo "
        f"{d['length']:.0f}, verbose {v['length']:.0f}"
    )
    return figures


def summarise(results: list[dict], root: Path) -> dict:
    out = {
        f"{name}_{key}": mean_std([r["rows"][name][key] for r in results])
        for name in ("dpo", "verbose")
        for key in ("raw", "lc", "gold", "length")
    }
    out["seeds_raw_prefers_verbose"] = sum(r["raw_prefers_verbose"] for r in results)
    out["seeds_lc_prefers_dpo"] = sum(r["lc_prefers_dpo"] for r in results)
    print("length-biased judge (gold + 0.15 per word), against the SFT baseline; mean ± std over seeds")
    print(f"{'policy':10s} {'raw win rate':16s} {'LC win rate':16s} {'gold':16s} {'mean length':16s}")
    for name in ("dpo", "verbose"):
        cells = ["{:.3f} ± {:.3f}".format(*out[f"{name}_{k}"]) for k in ("raw", "lc", "gold", "length")]
        print(f"{name:10s} " + " ".join(f"{c:16s}" for c in cells))
    print(
        f"raw win rate ranks verbose at or above DPO in {out['seeds_raw_prefers_verbose']} of {len(results)} seeds; "
        f"LC ranks DPO above verbose in {out['seeds_lc_prefers_dpo']} of {len(results)}"
    )
    return {**out, "per_seed": results}


if __name__ == "__main__":
    run_seeds(__doc__.splitlines()[0], LengthControlConfig, run, summarise, "runs/length-control")
