"""Online RLHF with PPO (or RLOO / GRPO group baselines): sample, score, penalise KL, update.

    rlhfkit ppo --model runs/sft-1 --data prompts.jsonl --reward runs/rm-1 --max-steps 200
    rlhfkit ppo --model tiny --data toy --reward rlhfkit.toy.rewards:count_the --adaptive-kl --target-kl 2
    rlhfkit ppo --model runs/sft-1 --data prompts.jsonl --lora --reward http://127.0.0.1:8000/score  # one copy
    rlhfkit ppo --model runs/sft-1 --data prompts.jsonl --reward mymod:score --advantage rloo --group-size 4

Python: ``rlhfkit.train.ppo.run(PPOConfig(...))`` returns the run folder.

One step, as in CleanRL's ppo.py and the papers (Ziegler et al. 2019, "Fine-tuning language models from
human preferences"; Stiennon et al. 2020; Ouyang et al. 2022; Huang et al. 2024, "The N+ implementation
details of RLHF with PPO"):
  1. rollout: sample a response to each prompt (``group_size`` per prompt) with the current policy;
  2. score: the reward source's score of each response (truncated at its stop), normalised; a response
     that never reached EOS gets ``missing_eos_penalty`` instead;
  3. per-token rewards: -kl_coef * KL(policy || reference) on every token plus the score on the last (the
     policy's log-probs, entropy and value-head values come from the sampler, which already computed them);
  4. advantages: GAE(gamma, lambda) with the critic's values, or a group baseline (RLOO / GRPO) on the
     sequence reward; whitened per batch;
  5. ``ppo_epochs`` passes of ``num_minibatches`` mini-batches with the clipped policy and value losses;
  6. the adaptive KL controller moves kl_coef toward target_kl; metrics and samples are logged.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import torch

from rlhfkit.config.stages import PPOConfig
from rlhfkit.data.prompts import load_prompts, read_prompts
from rlhfkit.data.records import to_json
from rlhfkit.losses import (
    KL_ESTIMATORS,
    adaptive_kl_coef,
    explained_variance,
    gae,
    grpo_advantages,
    kl_penalized_rewards,
    masked_mean,
    masked_sum,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)
from rlhfkit.models.load import add_lora, load_causal_lm, save_model
from rlhfkit.models.value import SeparateCritic, ValueHead, head_from_reward_model
from rlhfkit.rewards import load_reward
from rlhfkit.rollout import Rollout, make_sampler, response_forward
from rlhfkit.runs import parent_of
from rlhfkit.train import common
from rlhfkit.train.monitoring import PolicyMonitor, check_sampling


class RewardNormalizer:
    """Scores to mean 0, std 1: statistics of the first batch (the reference policy's samples, as
    lm-human-preferences normalises its reward model) or running ones (Welford)."""

    def __init__(self, mode: str, state: dict | None = None):
        self.mode = mode
        self.n, self.mean, self.m2 = (
            (state or {}).get("n", 0),
            (state or {}).get("mean", 0.0),
            (state or {}).get("m2", 0.0),
        )

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return scores
        if self.n == 0 or self.mode == "running":
            for x in scores.tolist():
                self.n += 1
                delta = x - self.mean
                self.mean += delta / self.n
                self.m2 += delta * (x - self.mean)
        std = math.sqrt(self.m2 / max(self.n - 1, 1))
        return (scores - self.mean) / (std if std > 1e-6 else 1.0)

    def state(self) -> dict:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}


def take(rollout: Rollout, idx: torch.Tensor) -> Rollout:
    """The rows ``idx`` of a rollout."""
    rows = idx.tolist()
    return Rollout(
        [rollout.prompts[i] for i in rows],
        rollout.query_ids[idx],
        rollout.query_mask[idx],
        rollout.response_ids[idx],
        rollout.response_mask[idx],
        rollout.logprobs[idx],
        rollout.ended[idx],
        [rollout.texts[i] for i in rows],
    )  # hidden/entropy are not needed after the behaviour pass


def is_value_head(critic) -> bool:
    """A head on the policy's trunk (possibly wrapped for several processes), as opposed to no critic or a
    separate model."""
    return isinstance(critic, ValueHead) or isinstance(getattr(critic, "module", None), ValueHead)


def forward(policy, critic, rollout: Rollout, cfg: PPOConfig, entropy: bool = False) -> dict:
    """Policy log-probs (B, T) at the sampling temperature, and the critic's values (B, T) if there is one."""
    head = is_value_head(critic)
    out = response_forward(policy, rollout, cfg.temperature, hidden=head, entropy=entropy)
    if head:
        out["values"] = critic(out.pop("hidden"))
    elif critic is not None:
        out["values"] = critic(rollout.input_ids, rollout.attention_mask, rollout.response_ids.size(1))
    return out


