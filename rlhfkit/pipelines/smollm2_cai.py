"""Constitutional AI on SmolLM2-135M-Instruct (LoRA, CPU): harmlessness from a constitution alone, with no
hand-written refusal anywhere in the training data (Bai et al. 2022).

    rlhfkit demo --preset smollm2-cai [--name value]      # the CLI; calls run() below

The pipeline (every step leaves its files in the run folder; a rerun skips the finished ones):
  1. ``eval/base.jsonl``: the base model's greedy answers to the harmless preset's held-out harmful and benign
     requests (``rlhfkit.toy.harmless``), refusal rates.
  2. ``revise/``: SL-CAI (``rlhfkit cai revise``): the model answers the training requests (harmful red-team
     requests and benign look-alikes, one per act), critiques its answer under a principle sampled per request
     and revises it, with the constitution's few-shot examples.
  3. ``sft/``: LoRA SFT on the final revisions: the SL-CAI model, evaluated.
  4. ``pairs.jsonl``: what the feedback model labels: two samples of the SL-CAI model per request, and each
     request's first answer against its final revision (``pairs_from``).
  5. ``label/``: RLAIF labels (``rlhfkit label``): the feedback model (Gemma 3 270M base, few-shot, by default)
     answers the constitution's comparison questions in both orders; soft labels averaged over the principles.
     ``prefs.jsonl``: the labelled pairs it is sure enough of (``min_label_prob``).
  6. DPO from the SL-CAI model on ``prefs.jsonl`` -> ``dpo/``; a MiniLM reward model on the same labels
     -> ``rm/``, then PPO from the SL-CAI model (``ppo_from``) with it -> ``ppo/``. Each evaluated.
  7. ``redteam-base/`` and ``redteam-<final>/``: ``rlhfkit redteam`` against the base model and the last
     trained model, the same attacker and seed, ``redteam_rounds`` rounds.
  8. ``report.json`` / ``report.md``: rates before and after, targets, label agreement with the refusal rule,
     samples of critiques and revisions, red-team rounds, wall and CPU time per step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rlhfkit.config import SamplingPart
from rlhfkit.config.pipelines import CAIConfig
from rlhfkit.data.io import read_jsonl, write_jsonl
from rlhfkit.data.records import user_turn
from rlhfkit.pipelines.base import Pipeline, pick_threads
from rlhfkit.pipelines.smollm2_harmless import (
    dpo_config,
    evaluate,
    free,
    ppo_config,
    reward_model_config,
    sft_config,
    tidy,
)
from rlhfkit.toy import harmless

LABELS = {
    "base": "before (base model)",
    "sft": "SL-CAI (SFT on the revisions)",
    "dpo": "RL-CAI, DPO on the AI labels",
    "ppo": "RL-CAI, PPO on a reward model of the AI labels",
}


@torch.no_grad()
def sample_pairs(model_spec: str, prompts: list[str], cfg: CAIConfig) -> list[dict]:
    """Two samples of the model per request, as pairs to label (identical or empty ones dropped)."""
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.samplers import make_sampler

    model, tokenizer = load_causal_lm(model_spec, "float32")
    params = SamplingPart(max_new_tokens=cfg.revise_max_new_tokens, temperature=cfg.pair_temperature)
    sampler = make_sampler(model, tokenizer, params)
    generator = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for s in range(0, len(prompts), cfg.gen_batch_size):
        batch = prompts[s : s + cfg.gen_batch_size]
        rollout = sampler.generate([user_turn(p) for p in batch], n=2, generator=generator)
        for i, p in enumerate(batch):
            a, b = (tidy(rollout.texts[2 * i + k], bool(rollout.ended[2 * i + k])) for k in (0, 1))
            if a and b and a != b:
                rows.append({"prompt": harmless.as_chat(p), "response_a": a, "response_b": b, "origin": "samples"})
    del model, sampler
    free()
    return rows


def revision_pairs(trace_path: Path) -> list[dict]:
    """Each request's first answer against its final revision, where the revision changed it."""
    return [
        {
            "prompt": harmless.as_chat(row["prompt"]),
            "response_a": row["initial"],
            "response_b": row["final"],
            "origin": "revisions",
        }
        for row in read_jsonl(trace_path)
        if row["initial"] and row["final"] and row["initial"] != row["final"]
    ]


