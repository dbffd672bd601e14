"""KTO on thumbs only (no pairs), judged as the demo judges a policy.

    python -m rlhfkit.toy.experiments.thumbs --seeds 0 1 2                   # runs/thumbs/seed-S, summary.json
    python -m rlhfkit.toy.experiments.thumbs --seeds 0 --quick               # a smoke run of seconds

Per seed: the demo's SFT policy and its samples of the demo's feedback prompts (the same prompts, the same draws);
each sample gets a thumbs up or down from one of the demo's five personas drawn at random (25% flipped;
``rlhfkit.toy.annotators.Annotator.thumbs``); ``rlhfkit kto`` trains on those thumbs with the demo DPO's budget
(steps, learning rate, beta, batch); the policy is judged on the demo's 500 held-out prompts by the hidden gold
utility against a second SFT sample (``rlhfkit.toy.evaluation``, the demo's seeds), with the KL to SFT.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from rlhfkit.config.pipelines import ThumbsConfig
from rlhfkit.data.io import write_jsonl
from rlhfkit.evaluate.stats import mean_std
from rlhfkit.pipelines.base import Pipeline, pick_threads
from rlhfkit.toy import feedback
from rlhfkit.toy.annotators import annotator_pool
from rlhfkit.toy.evaluation import compare, eval_prompts, sample_policy
from rlhfkit.toy.experiments.common import demo_sft, finished_figures, run_seeds, sample_responses, stage_settings
from rlhfkit.toy.world import sample_prompt


def run(cfg: ThumbsConfig) -> dict:
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.train import kto

    cfg = cfg.budgets()
    torch.set_num_threads(pick_threads(cfg.threads))
    cfg = cfg if cfg.output_dir else cfg.model_copy(update={"output_dir": f"runs/thumbs/seed-{cfg.seed}"})
    if finished := finished_figures(cfg):
        return finished
    pipe = Pipeline(cfg, "thumbs")
    root, data = pipe.root, pipe.root / "data"
    sft_dir = demo_sft(pipe, cfg.seed, cfg.quick)
    sft_model, tokenizer = load_causal_lm(str(sft_dir))

    rng = random.Random(cfg.seed)  # the demo's feedback prompts, drawn in the demo's order
    prompts = [sample_prompt(rng) for _ in range(cfg.feedback_prompts)]
    responses = sample_responses(
        sft_model, tokenizer, prompts, cfg.samples_per_prompt, cfg.max_new_tokens, cfg.seed, data / "responses.json"
    )
    n_train = int(0.9 * len(prompts))
    pool = annotator_pool(cfg.annotator_noise, seed=cfg.seed)
    train_rows = feedback.ratings(prompts[:n_train], responses[:n_train], pool, seed=cfg.seed, thumbs=True)
    eval_rows = feedback.ratings(prompts[n_train:], responses[n_train:], pool, seed=cfg.seed + 1, thumbs=True)
    write_jsonl(data / "thumbs.jsonl", train_rows)
    write_jsonl(data / "thumbs_eval.jsonl", eval_rows)
    up = sum(r["label"] for r in train_rows) / len(train_rows)
    pipe.log(f"{len(train_rows)} training thumbs, {up:.0%} up")

    kto_dir = pipe.stage(
        "kto",
        lambda: kto.run(
            kto.KTOConfig(
                model=str(sft_dir),
                data=str(data / "thumbs.jsonl"),
                eval_data=str(data / "thumbs_eval.jsonl"),
                max_steps=cfg.kto_steps,
                lr=cfg.kto_lr,
                beta=cfg.kto_beta,
                batch_size=32,
                log_every=10,
                **stage_settings(root, "kto", cfg.seed),
            )
        ),
    )
    with pipe.step("evaluation"):  # the demo's: its held-out prompts, its seeds, its gold
        held = eval_prompts(cfg.eval_prompts)
        base = sample_policy(sft_model, tokenizer, held, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 7)
        sft_again = sample_policy(sft_model, tokenizer, held, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 8)
        model, _ = load_causal_lm(str(kto_dir))
        kto_samples = sample_policy(
            model, tokenizer, held, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 9, ref_model=sft_model
        )
    rows = [
        {"method": "sft", **compare(sft_again, base), "kl_to_sft": 0.0},
        {"method": "kto (thumbs only)", **compare(kto_samples, base), "kl_to_sft": kto_samples.kl_to_ref},
    ]
    figures = {
        "rows": rows,
        "thumbs": len(train_rows),
        "thumbs_up_share": up,
        "wall_seconds": pipe.totals()["wall_s"],
        "seed": cfg.seed,
    }
    pipe.finish(figures, {"sft": sft_dir, "kto": kto_dir})
    for r in rows:
        pipe.log(
            f"{r['method']}: gold {r['gold']:.3f}, win vs SFT {r['win_rate']:.1%} "
            f"[{r['win_lo']:.0%}-{r['win_hi']:.0%}], KL {r['kl_to_sft']:.2f}"
        )
    return figures


def summarise(results: list[dict], root: Path) -> dict:
    """Mean and spread over seeds of KTO's win rate against SFT, and each seed's figure with its interval."""
    kto_rows = [next(r for r in res["rows"] if r["method"].startswith("kto")) for res in results]
    wins = [r["win_rate"] for r in kto_rows]
    golds = [r["gold"] for r in kto_rows]
    kls = [r["kl_to_sft"] for r in kto_rows]
    (win_m, win_s), (gold_m, gold_s), (kl_m, kl_s) = mean_std(wins), mean_std(golds), mean_std(kls)
    per_seed = ", ".join(
        f"seed {res['seed']}: {r['win_rate']:.1%} [{r['win_lo']:.0%}-{r['win_hi']:.0%}]"
        for res, r in zip(results, kto_rows)
    )
    print(f"KTO on thumbs only ({results[0]['thumbs']} thumbs at seed {results[0]['seed']}; no pairs)")
    print(f"  win rate vs SFT (gold, ties half): {win_m:.1%} +- {win_s:.1%}   ({per_seed})")
    print(f"  gold utility {gold_m:.3f} +- {gold_s:.3f}; KL to SFT {kl_m:.2f} +- {kl_s:.2f} nats")
    return {
        "win_rate_mean": win_m,
        "win_rate_std": win_s,
        "gold_mean": gold_m,
        "kl_mean": kl_m,
        "per_seed": results,
    }


if __name__ == "__main__":
    run_seeds(__doc__.splitlines()[0], ThumbsConfig, run, summarise, "runs/thumbs")