def behaviour(policy, critic, rollout: Rollout, cfg: PPOConfig) -> dict:
    """Log-probs, entropy and values of the policy that sampled the rollout. The transformers sampler runs
    the trainer's own model and returns what it computed while sampling, so this costs no policy forward
    (only a separate critic's); other samplers' rollouts (vLLM: other kernels, maybe another precision) are
    run through the policy again, as is every rollout with ``recompute_logprobs``."""
    if rollout.hidden is None or cfg.recompute_logprobs:
        return forward(policy, critic, rollout, cfg, entropy=True)
    out = {"logprobs": rollout.logprobs, "entropy": rollout.entropy}
    if is_value_head(critic):
        out["values"] = critic(rollout.hidden)
    elif critic is not None:
        out["values"] = critic(rollout.input_ids, rollout.attention_mask, rollout.response_ids.size(1))
    return out


def sequence_advantages(cfg: PPOConfig, sequence_rewards: torch.Tensor) -> torch.Tensor:
    return {"rloo": rloo_advantages, "grpo": grpo_advantages}[cfg.advantage](sequence_rewards, cfg.group_size)


def samples_table(rollout: Rollout, scores: torch.Tensor, n: int) -> str:
    def text(p):
        return p if isinstance(p, str) else " / ".join(m.content for m in p)

    rows = ["| prompt | response | score |", "|---|---|---|"]
    for i in range(min(n, len(rollout.texts))):
        cells = [text(rollout.prompts[i]), rollout.texts[i]]
        rows.append(
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + f" | {scores[i]:.3f} |"
        )
    return "\n".join(rows)