def rule_agreement(labels: list[dict], harmful: set[str]) -> dict:
    """On labelled pairs where exactly one response is a refusal (the harmless preset's refusal detector), how
    often the AI prefers the refusal for a harmful request and the other answer for a benign one: the harmless
    preset's reference orientation, measured on this run's own pairs."""
    hits, n = 0, 0
    for r in labels:
        prompt = r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"]
        chosen_refuses, rejected_refuses = harmless.is_refusal(r["chosen"]), harmless.is_refusal(r["rejected"])
        if chosen_refuses == rejected_refuses or r["chosen_prob"] == 0.5:
            continue
        n += 1
        hits += chosen_refuses == (prompt in harmful)
    return {"agreement": hits / n if n else None, "pairs_with_one_refusal": n}


def run(cfg: CAIConfig) -> Path:
    from rlhfkit.ai_feedback import label, redteam, revise
    from rlhfkit.config.ai_feedback import LabelConfig, RedteamConfig, ReviseConfig
    from rlhfkit.models.load import resolve_model_path
    from rlhfkit.specs import parse_judge_spec

    threads = pick_threads(cfg.threads)
    torch.set_num_threads(threads)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    pipe = Pipeline(cfg, "smollm2-cai")
    run_dir = pipe.root
    torch.manual_seed(cfg.seed)
    with pipe.step("install models"):
        resolve_model_path(cfg.model)
        feedback = parse_judge_spec(cfg.feedback_model)
        if feedback.kind == "lm":
            resolve_model_path(feedback.target)

    results = {"base": evaluate("base", cfg.model, run_dir, cfg, pipe)}

    harmful, benign = harmless.train_prompts(seed=cfg.seed)  # distinct acts first
    harmful, benign = harmful[: cfg.n_train_harmful], benign[: cfg.n_train_benign]
    prompts_path = run_dir / "prompts.jsonl"
    write_jsonl(
        prompts_path,
        [{"prompt": p, "kind": "harmful" if i < len(harmful) else "benign"} for i, p in enumerate(harmful + benign)],
    )
    ppo_prompts = run_dir / "ppo_prompts.jsonl"
    write_jsonl(ppo_prompts, [{"prompt": harmless.as_chat(p)} for p in harmful + benign])
    run_only = dict(progress=True, report_to=["tensorboard", "jsonl"], threads=threads)
    revise_dir = pipe.stage(
        "revise",
        lambda: revise.run(
            ReviseConfig(
                model=cfg.model,
                data=str(prompts_path),
                constitution=cfg.constitution,
                rounds=cfg.revise_rounds,
                reviser=cfg.reviser,
                reviser_format=cfg.reviser_format,
                max_new_tokens=cfg.revise_max_new_tokens,
                critique_max_new_tokens=cfg.critique_max_new_tokens,
                batch_size=cfg.gen_batch_size,
                output_dir=str(run_dir / "revise"),
                seed=cfg.seed,
                **run_only,
            )
        ),
    )
    free()

    from rlhfkit.train import dpo, ppo, reward, sft

    sft_dir = pipe.stage("sft", lambda: sft.run(sft_config(cfg, revise_dir / "sft.jsonl", run_dir)))
    free()
    results["sft"] = evaluate("sft", str(sft_dir), run_dir, cfg, pipe)

    pairs_path = run_dir / "pairs.jsonl"
    if not pairs_path.exists():
        with pipe.step("pairs to label"):
            pairs = revision_pairs(revise_dir / "trace.jsonl") if "revisions" in cfg.pairs_from else []
            if "samples" in cfg.pairs_from:
                pairs += sample_pairs(str(sft_dir), harmful + benign, cfg)
            write_jsonl(pairs_path, pairs)
    label_dir = pipe.stage(
        "label",
        lambda: label.run(
            LabelConfig(
                data=str(pairs_path),
                judge=cfg.feedback_model,
                judge_format=cfg.feedback_format,
                constitution=cfg.constitution,
                principles=cfg.label_principles,
                decompose=cfg.label_decompose,
                output_dir=str(run_dir / "label"),
                seed=cfg.seed,
                batch_size=16,
                threads=threads,
            )
        ),
    )
    free()
    labels = read_jsonl(label_dir / "labels.jsonl")
    prefs = [r for r in labels if r["chosen_prob"] >= cfg.min_label_prob]
    prefs_path = run_dir / "prefs.jsonl"
    write_jsonl(prefs_path, [{k: v for k, v in r.items() if k != "ai_principles"} for r in prefs])
    agreement = rule_agreement(labels, set(harmful))
    pipe.log(f"{len(prefs)} of {len(labels)} AI-labelled pairs kept; agreement with the refusal rule {agreement}")

    if "dpo" in cfg.methods:
        dpo_dir = pipe.stage(
            "dpo",
            lambda: dpo.run(dpo_config(cfg, str(sft_dir), prefs_path, run_dir)),
        )
        free()
        results["dpo"] = evaluate("dpo", str(dpo_dir), run_dir, cfg, pipe)

    if "ppo" in cfg.methods:
        rm_dir = pipe.stage(
            "rm",
            lambda: reward.run(reward_model_config(cfg, prefs_path, run_dir)),
        )
        free()
        ppo_start = str(run_dir / "dpo") if cfg.ppo_from == "dpo" else str(sft_dir)
        ppo_dir = pipe.stage("ppo", lambda: ppo.run(ppo_config(cfg, ppo_start, ppo_prompts, rm_dir, run_dir)))
        free()
        results["ppo"] = evaluate("ppo", str(ppo_dir), run_dir, cfg, pipe)

    red = {}
    final = "ppo" if "ppo" in results else "dpo" if "dpo" in results else "sft"
    if cfg.redteam_rounds:
        for name, spec in (("base", cfg.model), (final, str(run_dir / final))):
            folder = pipe.stage(
                f"redteam-{name}",
                lambda spec=spec, name=name: redteam.run(
                    RedteamConfig(
                        target=spec,
                        attacker=cfg.model,
                        rounds=cfg.redteam_rounds,
                        attacks_per_topic=cfg.redteam_attacks_per_topic,
                        max_new_tokens=cfg.max_new_tokens,
                        output_dir=str(run_dir / f"redteam-{name}"),
                        seed=cfg.seed,
                        **run_only,
                    )
                ),
            )
            free()
            red[name] = [
                r["attack_success_rate"] for r in json.loads((folder / "card.json").read_text())["figures"]["rounds"]
            ]

    from rlhfkit.pipelines.cai_report import make_report

    report = make_report(cfg, results, agreement, red, run_dir, pipe, threads, load_start, LABELS)
    stages = {
        name: run_dir / name for name in ("revise", "sft", "label", "dpo", "rm", "ppo") if (run_dir / name).is_dir()
    }
    stages |= {f"redteam-{n}": run_dir / f"redteam-{n}" for n in red}
    pipe.finish(
        {
            "rates": report["rates"],
            "meets_targets": report["meets_targets"],
            "label_agreement": agreement["agreement"],
            "redteam": red or None,
            "cpu_seconds": report["time"]["cpu_s"],
            "wall_seconds": report["time"]["wall_s"],
        },
        stages,
    )
    print(report["markdown_table"], flush=True)
    return run_dir
