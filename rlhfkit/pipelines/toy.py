"""The built-in demo: the whole RLHF pipeline on the toy world, offline, on a CPU, in minutes.

    rlhfkit demo                                  # SFT -> sample -> simulated feedback -> reward model ->
                                                  # best-of-N, rejection sampling, DPO, PPO -> evaluation
    rlhfkit demo --seed 1 --output-dir runs/demo-1
    rlhfkit demo --quick                          # tiny budgets: a smoke run in seconds
    rlhfkit demo --preset smollm2-harmless        # align the real SmolLM2-135M-Instruct (rlhfkit.pipelines.smollm2_harmless)

It prints a table in the manner of AlpacaFarm's (method, gold reward, win rate against SFT judged by the
hidden gold utility with a 95% interval, KL to SFT, proxy reward) and writes PNG plots and an HTML report
into the run folder. Training stages see only the simulated annotators' labels; only the evaluation
reads the gold utility.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from rlhfkit.config import SamplingPart
from rlhfkit.config.pipelines import DemoConfig
from rlhfkit.data.io import write_jsonl
from rlhfkit.evaluate import report
from rlhfkit.pipelines.base import Pipeline, pick_threads
from rlhfkit.pipelines.toy_eval import evaluate_demo
from rlhfkit.runs import RunFolder
from rlhfkit.toy import feedback
from rlhfkit.toy.annotators import annotator_pool, consensus_accuracy, pairwise_agreement
from rlhfkit.toy.evaluation import as_chat
from rlhfkit.toy.world import demonstrations, sample_prompt


def _stage_common(cfg: DemoConfig, root: Path, name: str) -> dict:
    return dict(output_dir=str(root / name), seed=cfg.seed, progress=True, report_to=["tensorboard", "jsonl"])


def run(cfg: DemoConfig) -> Path:
    from rlhfkit.rewards import load_reward
    from rlhfkit.train import dpo, ppo, rejection, reward, sft

    cfg = cfg.budgets()
    torch.set_num_threads(pick_threads(cfg.threads))
    pipe = Pipeline(cfg, "demo")
    root, data = pipe.root, pipe.root / "data"
    stage_runs: dict[str, Path] = {}

    pipe.log("1/7 SFT on demonstrations of mixed quality")
    write_jsonl(data / "demonstrations.jsonl", demonstrations(2000, seed=cfg.seed, quality=cfg.demo_quality))
    sft_dir = pipe.stage(
        "sft",
        lambda: sft.run(
            sft.SFTConfig(
                model=cfg.model,
                data=str(data / "demonstrations.jsonl"),
                max_steps=cfg.sft_steps,
                lr=cfg.sft_lr,
                batch_size=32,
                log_every=25,
                **_stage_common(cfg, root, "sft"),
            )
        ),
    )
    stage_runs["sft"] = sft_dir

    pipe.log("2/7 sampling SFT responses and 3/7 simulated feedback")
    labels = pipe.kept("feedback", lambda: simulated_feedback(pipe, cfg, sft_dir))
    agreement, ceiling = labels["annotator_agreement"], labels["rm_ceiling"]

    pipe.log("4/7 reward model")
    rm_dir = pipe.stage(
        "rm",
        lambda: reward.run(
            reward.RewardConfig(
                model=str(sft_dir),
                data=str(data / "comparisons.jsonl"),
                eval_data=str(data / "comparisons_eval.jsonl"),
                max_steps=cfg.rm_steps,
                lr=1e-3,
                batch_size=32,
                log_every=25,
                **_stage_common(cfg, root, "rm"),
            )
        ),
    )
    stage_runs["rm"] = rm_dir
    rm_accuracy = RunFolder(rm_dir).card().figures.get("eval_accuracy")
    proxy = load_reward(str(rm_dir))
    watch = {}
    if cfg.monitor:
        pipe.log("   the monitor's second reward model: an ensemble of 4 on the held-out labels")
        rm2_dir = pipe.stage(
            "rm-heldout", lambda: reward.run(reward.RewardConfig(**rm_heldout_settings(cfg, sft_dir, data, root)))
        )
        stage_runs["rm-heldout"] = rm2_dir
        watch = monitor_settings(cfg, rm2_dir, data)

    pipe.log("5/7 policies: " + ", ".join(cfg.methods))
    policies: dict[str, Path] = {}
    if "dpo" in cfg.methods:
        policies["dpo"] = pipe.stage(
            "dpo",
            lambda: dpo.run(
                dpo.DPOConfig(
                    model=str(sft_dir),
                    data=str(data / "comparisons.jsonl"),
                    eval_data=str(data / "comparisons_eval.jsonl"),
                    max_steps=cfg.dpo_steps,
                    beta=cfg.dpo_beta,
                    lr=5e-4,
                    batch_size=32,
                    log_every=10,
                    **_stage_common(cfg, root, "dpo"),
                    **watch,
                )
            ),
        )
    if "ppo" in cfg.methods:
        policies["ppo"] = pipe.stage(
            "ppo",
            lambda: ppo.run(
                ppo.PPOConfig(
                    model=str(sft_dir),
                    reward=str(rm_dir),
                    data=str(data / "prompts.jsonl"),
                    max_steps=cfg.ppo_steps,
                    kl_coef=cfg.ppo_kl_coef,
                    lr=1e-4,
                    batch_size=32,
                    max_new_tokens=cfg.max_new_tokens,
                    **_stage_common(cfg, root, "ppo"),
                    **watch,
                )
            ),
        )
    if "rejection" in cfg.methods:
        policies["rejection"] = pipe.stage(
            "rejection",
            lambda: rejection.run(
                rejection.RejectionConfig(
                    model=str(sft_dir),
                    reward=str(rm_dir),
                    data=str(data / "prompts.jsonl"),
                    k=cfg.rejection_k,
                    max_prompts=cfg.rejection_prompts,
                    max_new_tokens=cfg.max_new_tokens,
                    missing_eos_penalty=None,  # keep the reward model's score, as the demo's table was measured
                    lr=1e-3,
                    epochs=3,
                    **_stage_common(cfg, root, "rejection"),
                    **watch,
                )
            ),
        )
    stage_runs.update(policies)

    pipe.log(
        "6/7 evaluation on held-out prompts: rlhfkit generate, then rlhfkit eval (gold utility, hidden from training)"
    )
    rows, evaluation, bon_curve, samples = evaluate_demo(pipe, cfg, sft_dir, rm_dir, policies, proxy)
    stage_runs["eval"] = root / "eval"
    curves = {"best-of-n": bon_curve} if bon_curve else {}
    for row in rows:
        if row["method"] in policies:
            curves[row["method"]] = [(row["kl_to_sft"], row["gold"], row["proxy_reward"])]
    rm_accuracy = rows[0]["rm_heldout_acc"] if rows else rm_accuracy

    pipe.log("7/7 report")
    plots = [
        report.plot_reward_vs_kl(curves, root / "reward_vs_kl.png"),
        report.plot_training_curves(stage_runs, root / "training_curves.png"),
    ]
    wall = pipe.totals()["wall_s"]
    notes = [
        f"seed {cfg.seed}; {evaluation.prompts} held-out prompts; annotator noise {cfg.annotator_noise}; "
        f"annotator agreement {agreement:.3f} (two annotators); reward-model ceiling {ceiling:.3f} (held-out "
        f"labels the annotators' noise-free consensus agrees with); reward-model held-out accuracy {rm_accuracy}; "
        f"wall {wall:.0f} s; the full evaluation (leaderboard, capability, safety, reward-model report): eval/report.html"
    ]
    report.write_html(root / "report.html", "rlhfkit demo: the toy world", rows, plots, samples, notes)
    summary = {
        "rows": rows,
        "annotator_agreement": agreement,
        "rm_ceiling": ceiling,
        "rm_heldout_accuracy": rm_accuracy,
        "wall_seconds": wall,
        "seed": cfg.seed,
    }
    (root / "results.json").write_text(json.dumps(summary, indent=2))
    pipe.finish(summary, stage_runs)
    print_table(rows, agreement, ceiling, wall)
    return root


def simulated_feedback(pipe: Pipeline, cfg: DemoConfig, sft_dir: Path) -> dict:
    """Steps 2 and 3: SFT samples responses to the toy world's prompts, simulated annotators compare them. Writes
    the training and held-out comparisons, the best-of-4 test and the prompts into ``data/``; returns the
    annotators' agreement and the reward model's ceiling."""
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.rollout import TransformersSampler

    data, rng = pipe.root / "data", random.Random(cfg.seed)
    sft_model, tokenizer = load_causal_lm(str(sft_dir))
    pool = annotator_pool(cfg.annotator_noise, seed=cfg.seed)
    fresh_pool = annotator_pool(cfg.annotator_noise, seed=cfg.seed + 10_000)  # held-out labels come from other draws
    prompts = [sample_prompt(rng) for _ in range(cfg.feedback_prompts)]
    sampler = TransformersSampler(sft_model, tokenizer, SamplingPart(max_new_tokens=cfg.max_new_tokens))
    gen = torch.Generator().manual_seed(cfg.seed)
    responses = []
    for s in range(0, len(prompts), 64):
        chunk = prompts[s : s + 64]
        texts = sampler.generate([as_chat(p) for p in chunk], n=cfg.samples_per_prompt, generator=gen).texts
        responses += [texts[i * cfg.samples_per_prompt : (i + 1) * cfg.samples_per_prompt] for i in range(len(chunk))]
    n_train = int(0.9 * len(prompts))
    train_rows = feedback.comparisons(prompts[:n_train], responses[:n_train], pool, seed=cfg.seed)
    # Held-out labels: several fresh draws of pairs and annotators per prompt, so the reward model's accuracy
    # is measured to about +-2 points rather than +-4 (120 prompts give only ~130 decided labels per draw).
    eval_rows = [
        row
        for k in range(cfg.eval_label_draws)
        for row in feedback.comparisons(prompts[n_train:], responses[n_train:], fresh_pool, seed=cfg.seed + 1 + k)
    ]
    write_jsonl(data / "comparisons.jsonl", train_rows)
    write_jsonl(data / "comparisons_eval.jsonl", eval_rows)
    # The reward model's best-of-4 test (RewardBench 2's format), on the held-out prompts' samples.
    write_jsonl(data / "best_of_4.jsonl", feedback.best_of_k_rows(prompts[n_train:], responses[n_train:], fresh_pool))
    write_jsonl(data / "prompts.jsonl", [{"prompt": [{"role": "user", "content": p.text}]} for p in prompts[:n_train]])
    agreement_items = [(p, a, b) for p, group in zip(prompts, responses) for a, b in [tuple(group[:2])] if a != b]
    agreement = pairwise_agreement(pool, agreement_items, seed=cfg.seed)
    # The reward model's ceiling on exactly its held-out labels: how often the annotators' noise-free
    # consensus agrees with them.
    by_text = {p.text: p for p in prompts[n_train:]}
    ceiling = consensus_accuracy(
        fresh_pool,
        [(by_text[r["prompt"][0]["content"]], r["chosen"], r["rejected"]) for r in eval_rows if not r["tie"]],
    )
    pipe.log(
        f"   {len(train_rows)} training comparisons ({sum(r['tie'] for r in train_rows)} ties); "
        f"annotator agreement {agreement:.3f}; held-out labels the consensus agrees with {ceiling:.3f}"
    )
    return {"annotator_agreement": agreement, "rm_ceiling": ceiling}


def rm_heldout_settings(cfg: DemoConfig, sft_dir: Path, data: Path, root: Path) -> dict:
    """The second reward model the monitor watches: trained like the first, but on the held-out labels, as an
    ensemble of 4 on bootstrap resamples (its members' disagreement is a signal too)."""
    return dict(
        model=str(sft_dir),
        data=str(data / "comparisons_eval.jsonl"),
        max_steps=cfg.rm_steps,
        lr=1e-3,
        batch_size=32,
        log_every=25,
        ensemble=4,
        bootstrap=True,
        **_stage_common(cfg, root, "rm-heldout"),
    )


def monitor_settings(cfg: DemoConfig, rm2_dir: Path, data: Path) -> dict:
    """The monitor's settings for the demo's policy stages: checks every 10 steps on 128 held-out prompts (written
    here, from the evaluation's seed), with the second reward model and its members' disagreement as signals."""
    from rlhfkit.toy.evaluation import eval_prompts

    path = data / "monitor_prompts.jsonl"
    write_jsonl(path, [{"prompt": [m.model_dump() for m in as_chat(p)]} for p in eval_prompts(128)])
    return dict(
        monitor=True,
        monitor_every=10,
        monitor_prompts=128,
        monitor_data=str(path),
        monitor_reward=str(rm2_dir),
        monitor_ensemble=str(rm2_dir),
        monitor_max_new_tokens=cfg.max_new_tokens,
    )


def print_table(rows: list[dict], agreement: float, ceiling: float, wall: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rlhfkit demo (gold = hidden utility; win rate vs SFT with 95% interval)")
    for col in ("method", "gold", "win vs SFT [95% CI]", "KL to SFT", "proxy (RM)", "RM acc"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(
            r["method"],
            f"{r['gold']:.3f}",
            f"{r['win_rate']:.1%} [{r['win_lo']:.0%}-{r['win_hi']:.0%}]",
            f"{r['kl_to_sft']:.2f}",
            f"{r['proxy_reward']:.2f}",
            f"{r['rm_heldout_acc']:.3f}" if r["rm_heldout_acc"] is not None else "-",
        )
    Console().print(table)
    print(
        f"annotator agreement {agreement:.3f} (two annotators); reward-model ceiling {ceiling:.3f} (held-out labels "
        f"the annotators' noise-free consensus agrees with); wall time {wall:.0f} s"
    )