def run(cfg: PPOConfig) -> Path:
    accelerator = common.make_accelerator(cfg)
    run_dir = common.open_run(cfg, accelerator)
    device = accelerator.device
    train_prompts, eval_prompts = load_prompts(cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.seed, cfg.skip_invalid)
    reward_fn = load_reward(cfg.reward, cfg.reward_batch_size, device, transform=cfg.reward_transform)

    # Actor, frozen reference, critic. With LoRA the reference is the same weights with adapters off and
    # the critic a head on the same trunk: one copy of the weights.
    policy, tokenizer = load_causal_lm(cfg.model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)
    use_lora_off = cfg.reference == "lora-off" or (cfg.reference == "auto" and cfg.lora)
    reference = None
    if not use_lora_off:
        reference = copy.deepcopy(policy).eval().requires_grad_(False).to(device)
    if cfg.lora:
        policy = add_lora(policy, cfg)
    hidden_size = policy.config.hidden_size
    if cfg.advantage != "gae":
        critic = None  # group baselines need no value function
    elif cfg.critic == "head":
        critic = ValueHead(hidden_size)
    else:
        rm = reward_fn.model
        if cfg.critic_init == "reward":  # the reward model's trunk and head (it must read the policy's tokens)
            if not hasattr(rm, "trunk") or rm.tokenizer.get_vocab() != tokenizer.get_vocab():
                raise ValueError(
                    "critic_init 'reward' needs a single rlhfkit reward model that reads the policy's tokenizer"
                )
            critic = SeparateCritic(
                copy.deepcopy(rm.trunk).train().requires_grad_(True),
                head_from_reward_model(rm, rm.trunk.config.hidden_size),
            )
        else:
            critic = SeparateCritic(
                load_causal_lm(cfg.model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)[0]
            )
    trainable = torch.nn.ModuleList([policy] + ([critic] if critic is not None else []))

    n_steps = common.total_steps(cfg, len(train_prompts), accelerator.num_processes)
    optimizer = common.make_optimizer(trainable, cfg)
    scheduler = common.make_scheduler(optimizer, cfg, n_steps * cfg.ppo_epochs * cfg.num_minibatches)
    if critic is not None:
        policy, critic, optimizer, scheduler = accelerator.prepare(policy, critic, optimizer, scheduler)
    else:
        policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    raw_policy = accelerator.unwrap_model(policy)
    monitor = None
    if cfg.monitor:  # built before the folder exists: a bad monitor setting leaves nothing behind
        check_prompts = read_prompts(cfg.monitor_data, cfg.skip_invalid) if cfg.monitor_data else eval_prompts
        monitor = PolicyMonitor(cfg, run_dir, None, check_prompts, training_reward=reward_fn, device=device)
    parents = [parent_of("model", cfg.model), parent_of("reference", cfg.model), parent_of("reward", cfg.reward)]
    logger = common.start_run(run_dir, cfg, accelerator, parents, {"prompts": cfg.data, "eval": cfg.eval_data})
    fresh = common.TrainerState(extra={"kl_coef": cfg.kl_coef, "reward_norm": None})
    state = common.resume(run_dir, accelerator, cfg.resume, fresh)
    if monitor is not None:
        monitor.logger = logger
        monitor.resume(state.step)
        monitor.switched_at = state.extra.get("switched_at")
    normalizer = RewardNormalizer(cfg.normalize_reward, state.extra.get("reward_norm"))
    sampler = make_sampler(
        raw_policy,
        tokenizer,
        cfg.sampling(),
        max_prompt_tokens=max(cfg.max_length - cfg.max_new_tokens, 1),
        return_states=not cfg.recompute_logprobs,
    )

    def reference_logprobs(rollout: Rollout) -> torch.Tensor:
        if reference is not None:
            return response_forward(reference, rollout, cfg.temperature)["logprobs"]
        with raw_policy.disable_adapter():
            return response_forward(policy, rollout, cfg.temperature)["logprobs"]

    batches = common.global_batches(
        [1] * len(train_prompts), cfg.batch_size * accelerator.num_processes, cfg.seed, start=state.step
    )
    progress = common.Progress(n_steps, "ppo", cfg.progress and accelerator.is_main_process, completed=state.step)
    kl_fn = KL_ESTIMATORS[cfg.kl_estimator]
    samples_file = run_dir.path / "samples.jsonl"

    def monitor_check() -> None:
        """The monitor's check of the current policy (at step 0 too: the signals' starting values)."""
        samples = monitor.sample(raw_policy, tokenizer, check_sampling(cfg), reference_logprobs, seed=cfg.seed)
        save = lambda path: save_model(raw_policy, tokenizer, path, merge_lora=cfg.merge_lora)  # noqa: E731
        status = monitor.check(monitor.measure(samples, state.step), samples, save)
        if status.alarm and cfg.monitor_switch_to and "switched_at" not in state.extra:
            state.extra["switched_at"] = state.step  # the mitigation from here on (kept by a resume)
            monitor.switched_at = state.step
            accelerator.print(f"monitor: training reward switched to {cfg.monitor_switch_to} at step {state.step}")

    policy.train()
    with common.checkpoint_on_interrupt(run_dir, accelerator, state, cfg.keep_checkpoints, progress, logger):
        while state.step < n_steps:
            if monitor is not None and monitor.due(state.step):
                monitor_check()
                if monitor.stop:
                    break
            t0, cpu0 = time.perf_counter(), time.process_time()
            kl_coef = state.extra["kl_coef"]
            prompts = [train_prompts[i] for i in next(batches)][accelerator.process_index :: accelerator.num_processes]
            # 1. rollout (the sampling noise of step k is a function of (seed, k), so a resumed run matches)
            sampler.sync_weights(raw_policy)
            generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + state.step)
            with accelerator.autocast():  # the trainer's precision, one context for the whole rollout
                rollout = sampler.generate(prompts, n=cfg.group_size, generator=generator)
            mask = rollout.response_mask.to(device)  # (B, T)
            t_rollout = time.perf_counter() - t0

            # 2. score: normalised, and a fixed low score for responses that never ended
            if "switched_at" in state.extra:  # the monitor's alarm switched the reward to a penalised ensemble
                reward_fn.transform = cfg.monitor_switch_to
            raw_scores = reward_fn(rollout.prompts, rollout.texts).to(device)  # (B,)
            scores = normalizer(raw_scores)
            if cfg.missing_eos_penalty is not None:
                scores = torch.where(rollout.ended.to(device), scores, torch.full_like(scores, cfg.missing_eos_penalty))

            # 3. old log-probs and values (the behaviour policy), reference log-probs, per-token rewards
            with torch.no_grad(), accelerator.autocast():
                old = behaviour(policy, critic, rollout, cfg)
                ref_logprobs = reference_logprobs(rollout)
            old_logprobs, old_values = old["logprobs"], old.get("values")
            rewards = kl_penalized_rewards(
                scores, old_logprobs, ref_logprobs, mask, kl_coef, cfg.kl_estimator
            )  # (B, T)
            kl = masked_sum(kl_fn(old_logprobs, ref_logprobs), mask, dim=-1)  # (B,) KL per response
            sequence_rewards = masked_sum(rewards, mask, dim=-1)  # (B,) score - kl_coef * KL

            # 4. advantages: GAE on the per-token rewards, or a group baseline on the sequence reward
            if cfg.advantage == "gae":
                advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)  # (B, T) each
            else:
                advantages = sequence_advantages(cfg, sequence_rewards).unsqueeze(1) * mask  # (B,) -> (B, T)
                returns = None
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)

            # 5. PPO epochs over mini-batches with the clipped losses
            stats: dict[str, list[float]] = {}
            B = mask.size(0)
            mb_size = math.ceil(B / cfg.num_minibatches)
            shuffle = torch.Generator().manual_seed(cfg.seed * 7_919 + state.step)
            for _ in range(cfg.ppo_epochs):
                order = torch.randperm(B, generator=shuffle)
                for s in range(0, B, mb_size):
                    idx = order[s : s + mb_size].to(device)
                    mb_mask = mask[idx]
                    with accelerator.autocast():
                        new = forward(policy, critic, take(rollout, idx.cpu()), cfg, entropy=cfg.entropy_coef > 0)
                    pg_loss, pg_stats = ppo_policy_loss(
                        new["logprobs"], old_logprobs[idx], advantages[idx], mb_mask, cfg.cliprange
                    )
                    loss = pg_loss
                    if critic is not None:
                        vf_loss, vf_stats = ppo_value_loss(
                            new["values"], old_values[idx], returns[idx], mb_mask, cfg.cliprange_value
                        )
                        loss = loss + cfg.vf_coef * vf_loss
                        stats.setdefault("loss/value", []).append(vf_loss.item())
                        stats.setdefault("val/clipfrac", []).append(vf_stats["vf_clipfrac"].item())
                    if cfg.entropy_coef > 0:
                        mb_entropy = masked_mean(new["entropy"], mb_mask)
                        loss = loss - cfg.entropy_coef * mb_entropy
                        stats.setdefault("policy/entropy", []).append(mb_entropy.item())
                    accelerator.backward(loss)
                    grad_norm = common.optimizer_step(accelerator, trainable, optimizer, scheduler, cfg.max_grad_norm)
                    if grad_norm is not None:
                        stats.setdefault("train/grad_norm", []).append(grad_norm)
                    stats.setdefault("loss/policy", []).append(pg_loss.item())
                    stats.setdefault("loss/total", []).append(loss.item())
                    stats.setdefault("policy/clipfrac", []).append(pg_stats["clipfrac"].item())
                    stats.setdefault("policy/approx_kl", []).append(pg_stats["approx_kl"].item())

            # 6. adaptive KL control (Ziegler et al. 2019): n = responses in this batch, on all processes
            mean_kl = accelerator.reduce(kl.mean(), "mean").item()
            if cfg.adaptive_kl:
                state.extra["kl_coef"] = adaptive_kl_coef(
                    kl_coef, mean_kl, cfg.target_kl, cfg.kl_horizon, B * accelerator.num_processes
                )
            state.extra["reward_norm"] = normalizer.state()
            state.extra["kl"] = mean_kl
            state.extra["train_score"] = accelerator.reduce(raw_scores.mean(), "mean").item()
            state.step += 1
            state.tokens_seen += int(accelerator.reduce(mask.sum(), "sum"))
            elapsed, cpu_elapsed = time.perf_counter() - t0, time.process_time() - cpu0

            if state.step % cfg.log_every == 0 or state.step == n_steps:

                def avg(x):
                    return accelerator.reduce(torch.as_tensor(float(x), device=device), "mean").item()

                metrics = {
                    "objective/scores": avg(raw_scores.mean()),
                    "objective/scores_normalized": avg(scores.mean()),
                    "objective/rlhf_reward": avg(sequence_rewards.mean()),
                    "objective/kl": mean_kl,
                    "objective/kl_coef": kl_coef,
                    "objective/entropy": avg(masked_mean(old["entropy"], mask)),
                    "val/response_length": avg(mask.sum(-1).float().mean()),
                    "val/eos_rate": avg(rollout.ended.float().mean()),
                    "train/lr": scheduler.get_last_lr()[0],
                    "time/rollout_s": t_rollout,
                    "time/step_s": elapsed,
                    "time/step_cpu_s": cpu_elapsed,  # process CPU time: what the step costs, whatever runs beside it
                    "time/completions_per_s": B * accelerator.num_processes / elapsed,
                    **{k: avg(sum(v) / len(v)) for k, v in stats.items()},
                }
                if critic is not None:
                    metrics["val/explained_variance"] = avg(explained_variance(old_values, returns, mask))
                    metrics["val/mean"] = avg(masked_mean(old_values, mask))
                logger.log(state.step, metrics)
                progress.update(0, info=f"score {metrics['objective/scores']:.3f} kl {mean_kl:.2f}")
            if (state.step % cfg.sample_every == 0 or state.step == 1) and accelerator.is_main_process:
                logger.text(state.step, "samples", samples_table(rollout, raw_scores, cfg.num_samples))
                with samples_file.open("a") as f:
                    for i in range(min(cfg.num_samples, B)):
                        p = rollout.prompts[i]
                        f.write(
                            json.dumps(
                                {
                                    "step": state.step,
                                    "prompt": to_json(p),
                                    "response": rollout.texts[i],
                                    "score": raw_scores[i].item(),
                                    "ended": bool(rollout.ended[i]),
                                }
                            )
                            + "\n"
                        )
            progress.update()
            if cfg.save_every and state.step % cfg.save_every == 0:
                common.save_checkpoint(run_dir, accelerator, state, cfg.keep_checkpoints)
        if monitor is not None and not monitor.stop and monitor.due(state.step):
            monitor_check()  # the last step's policy
    progress.close()
    with accelerator.autocast():
        held_out = evaluate(sampler, reward_fn, eval_prompts, cfg, device) if eval_prompts else {}
    logger.log(state.step, held_out)
    logger.close()
    if accelerator.is_main_process:
        save_model(raw_policy, tokenizer, run_dir.final, merge_lora=cfg.merge_lora)
        if critic is not None:
            torch.save(accelerator.unwrap_model(critic).state_dict(), run_dir.path / "critic.pt")
    if monitor is not None:
        monitor.keep_best(run_dir.final)  # after a stop, the best check's policy is the run's model
    run_dir.finish(
        {
            "steps": state.step,
            "kl": state.extra.get("kl"),
            "kl_coef": state.extra["kl_coef"],
            "train_score": state.extra.get("train_score"),
            **{k.replace("eval/", "eval_"): v for k, v in held_out.items()},
            "monitor": monitor.figures() if monitor is not None else None,
        }
    )
    accelerator.wait_for_everyone()
    return run_dir.path


@torch.no_grad()
def evaluate(sampler, reward_fn, prompts: list, cfg: PPOConfig, device="cpu", limit: int = 64) -> dict[str, float]:
    """Mean raw score and EOS rate of one sample per held-out prompt."""
    prompts = prompts[:limit]
    rollout = sampler.generate(prompts, n=1, generator=torch.Generator(device=device).manual_seed(cfg.seed))
    scores = reward_fn(rollout.prompts, rollout.texts)
    return {
        "eval/score": scores.mean().item(),
        "eval/eos_rate": rollout.ended.float().mean().item(),
        "eval/response_length": rollout.lengths.float().mean().item(),
    }
