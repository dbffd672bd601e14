"""Annotators who disagree: an annotator-conditioned reward model against the pooled one, the hidden-context
statistic, and policies for one persona each.

    python -m rlhfkit.toy.experiments.disagreement --seeds 0 1 2            # runs/disagreement/seed-S, summary.json
    python -m rlhfkit.toy.experiments.disagreement --seeds 0 --pool demo    # the demo's personas instead
    python -m rlhfkit.toy.experiments.disagreement --seeds 0 --quick        # a smoke run

Per seed, on the demo's SFT policy (``common.demo_sft``) and its samples (4 per prompt):
1. Labels. Training: every pair of each training prompt's samples, labelled by one of five personas drawn at random
   (25% of decided labels flipped; ties when a persona's two utilities are within 0.05). Held out: every pair of
   each held-out prompt's samples, labelled by every persona (fresh noise), so each persona's own accuracy is
   measured on its own labels.
2. Reward models (``rlhfkit rm train`` from the SFT trunk, the same budget each): the pooled model (Bradley-Terry,
   Davidson's ties) and the annotator-conditioned one, both with ``--per-annotator-report``; the table gives each
   persona's held-out accuracy under both, and the gain.
3. Hidden context: mean-variance models (``--head mean-variance``) on the same pairs labelled by one persona alone,
   and by the five; r^2 on the held-out responses (lower: more of the reward's variance unexplained by the response).
4. Policies: rejection sampling (the demo's settings) for each persona, with a system prompt naming it and the
   conditioned reward model scoring as that persona (``RM@annotator=NAME``), and one with the pooled reward model
   and no system prompt; each judged on held-out prompts by that persona's own noise-free utility (win rate,
   ties half) against SFT and against the pooled policy.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from rlhfkit.config.pipelines import DisagreementConfig
from rlhfkit.data.io import write_jsonl
from rlhfkit.evaluate.stats import mean_std, win_rate
from rlhfkit.pipelines.base import Pipeline, pick_threads
from rlhfkit.runs import RunFolder
from rlhfkit.toy import feedback
from rlhfkit.toy.annotators import POOLS, annotator_pool
from rlhfkit.toy.evaluation import eval_prompts, sample_policy
from rlhfkit.toy.experiments.common import demo_sft, finished_figures, run_seeds, sample_responses, stage_settings
from rlhfkit.toy.gold import utility
from rlhfkit.toy.world import sample_prompt


def persona_system_prompt(name: str) -> str:
    return f"you answer for the persona {name} ."


def run(cfg: DisagreementConfig) -> dict:
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.train import reward

    cfg = cfg.budgets()
    torch.set_num_threads(pick_threads(cfg.threads))
    cfg = cfg if cfg.output_dir else cfg.model_copy(update={"output_dir": f"runs/disagreement/seed-{cfg.seed}"})
    if finished := finished_figures(cfg):
        return finished
    pipe = Pipeline(cfg, "disagreement")
    root, data = pipe.root, pipe.root / "data"
    personas = POOLS[cfg.pool]
    if cfg.one_persona not in personas:
        raise ValueError(f"one_persona {cfg.one_persona!r} is not in the {cfg.pool} pool: {', '.join(personas)}")
    sft_dir = demo_sft(pipe, cfg.seed, cfg.quick)
    sft_model, tokenizer = load_causal_lm(str(sft_dir))

    rng = random.Random(cfg.seed)
    prompts = [sample_prompt(rng) for _ in range(cfg.train_prompts + cfg.eval_prompts)]
    responses = sample_responses(
        sft_model, tokenizer, prompts, cfg.samples_per_prompt, cfg.max_new_tokens, cfg.seed, data / "responses.json"
    )
    train_p, train_r = prompts[: cfg.train_prompts], responses[: cfg.train_prompts]
    held_p, held_r = prompts[cfg.train_prompts :], responses[cfg.train_prompts :]
    pairs = cfg.samples_per_prompt * (cfg.samples_per_prompt - 1) // 2  # every pair of a prompt's samples
    pool = annotator_pool(cfg.annotator_noise, seed=cfg.seed, personas=personas)
    alone = [
        a for a in annotator_pool(cfg.annotator_noise, seed=cfg.seed, personas=personas) if a.name == cfg.one_persona
    ]
    fresh = annotator_pool(cfg.annotator_noise, seed=cfg.seed + 10_000, personas=personas)
    files = {
        "pooled": feedback.comparisons(train_p, train_r, pool, seed=cfg.seed, pairs_per_prompt=pairs),
        "one": feedback.comparisons(train_p, train_r, alone, seed=cfg.seed, pairs_per_prompt=pairs),
        "eval": feedback.comparisons_by_everyone(held_p, held_r, fresh),
    }
    for name, rows in files.items():
        write_jsonl(data / f"{name}.jsonl", rows)
    pipe.log(f"{len(files['pooled'])} training labels ({sum(r['tie'] for r in files['pooled'])} ties), "
             f"{len(files['eval'])} held-out labels ({len(personas)} personas each)")  # fmt: skip

    def rm(name: str, train: str, **settings) -> Path:
        return pipe.stage(
            name,
            lambda: reward.run(
                reward.RewardConfig(
                    model=str(sft_dir),
                    data=str(data / f"{train}.jsonl"),
                    eval_data=str(data / "eval.jsonl"),
                    max_steps=cfg.rm_steps,
                    lr=cfg.rm_lr,
                    batch_size=cfg.rm_batch_size,
                    log_every=25,
                    **settings,
                    **stage_settings(root, name, cfg.seed),
                )
            ),
        )

    pooled_dir = rm("rm-pooled", "pooled", per_annotator_report=True)
    cond_dir = rm(
        "rm-conditioned",
        "pooled",
        per_annotator_report=True,
        annotator_conditioned=True,
        annotator_dropout=cfg.annotator_dropout,
    )
    one_dir = rm("dpl-one", "one", head="mean-variance")
    five_dir = rm("dpl-five", "pooled", head="mean-variance")

    pooled_rows = {r["annotator"]: r for r in RunFolder(pooled_dir).card().figures["per_annotator"]}
    cond_rows = {r["annotator"]: r for r in RunFolder(cond_dir).card().figures["per_annotator"]}
    table = []
    for name in personas:
        p, c = pooled_rows[name], cond_rows[name]
        table.append(
            {
                "persona": name,
                "labels": p["labels"],
                "pooled_accuracy": p["accuracy"],
                "conditioned_accuracy": c["accuracy"],
                "gain_points": 100 * (c["accuracy"] - p["accuracy"]),
                "agreement": p["agreement"],
            }
        )
    r2 = {
        "one_persona": RunFolder(one_dir).card().figures.get("hidden_context_r2"),
        "five_personas": RunFolder(five_dir).card().figures.get("hidden_context_r2"),
    }
    policies = persona_policies(cfg, pipe, sft_dir, sft_model, tokenizer, pooled_dir, cond_dir, train_p, personas)
    figures = {
        "personas": table,
        "mean_gain": sum(r["gain_points"] for r in table) / len(table),
        "hidden_context_r2": r2,
        "policies": policies,
        "wall_seconds": pipe.totals()["wall_s"],
        "seed": cfg.seed,
    }
    stages = {n: root / n for n in ("sft", "rm-pooled", "rm-conditioned", "dpl-one", "dpl-five")}
    pipe.finish(figures, {**stages, **{f"policy-{p['persona']}": root / f"policy-{p['persona']}" for p in policies}})
    print_seed(figures)
    return figures


def persona_policies(cfg, pipe, sft_dir, sft_model, tokenizer, pooled_dir, cond_dir, prompts, personas) -> list[dict]:
    """Rejection sampling per persona (system prompt + its conditioned reward) and with the pooled reward; each
    persona's row: its policy's and the pooled policy's win rates by its own utility."""
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.train import rejection

    if not cfg.policy_prompts:
        return []
    root, data = pipe.root, pipe.root / "data"

    def policy(name: str, reward_spec: str, system: str | None) -> Path:
        head = [{"role": "system", "content": system}] if system else []
        rows = [{"prompt": head + [{"role": "user", "content": p.text}]} for p in prompts[: cfg.policy_prompts]]
        write_jsonl(data / f"prompts-{name}.jsonl", rows)
        return pipe.stage(
            name,
            lambda: rejection.run(
                rejection.RejectionConfig(
                    model=str(sft_dir),
                    reward=reward_spec,
                    data=str(data / f"prompts-{name}.jsonl"),
                    k=cfg.rejection_k,
                    max_prompts=cfg.policy_prompts,
                    max_new_tokens=cfg.max_new_tokens,
                    missing_eos_penalty=None,  # as the demo's rejection sampling
                    lr=1e-3,
                    epochs=3,
                    **stage_settings(root, name, cfg.seed),
                )
            ),
        )

    held = eval_prompts(cfg.policy_eval_prompts)
    sample = dict(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 9)
    sft_texts = sample_policy(sft_model, tokenizer, held, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 7).texts
    pooled_model, _ = load_causal_lm(str(policy("policy-pooled", str(pooled_dir), None)))
    pooled_texts = sample_policy(pooled_model, tokenizer, held, **sample).texts
    rows = []
    for name, weights in personas.items():
        system = persona_system_prompt(name)
        model, _ = load_causal_lm(str(policy(f"policy-{name}", f"{cond_dir}@annotator={name}", system)))
        texts = sample_policy(model, tokenizer, held, system=system, **sample).texts

        def judged(these: list[str], weights=weights) -> list[float]:
            return [utility(p, t, weights) for p, t in zip(held, these)]

        own, pooled, base = judged(texts), judged(pooled_texts), judged(sft_texts)
        rows.append(
            {
                "persona": name,
                "own_utility": sum(own) / len(own),
                "pooled_policy_utility": sum(pooled) / len(pooled),
                "sft_utility": sum(base) / len(base),
                "own_vs_sft": win_rate(own, base)[0],
                "pooled_vs_sft": win_rate(pooled, base)[0],
                "own_vs_pooled": win_rate(own, pooled)[0],
            }
        )
    return rows


