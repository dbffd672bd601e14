"""Does an uncertainty-penalised ensemble reward make best-of-64 choose better answers than the plain mean?

    python -m rlhfkit.toy.experiments.mitigation --seeds 0 1 2 3 4        # runs/mitigation/seed-S, summary.json
    python -m rlhfkit.toy.experiments.mitigation --seeds 0 --quick        # a smoke run

Per seed, beside the seed's demo (``demo_dir``): a reward-model ensemble of ``members`` (the demo reward model's
settings, each member on its own bootstrap resample of the demo's training labels, or of only the first ``labels``
of them; Coste et al. 2023 found 4-5 members enough); `rlhfkit bon` with it, N = ``n``, on the first
``eval_prompts`` of the demo's held-out prompts, every sample written with its score. From those same samples,
best-of-N's choice under each reward transform (``mean``, ``mean_minus_std:1``, ``worst``: what
`rlhfkit bon --reward-transform X` chooses from them) is judged by the gold utility, as the expectation over random
N-subsets for N = 1 .. n (smooth, as the bon stage's own curve).
The claim checked: at N = 64 the penalised choices have higher gold than the plain mean's.

    python -m rlhfkit.toy.experiments.mitigation --seeds 0 1 2 3 4 --labels 200 --output-dir runs/mitigation-200

is the same on a reward model that best-of-64 over-optimises: one trained on as few labels as the
over-optimisation experiment's proxy. A penalty can only win back what over-optimisation lost; on all the demo's
labels the plain mean's gold has barely turned by N = 64 (docs/evaluation.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.config.pipelines import DemoConfig, MitigationConfig
from rlhfkit.evaluate.stats import mean_std
from rlhfkit.pipelines.base import Pipeline, pick_threads
from rlhfkit.toy.experiments.common import (
    finished_figures,
    first_labels,
    monitored_demo,
    run_seeds,
    stage_settings,
)


def run(cfg: MitigationConfig) -> dict:
    from rlhfkit.config.stages import BestOfNConfig, RewardConfig
    from rlhfkit.losses import best_of_n_kl
    from rlhfkit.rewards import load_reward
    from rlhfkit.toy.judge import gold
    from rlhfkit.train.best_of_n import expected_best_of_n
    from rlhfkit.train.best_of_n import run as bon_run
    from rlhfkit.train.reward import run as rm_run

    cfg = cfg.budgets()
    torch.set_num_threads(pick_threads(cfg.threads))
    cfg = cfg if cfg.output_dir else cfg.model_copy(update={"output_dir": f"runs/mitigation/seed-{cfg.seed}"})
    if finished := finished_figures(cfg):
        return finished
    demo_dir = monitored_demo(cfg.demo_dir, cfg.seed, cfg.quick)
    demo = DemoConfig(seed=cfg.seed, quick=cfg.quick).budgets()
    pipe = Pipeline(cfg, "mitigation")
    root, data = pipe.root, demo_dir / "data"
    labels = data / "comparisons.jsonl"
    if cfg.labels is not None:
        labels = first_labels(data, cfg.labels, root / "data" / f"first_{cfg.labels}_labels.jsonl")
    ensemble = pipe.stage(
        "rm-ensemble",
        lambda: rm_run(
            RewardConfig(
                model=str(demo_dir / "sft"), data=str(labels),
                eval_data=str(data / "comparisons_eval.jsonl"), max_steps=demo.rm_steps, lr=1e-3, batch_size=32,
                ensemble=cfg.members, bootstrap=True, **stage_settings(root, "rm-ensemble", cfg.seed),
            )
        ),
    )  # fmt: skip
    # The monitor is on only to write every sample (monitor/samples.jsonl) with its score; it decides nothing here.
    bon = pipe.stage(
        f"bon-{cfg.n}",
        lambda: bon_run(
            BestOfNConfig(
                model=str(demo_dir / "sft"), reward=str(ensemble), data=str(data / "eval_prompts.jsonl"),
                n_max=cfg.n, max_prompts=cfg.eval_prompts, batch_size=16, max_new_tokens=demo.max_new_tokens,
                missing_eos_penalty=None, monitor=True, **stage_settings(root, f"bon-{cfg.n}", cfg.seed + 11),
            )
        ),
    )  # fmt: skip
    with pipe.step("judging the choices"):
        rows = [json.loads(line) for line in (bon / "monitor" / "samples.jsonl").read_text().splitlines()]
        prompts, texts = [r["prompt"] for r in rows], [r["response"] for r in rows]
        P = len(rows) // cfg.n
        reward = load_reward(str(ensemble))
        means, variances = reward.distribution(prompts, texts)  # (E, P * n) each
        golds = torch.tensor(gold(prompts, texts)).view(P, cfg.n)
        curves = {}
        for transform in cfg.transforms:
            reward.transform = transform
            scores = reward.combine(means, variances).view(P, cfg.n)  # what `bon --reward-transform` chooses by
            curves[transform] = [
                {"n": k, "kl": best_of_n_kl(k), "gold": float(expected_best_of_n(scores, k, golds).mean())}
                for k in range(1, cfg.n + 1)
            ]
    figures = {
        "n": cfg.n,
        "gold": {t: c[-1]["gold"] for t, c in curves.items()},
        "peak_n": {t: max(c, key=lambda x: x["gold"])["n"] for t, c in curves.items()},
        "curves": curves,
        "seed": cfg.seed,
    }
    pipe.finish(figures, {"demo": demo_dir, "rm-ensemble": ensemble, f"bon-{cfg.n}": bon})
    pipe.log(f"gold of best-of-{cfg.n}: " + ", ".join(f"{t} {g:.3f}" for t, g in figures["gold"].items()))
    return figures


def summarise(results: list[dict], root: Path) -> dict:
    transforms, n = list(results[0]["gold"]), results[0]["n"]
    out = {t: mean_std([r["gold"][t] for r in results]) for t in transforms}
    above = {t: sum(r["gold"][t] > r["gold"]["mean"] for r in results) for t in transforms if t != "mean"}
    print(f"gold of best-of-{n}'s choice (expected over random subsets), mean ± std over {len(results)} seeds")
    for t in transforms:
        extra = "" if t == "mean" else f"  (above the plain mean in {above[t]} of {len(results)} seeds)"
        print(f"{t:18s} {out[t][0]:.3f} ± {out[t][1]:.3f}{extra}")
    plot(results, root / "mitigation.png")
    return {"gold": out, "seeds_above_mean": above, "per_seed": [{k: r[k] for k in ("seed", "gold")} for r in results]}


def plot(results: list[dict], path: Path) -> None:
    """Gold of the choice against KL(best-of-N || policy), per transform, averaged over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for t in results[0]["curves"]:
        curves = [r["curves"][t] for r in results]
        kl = [c["kl"] for c in curves[0]]
        ax.plot(kl, [sum(c[i]["gold"] for c in curves) / len(curves) for i in range(len(kl))], label=t)
    ax.set_xlabel("KL(best-of-N || policy) = log N - (N-1)/N, nats")
    ax.set_ylabel("gold utility of the choice")
    ax.set_title(f"best-of-N by a reward-model ensemble, {len(results)} seeds", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run_seeds(__doc__.splitlines()[0], MitigationConfig, run, summarise, "runs/mitigation")
