"""Rejection sampling fine-tuning and expert iteration: sample K per prompt, keep the best by reward,
fine-tune on the kept responses; ``--rounds R`` repeats it from the new policy.

    rlhfkit rejection --model runs/sft-1 --data prompts.jsonl --reward runs/rm-1 --k 8 --rounds 2 --max-steps 100
    rlhfkit rejection --model tiny --data toy --reward rlhfkit.toy.rewards:count_the --k 4 --rounds 2 --max-prompts 64

Run folder: ``round-1/`` ... ``round-R/``, each with ``samples.jsonl`` (every sample and its score, appended batch by
batch: an interrupted run samples only what it had not), ``demonstrations.jsonl`` (the kept responses, with
their scores), ``round.json`` (the round's mean and best-of-K reward) and ``sft/`` (a full `rlhfkit sft` run folder
trained on them, starting from the previous round's model); ``final/`` is the last round's model, and the
card lists every round (Anthony et al. 2017, "Thinking fast and slow"; Touvron et al. 2023, Llama 2,
"rejection sampling fine-tuning"; AlpacaFarm's "expert iteration").

With several processes each round's sampling is split across them (``best_of_n.sample_and_score``), the main
process writes the kept responses, and the round's SFT runs on all processes with the same global batch.
A vLLM engine is started once and given each round's weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlhfkit.config.stages import RejectionConfig, SFTConfig
from rlhfkit.data.io import read_state_json, write_jsonl
from rlhfkit.data.prompts import load_prompts, read_prompts
from rlhfkit.data.records import to_json
from rlhfkit.models.load import load_causal_lm
from rlhfkit.rewards import load_reward
from rlhfkit.runs import RunFolder, parent_of
from rlhfkit.samplers import make_sampler
from rlhfkit.train import best_of_n, common
from rlhfkit.train.monitoring import PolicyMonitor, check_sampling
from rlhfkit.train.sft import run as sft_run


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


def check_prompts(cfg: RejectionConfig, all_prompts: list) -> list:
    """The monitor's prompts: monitor_data's, eval_data's, or the data's prompts beyond max_prompts (which no round
    samples, so they are held out)."""
    if cfg.monitor_data:
        return read_prompts(cfg.monitor_data, cfg.skip_invalid)
    if cfg.eval_data:
        return read_prompts(cfg.eval_data, cfg.skip_invalid)
    return all_prompts[cfg.max_prompts :]


def run(cfg: RejectionConfig) -> Path:
    accelerator = common.make_accelerator(cfg)
    run_dir = common.open_run(cfg, accelerator)
    all_prompts = load_prompts(cfg.data, cfg.eval_data, 0.0, cfg.seed, cfg.skip_invalid)[0]
    prompts = all_prompts[: cfg.max_prompts]
    reward_fn = load_reward(cfg.reward, cfg.reward_batch_size, accelerator.device, transform=cfg.reward_transform)
    monitor = start = None
    if cfg.monitor:  # checks once per round, on the policy the round starts from, and on the final one
        monitor = PolicyMonitor(cfg, run_dir, None, check_prompts(cfg, all_prompts), training_reward=reward_fn)
        start = load_causal_lm(cfg.model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)[0]
        start.to(accelerator.device).eval().requires_grad_(False)  # the reference of the checks' KL
    parents = [parent_of("model", cfg.model), parent_of("reward", cfg.reward)]
    logger = common.start_run(run_dir, cfg, accelerator, parents, {"prompts": cfg.data})

    def monitor_check(step: int, model, tokenizer) -> None:
        """Collective: every process samples the same check prompts; the main process writes (and saves)."""
        from rlhfkit.rollout_forward import response_forward

        sampling = check_sampling(cfg)

        def reference_logprobs(rollout):
            return response_forward(start, rollout, sampling.temperature)["logprobs"]

        samples = monitor.sample(model, tokenizer, sampling, reference_logprobs, seed=cfg.seed)
        save = lambda path: common.save_final_model(accelerator, model, tokenizer, path)  # noqa: E731
        monitor.check(monitor.measure(samples, step), samples, save)

    if monitor is not None:
        monitor.logger = logger
        finished = [r for r in range(1, cfg.rounds + 1) if RunFolder(run_dir.path / f"round-{r}" / "sft").is_finished()]
        monitor.resume(len(finished))
    model_spec, rounds, engine = cfg.model, [], None
    for r in range(1, cfg.rounds + 1):
        round_dir = run_dir.path / f"round-{r}"
        sft_dir = round_dir / "sft"
        if RunFolder(sft_dir).is_finished():  # this round finished before an interruption: go on from it
            rounds.append(_round_record(round_dir / "round.json"))
            model_spec = str(sft_dir)
            continue
        demos, figures_path = round_dir / "demonstrations.jsonl", round_dir / "round.json"
        # sampled before an interruption (the figures are written after the kept responses): its SFT goes on
        sampled = cfg.resume and figures_path.exists() and demos.exists()
        checks_first = monitor is not None and monitor.pending(r - 1)
        if not sampled or checks_first:
            model, tokenizer = load_causal_lm(model_spec, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)
            model.to(accelerator.device).eval()
        if checks_first:
            monitor_check(r - 1, model, tokenizer)
            if monitor.stop:
                break
        if sampled:
            summary = _round_record(figures_path)
        else:
            if engine is None:
                engine = make_sampler(model, tokenizer, cfg.sampling(), model_spec=model_spec)
            else:
                engine.sync_weights(model)  # a vLLM engine started in round 1 takes this round's weights

            def sample(chunk: list, first: int, engine=engine, r=r):  # prompts from index `first` on
                return best_of_n.sample_and_score(
                    engine, reward_fn, chunk, cfg.k, cfg.batch_size, cfg.seed + r, cfg.missing_eos_penalty,
                    accelerator, first=first,
                )  # fmt: skip

            piece, title = cfg.batch_size * accelerator.num_processes, f"rejection round {r}"
            texts, scores, ended = best_of_n.sample_to_file(
                round_dir / "samples.jsonl", prompts, cfg.k, piece, sample, accelerator, resume=cfg.resume,
                progress=title if cfg.progress else None,
            )  # fmt: skip
            if cfg.rollout_backend == "transformers":
                engine = None  # it holds this round's model; the next round loads its own
            summary = keep_the_best(r, model_spec, prompts, texts, scores, ended, round_dir, accelerator)
            logger.log(r, {f"rejection/{k}": v for k, v in summary.items() if k not in ("round", "policy")})
            accelerator.print(
                f"round {r}: mean reward {summary['mean_reward']:.3f}, best of {cfg.k} {summary['best_of_k_reward']:.3f}"
            )
        model = None  # the round's SFT loads its own
        sft_run(sft_config(cfg, model_spec, demos, sft_dir))  # the SFT stage itself, with its own run folder
        rounds.append(summary)
        model_spec = str(sft_dir)
    if monitor is not None and not monitor.stop and monitor.pending(len(rounds)):
        model, tokenizer = load_causal_lm(model_spec, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)
        monitor_check(len(rounds), model.to(accelerator.device).eval(), tokenizer)  # the last round's policy
    logger.close()
    if accelerator.is_main_process:
        shutil.copytree(Path(model_spec) / "final", run_dir.final, dirs_exist_ok=True)
    if monitor is not None:
        monitor.keep_best(run_dir.final)  # after a stop, the best round's policy is the run's model
    run_dir.finish(
        {
            "k": cfg.k,
            "rounds": rounds,
            "last_mean_reward": rounds[-1]["mean_reward"],
            "last_best_of_k_reward": rounds[-1]["best_of_k_reward"],
            "monitor": monitor.figures() if monitor is not None else None,
        }
    )
    accelerator.wait_for_everyone()
    return run_dir.path


def keep_the_best(r: int, policy: str, prompts, texts, scores, ended, round_dir: Path, accelerator) -> dict:
    """Round ``r``'s demonstrations (the best of K of every prompt) and figures, written by the main process; the
    figures go last, so a folder that has them holds the whole round's demonstrations."""
    best = scores.argmax(-1)  # (P,)
    kept = [
        {"prompt": to_json(p), "completion": texts[i][best[i]], "score": scores[i, best[i]].item()}
        for i, p in enumerate(prompts)
        if texts[i][best[i]].strip()  # an empty response teaches nothing
    ]
    summary = {
        "round": r,
        "policy": policy,
        "mean_reward": scores.mean().item(),
        "best_of_k_reward": scores.max(-1).values.mean().item(),
        "eos_rate": ended.float().mean().item(),
    }
    if accelerator.is_main_process:
        write_jsonl(round_dir / "demonstrations.jsonl", kept)
        (round_dir / "round.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()  # every process's SFT reads the file the main process wrote
    return summary


def _round_record(path: Path) -> dict:
    """The figures a finished round wrote; a file that is missing or not what it wrote fails naming it."""
    record = read_state_json(
        path, "a finished round's figures cannot be read", "move the round's folder aside to run it again"
    )
    if not isinstance(record, dict) or "mean_reward" not in record:
        raise ValueError(
            f"{path}: not the figures of a round (no 'mean_reward'); move the round's folder aside to run it again"
        )
    return record
