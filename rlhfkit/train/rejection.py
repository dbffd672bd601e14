"""Rejection sampling fine-tuning and expert iteration: sample K per prompt, keep the best by reward,
fine-tune on the kept responses; ``--rounds R`` repeats it from the new policy.

    rlhfkit rejection --model runs/sft-1 --reward rm:runs/rm-1 --k 8 --rounds 2 --max-steps 100
    rlhfkit rejection --model tiny --reward rlhfkit.rewards:toy_count_the --k 4 --rounds 2 --max-prompts 64

Run folder: ``round-1/`` ... ``round-R/``, each with ``demonstrations.jsonl`` (the kept responses, with
their scores and the round's mean and best-of-K reward) and ``sft/`` (a full `rlhfkit sft` run folder
trained on them, starting from the previous round's model); ``final/`` is the last round's model, and the
card lists every round (Anthony et al. 2017, "Thinking fast and slow"; Touvron et al. 2023, Llama 2,
"rejection sampling fine-tuning"; AlpacaFarm's "expert iteration").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import Field

from rlhfkit.config import OptimPart
from rlhfkit.models.load import load_causal_lm
from rlhfkit.rewards import make_reward_fn
from rlhfkit.rollout import SamplingParams, load_prompts, make_sampler
from rlhfkit.train import common
from rlhfkit.train.best_of_n import SamplingPart, prompt_json, sample_and_score
from rlhfkit.train.sft import SFTConfig
from rlhfkit.train.sft import run as sft_run


class RejectionConfig(SamplingPart, OptimPart):
    """Settings of `rlhfkit rejection`; the optimiser and run settings are those of each round's SFT."""

    k: int = Field(8, gt=0, description="samples per prompt; the best one is kept")
    rounds: int = Field(1, gt=0, description="sample-select-fine-tune rounds, each from the previous round's policy")
    max_prompts: int = Field(256, gt=0, description="prompts sampled in every round (the first ones of the data)")
    sft_batch_size: int = Field(16, gt=0, description="examples per SFT optimiser step")
    lr: float = Field(1e-4, gt=0, description="peak learning rate of each round's SFT")


def sft_config(cfg: RejectionConfig, model: str, data: Path, output_dir: Path) -> SFTConfig:
    """Each round's SFT settings: every setting the two configs share, then the round's own."""
    shared = {k: v for k, v in cfg.model_dump().items() if k in SFTConfig.model_fields}
    shared.update(
        model=model,
        data=str(data),
        output_dir=str(output_dir),
        batch_size=cfg.sft_batch_size,
        eval_fraction=0.0,
        eval_data=None,
    )
    return SFTConfig(**shared)


def run(cfg: RejectionConfig) -> Path:
    accelerator = common.make_accelerator(cfg)
    run_dir, logger = common.open_run("rejection", cfg, accelerator)
    prompts = load_prompts(cfg.data, cfg.eval_data, 0.0, cfg.seed, cfg.skip_invalid)[0][: cfg.max_prompts]
    reward_fn = make_reward_fn(cfg.reward, device=accelerator.device)
    model_spec, rounds = cfg.model, []
    for r in range(1, cfg.rounds + 1):
        round_dir = run_dir.path / f"round-{r}"
        sft_dir = round_dir / "sft"
        if (sft_dir / "final").exists():  # finished before an interruption: go on from it
            rounds.append(json.loads((round_dir / "round.json").read_text()))
            model_spec = str(sft_dir)
            continue
        model, tokenizer = load_causal_lm(model_spec, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)
        model.to(accelerator.device).eval()
        sampler = make_sampler(
            cfg.rollout_backend,
            model,
            tokenizer,
            SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, list(cfg.stop)),
        )
        texts, scores, ended = sample_and_score(
            sampler, reward_fn, prompts, cfg.k, cfg.batch_size, cfg.seed + r, cfg.missing_eos_penalty
        )  # scores (P, k)
        del sampler, model
        best = scores.argmax(-1)  # (P,)
        round_dir.mkdir(parents=True, exist_ok=True)
        demos = round_dir / "demonstrations.jsonl"
        with demos.open("w") as f:
            for i, p in enumerate(prompts):
                if texts[i][best[i]].strip():  # an empty response teaches nothing
                    f.write(
                        json.dumps(
                            {
                                "prompt": prompt_json(p),
                                "completion": texts[i][best[i]],
                                "score": scores[i, best[i]].item(),
                            }
                        )
                        + "\n"
                    )
        summary = {
            "round": r,
            "policy": model_spec,
            "mean_reward": scores.mean().item(),
            "best_of_k_reward": scores.max(-1).values.mean().item(),
            "eos_rate": ended.float().mean().item(),
        }
        logger.log(
            r,
            {
                "rejection/mean_reward": summary["mean_reward"],
                "rejection/best_of_k_reward": summary["best_of_k_reward"],
                "rejection/eos_rate": summary["eos_rate"],
            },
        )
        accelerator.print(
            f"round {r}: mean reward {summary['mean_reward']:.3f}, best of {cfg.k} {summary['best_of_k_reward']:.3f}"
        )
        sft_run(sft_config(cfg, model_spec, demos, sft_dir))  # the SFT stage itself, with its own run folder
        (round_dir / "round.json").write_text(json.dumps(summary, indent=2))
        rounds.append(summary)
        model_spec = str(sft_dir)
    logger.close()
    shutil.copytree(Path(model_spec) / "final", run_dir.final)
    run_dir.write_card(
        "rejection",
        parents=[cfg.model] + ([cfg.reward[3:]] if cfg.reward.startswith("rm:") else []),
        data={"prompts": cfg.data},
        figures={"rounds": rounds, "k": cfg.k, "reward": cfg.reward},
    )
    return run_dir.path