def print_seed(figures: dict) -> None:
    print(f"seed {figures['seed']}: per persona held-out accuracy (pooled -> conditioned)")
    for r in figures["personas"]:
        print(f"  {r['persona']:20s} {r['labels']:5d} labels  {r['pooled_accuracy']:.3f} -> "
              f"{r['conditioned_accuracy']:.3f} ({r['gain_points']:+.1f} pt)")  # fmt: skip
    r2 = figures["hidden_context_r2"]
    print(f"  mean gain {figures['mean_gain']:+.1f} pt; hidden-context r^2: one persona {r2['one_persona']:.3f}, "
          f"five {r2['five_personas']:.3f}")  # fmt: skip


def summarise(results: list[dict], root: Path) -> dict:
    """The per-persona table (mean over seeds), the mean gain per seed, r^2 per seed, the persona policies."""
    names = [r["persona"] for r in results[0]["personas"]]
    print(f"Per-persona held-out accuracy on each persona's own labels, mean over seeds {[r['seed'] for r in results]}")
    print(f"  {'persona':20s} {'labels':>7s} {'pooled BT':>10s} {'conditioned':>12s} {'gain (pt)':>10s}")
    table = []
    for i, name in enumerate(names):
        rows = [res["personas"][i] for res in results]
        labels = sum(r["labels"] for r in rows) / len(rows)
        pooled = mean_std([r["pooled_accuracy"] for r in rows])
        cond = mean_std([r["conditioned_accuracy"] for r in rows])
        gain = mean_std([r["gain_points"] for r in rows])
        table.append({"persona": name, "labels": labels, "pooled": pooled, "conditioned": cond, "gain": gain})
        print(f"  {name:20s} {labels:7.0f} {pooled[0]:10.3f} {cond[0]:12.3f} {gain[0]:+7.1f} +- {gain[1]:.1f}")
    gains = [res["mean_gain"] for res in results]
    print(
        f"  mean gain over personas: {mean_std(gains)[0]:+.1f} pt (per seed: {', '.join(f'{g:+.1f}' for g in gains)})"
    )
    r2 = [(res["hidden_context_r2"]["one_persona"], res["hidden_context_r2"]["five_personas"]) for res in results]
    separated = all(one > five for one, five in r2)
    print("Hidden-context r^2 (mean-variance model), one persona vs five: "
          + ", ".join(f"seed {res['seed']}: {one:.3f} vs {five:.3f}" for res, (one, five) in zip(results, r2))
          + f"; one > five on every seed: {separated}")  # fmt: skip
    policies = {}
    if results[0]["policies"]:
        print("Persona policies (rejection sampling; judged by the persona's own utility, win rate, ties half)")
        print(f"  {'persona':20s} {'own vs SFT':>11s} {'pooled vs SFT':>14s} {'own vs pooled':>14s}")
        for i, name in enumerate(names):
            rows = [res["policies"][i] for res in results]
            own, pooled, head = (
                mean_std([r[k] for r in rows])[0] for k in ("own_vs_sft", "pooled_vs_sft", "own_vs_pooled")
            )
            policies[name] = {"own_vs_sft": own, "pooled_vs_sft": pooled, "own_vs_pooled": head}
            print(f"  {name:20s} {own:11.1%} {pooled:14.1%} {head:14.1%}")
    return {"table": table, "mean_gain_per_seed": gains, "hidden_context_r2": r2, "separated_every_seed": separated,
            "policies": policies, "per_seed": results}  # fmt: skip


if __name__ == "__main__":
    run_seeds(__doc__.splitlines()[0], DisagreementConfig, run, summarise, "runs/disagreement")
