"""The built-in demo: the whole RLHF pipeline on the toy world, offline, on a CPU, in minutes.

    rlhfkit demo                                  # SFT -> sample -> simulated feedback -> reward model ->
                                                  # best-of-N, rejection sampling, DPO, PPO -> evaluation
    rlhfkit demo --seed 1 --output-dir runs/demo-1
    rlhfkit demo --quick                          # tiny budgets: a smoke run in seconds
    rlhfkit demo --preset smollm2-harmless        # align the real SmolLM2-135M-Instruct (see docs)

It prints a table in the manner of AlpacaFarm's (method, gold reward, win rate against SFT judged by the
hidden gold utility with a 95% interval, KL to SFT, proxy reward) and writes PNG plots and an HTML report
into the run folder. Training stages see only the simulated annotators' labels; only the evaluation
reads the gold utility.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from rlhfkit.config import StageConfig
from rlhfkit.data.io import write_jsonl
from rlhfkit.evaluate import report
from rlhfkit.evaluate.toy import PolicySamples, as_chat, compare, eval_prompts, sample_policy
from rlhfkit.losses import best_of_n_kl
from rlhfkit.runs import RunFolder, refuse_other_settings
from rlhfkit.toy import feedback
from rlhfkit.toy.annotators import annotator_pool, consensus_accuracy, pairwise_agreement
from rlhfkit.toy.gold import utility
from rlhfkit.toy.world import demonstrations, sample_prompt


class DemoConfig(StageConfig):
    """Settings of `rlhfkit demo` (the budgets are tuned for a 2-core CPU: about 1.5 minutes)."""

    preset: Literal["toy", "smollm2-harmless"] = Field(
        "toy", description="toy: the built-in world; smollm2-harmless: the real model"
    )
    output_dir: str | None = Field(None, description="run folder; default runs/demo-<time>")
    seed: int = 0
    quick: bool = Field(False, description="tiny budgets everywhere (a smoke run, not a result)")
    model: str = Field("tiny", description="the model SFT starts from")
    demo_quality: float = Field(
        0.5, ge=0, le=1, description="share of good demonstrations (the rest are plausible but poor)"
    )
    sft_steps: int = Field(600, gt=0)
    sft_lr: float = Field(3e-3, gt=0)
    feedback_prompts: int = Field(1200, gt=0, description="prompts whose SFT samples the annotators label")
    samples_per_prompt: int = Field(4, ge=2, description="SFT samples per prompt shown to annotators")
    eval_label_draws: int = Field(
        5,
        gt=0,
        description="fresh labels drawn per held-out prompt (pairs and annotators), for the reward model's held-out accuracy",
    )
    annotator_noise: float = Field(0.25, ge=0, lt=0.5, description="label flip rate (AlpacaFarm: 0.25)")
    rm_steps: int = Field(300, gt=0)
    bon_n: int = Field(16, ge=1, description="largest N of best-of-N")
    rejection_k: int = Field(8, ge=2, description="samples per prompt in rejection sampling")
    rejection_prompts: int = Field(400, gt=0)
    dpo_steps: int = Field(200, gt=0)
    dpo_beta: float = Field(0.1, gt=0)
    ppo_steps: int = Field(60, gt=0)
    ppo_kl_coef: float = Field(0.02, ge=0)
    eval_prompts: int = Field(500, gt=0, description="held-out prompts for the evaluation")
    max_new_tokens: int = Field(24, gt=0)
    methods: list[Literal["bon", "rejection", "dpo", "ppo"]] = ["bon", "rejection", "dpo", "ppo"]
    threads: int = Field(
        1,
        ge=0,
        description="torch threads (0: torch's default); tiny models run fastest on one, "
        "and several threads wait on each other when the cores are busy",
    )

    def budgets(self) -> DemoConfig:
        if not self.quick:
            return self
        return self.model_copy(
            update=dict(
                sft_steps=20,
                feedback_prompts=48,
                rm_steps=5,
                bon_n=4,
                rejection_k=2,
                rejection_prompts=32,
                dpo_steps=4,
                ppo_steps=2,
                eval_prompts=32,
            )
        )


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _stage_common(cfg: DemoConfig, root: Path, name: str) -> dict:
    return dict(output_dir=str(root / name), seed=cfg.seed, progress=True, report_to=["tensorboard", "jsonl"])


def run(cfg: DemoConfig) -> Path:
    if cfg.preset == "smollm2-harmless":
        from rlhfkit.presets.smollm2_harmless import HarmlessConfig
        from rlhfkit.presets.smollm2_harmless import run as run_harmless

        # The demo's thread count too: the preset's measured budget (17 min of CPU) is with one thread.
        return run_harmless(HarmlessConfig(output_dir=cfg.output_dir, seed=cfg.seed, threads=cfg.threads))
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.rewards import make_reward_fn
    from rlhfkit.train import dpo, ppo, reward, sft

    cfg = cfg.budgets()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    root = Path(cfg.output_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    refuse_other_settings(root, cfg, {"output_dir", "threads"})  # finished stages are reused on a rerun
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(cfg.to_yaml())
    data = root / "data"
    rng = random.Random(cfg.seed)
    stage_runs: dict[str, Path] = {}

    _log("1/7 SFT on demonstrations of mixed quality")
    write_jsonl(data / "demonstrations.jsonl", demonstrations(2000, seed=cfg.seed, quality=cfg.demo_quality))
    sft_dir = _done_or(
        root / "sft",
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
    sft_model, tokenizer = load_causal_lm(str(sft_dir))

    _log("2/7 sampling SFT responses and 3/7 simulated feedback")
    pool = annotator_pool(cfg.annotator_noise, seed=cfg.seed)
    fresh_pool = annotator_pool(cfg.annotator_noise, seed=cfg.seed + 10_000)  # held-out labels come from other draws
    prompts = [sample_prompt(rng) for _ in range(cfg.feedback_prompts)]
    from rlhfkit.rollout import SamplingParams, TransformersSampler

    sampler = TransformersSampler(sft_model, tokenizer, SamplingParams(max_new_tokens=cfg.max_new_tokens))
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
    _log(
        f"   {len(train_rows)} training comparisons ({sum(r['tie'] for r in train_rows)} ties); "
        f"annotator agreement {agreement:.3f}; held-out labels the consensus agrees with {ceiling:.3f}"
    )

    _log("4/7 reward model")
    rm_dir = _done_or(
        root / "rm",
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
    rm_card = json.loads((rm_dir / "card.json").read_text())["figures"]
    rm_accuracy = rm_card.get("eval/accuracy")
    proxy = make_reward_fn(f"rm:{rm_dir}")

    _log("5/7 policies: " + ", ".join(cfg.methods))
    policies: dict[str, Path] = {}
    if "dpo" in cfg.methods:
        policies["dpo"] = _done_or(
            root / "dpo",
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
                )
            ),
        )
    if "ppo" in cfg.methods:
        policies["ppo"] = _done_or(
            root / "ppo",
            lambda: ppo.run(
                ppo.PPOConfig(
                    model=str(sft_dir),
                    reward=f"rm:{rm_dir}",
                    data=str(data / "prompts.jsonl"),
                    max_steps=cfg.ppo_steps,
                    kl_coef=cfg.ppo_kl_coef,
                    lr=1e-4,
                    batch_size=32,
                    max_new_tokens=cfg.max_new_tokens,
                    temperature=1.0,
                    **_stage_common(cfg, root, "ppo"),
                )
            ),
        )
    if "rejection" in cfg.methods:
        from rlhfkit.train import rejection

        policies["rejection"] = _done_or(
            root / "rejection",
            lambda: rejection.run(
                rejection.RejectionConfig(
                    model=str(sft_dir),
                    reward=f"rm:{rm_dir}",
                    data=str(data / "prompts.jsonl"),
                    k=cfg.rejection_k,
                    max_prompts=cfg.rejection_prompts,
                    max_new_tokens=cfg.max_new_tokens,
                    temperature=1.0,
                    lr=1e-3,
                    epochs=3,
                    **_stage_common(cfg, root, "rejection"),
                )
            ),
        )
    stage_runs.update(policies)

    _log("6/7 evaluation on held-out prompts (gold utility, hidden from training)")
    held = eval_prompts(cfg.eval_prompts)
    base = sample_policy(sft_model, tokenizer, held, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 7)
    rows, curves, samples = [], {}, {}

    def add_row(method: str, s: PolicySamples, kl: float) -> None:
        proxy_mean = float(proxy([as_chat(p) for p in s.prompts], s.texts).mean())
        rows.append({"method": method, **compare(s, base), "kl_to_sft": kl, "proxy_reward": proxy_mean})
        samples[method] = [(p.text, t) for p, t in zip(s.prompts[:6], s.texts[:6])]

    add_row("sft", sample_policy(sft_model, tokenizer, held, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 8), 0.0)
    if "bon" in cfg.methods:
        for n, s in best_of_n_curve(sft_model, tokenizer, held, proxy, cfg).items():
            if n == cfg.bon_n:
                add_row(f"best-of-{n}", s, best_of_n_kl(n))
            curves.setdefault("best-of-n", []).append(
                (
                    best_of_n_kl(n),
                    sum(s.gold) / len(s.gold),
                    float(proxy([as_chat(p) for p in s.prompts], s.texts).mean()),
                )
            )
    for method, path in policies.items():
        model, _ = load_causal_lm(str(path))
        s = sample_policy(
            model, tokenizer, held, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 9, ref_model=sft_model
        )
        add_row(method, s, s.kl_to_ref)
        curves.setdefault(method, []).append((s.kl_to_ref, sum(s.gold) / len(s.gold), rows[-1]["proxy_reward"]))
    for row in rows:
        row["rm_heldout_acc"] = rm_accuracy

    _log("7/7 report")
    plots = [
        report.plot_reward_vs_kl(curves, root / "reward_vs_kl.png"),
        report.plot_training_curves(stage_runs, root / "training_curves.png"),
    ]
    wall = time.perf_counter() - start
    notes = [
        f"seed {cfg.seed}; {len(held)} held-out prompts; annotator noise {cfg.annotator_noise}; "
        f"annotator agreement {agreement:.3f} (two annotators); reward-model ceiling {ceiling:.3f} (held-out "
        f"labels the annotators' noise-free consensus agrees with); reward-model held-out accuracy {rm_accuracy}; "
        f"wall {wall:.0f} s"
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
    RunFolder(root).write_card(
        "demo",
        parents=[cfg.model],
        data={"demonstrations": str(data / "demonstrations.jsonl"), "comparisons": str(data / "comparisons.jsonl")},
        figures=summary,
    )
    print_table(rows, agreement, ceiling, wall)
    return root


def best_of_n_curve(model, tokenizer, prompts, proxy, cfg: DemoConfig) -> dict[int, PolicySamples]:
    """Best-of-n for n = 1, 2, 4, ... bon_n: the proxy's favourite among the first n of bon_n samples per prompt."""
    from rlhfkit.rollout import SamplingParams, TransformersSampler
    from rlhfkit.train.best_of_n import sample_and_score

    sampler = TransformersSampler(model, tokenizer, SamplingParams(max_new_tokens=cfg.max_new_tokens))
    texts, scores, _ = sample_and_score(sampler, proxy, [as_chat(p) for p in prompts], cfg.bon_n, 16, cfg.seed + 11)
    out = {}
    n = 1
    while n <= cfg.bon_n:
        best = [group[i] for group, i in zip(texts, scores[:, :n].argmax(-1).tolist())]
        out[n] = PolicySamples(prompts, best, [utility(p, t) for p, t in zip(prompts, best)])
        n *= 2
    return out


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


def _done_or(path: Path, train) -> Path:
    """A finished stage (its final/ exists) is reused, so a rerun of the demo resumes where it stopped."""
    if (path / "card.json").exists():
        return path
    return Path(train())
