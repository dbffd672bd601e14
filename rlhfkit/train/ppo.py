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
     sequence reward; whitened over the whole global batch;
  5. ``ppo_epochs`` passes of ``num_minibatches`` mini-batches with the clipped policy and value losses;
  6. the adaptive KL controller moves kl_coef toward target_kl; metrics and samples are logged.

With several processes each samples, scores and runs the behaviour pass on its share of the prompts; the batch is
then gathered (``ppo_batch.gather_batch``) so that normalisation, whitening and the mini-batches are those of the
whole batch, and each process runs its slice of every mini-batch: the run equals a one-process run.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import nullcontext
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
from rlhfkit.models.load import add_lora, base_causal_lm, load_causal_lm
from rlhfkit.models.sharded import named_full_weights, sharding_of
from rlhfkit.models.value import SeparateCritic, ValueHead, head_from_reward_model
from rlhfkit.rewards import load_reward
from rlhfkit.rollout import RowSeeds
from rlhfkit.rollout_forward import response_forward
from rlhfkit.runs import Progress, parent_of
from rlhfkit.samplers import make_sampler
from rlhfkit.train import batching, common
from rlhfkit.train.monitoring import PolicyMonitor, check_sampling
from rlhfkit.train.ppo_batch import (
    ActorCritic,
    RewardNormalizer,
    RolloutBatch,
    gather_batch,
    minibatch_share,
    samples_table,
)

__all__ = ["PPOConfig", "RewardNormalizer", "run", "evaluate"]


def sequence_advantages(cfg: PPOConfig, sequence_rewards: torch.Tensor) -> torch.Tensor:
    return {"rloo": rloo_advantages, "grpo": grpo_advantages}[cfg.advantage](sequence_rewards, cfg.group_size)


def build_critic(cfg: PPOConfig, policy, tokenizer, reward_fn):
    """None (group baselines), a value head on the policy's trunk, or a separate model."""
    if cfg.advantage != "gae":
        return None  # group baselines need no value function
    if cfg.critic == "head":
        return ValueHead(policy.config.hidden_size)
    rm = reward_fn.model
    if cfg.critic_init == "reward":  # the reward model's trunk and head (it must read the policy's tokens)
        if not hasattr(rm, "trunk") or rm.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                "critic_init 'reward' needs a single rlhfkit reward model that reads the policy's tokenizer"
            )
        return SeparateCritic(
            copy.deepcopy(rm.trunk).train().requires_grad_(True),
            head_from_reward_model(rm, rm.trunk.config.hidden_size),
        )
    return SeparateCritic(load_causal_lm(cfg.model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)[0])


def check_batch(cfg: PPOConfig, accelerator) -> None:
    batching.check_global_batch(accelerator, cfg.batch_size, name="batch_size (prompts per step)")
    rows = cfg.batch_size * cfg.group_size
    if rows < cfg.num_minibatches * accelerator.num_processes:
        raise ValueError(
            f"{rows} responses per step cannot give each of {accelerator.num_processes} processes a share of "
            f"{cfg.num_minibatches} mini-batches: raise batch_size or lower num_minibatches"
        )


def run(cfg: PPOConfig) -> Path:
    accelerator = common.make_accelerator(cfg)
    check_batch(cfg, accelerator)
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
    model = ActorCritic(policy, build_critic(cfg, policy, tokenizer, reward_fn))
    width = batching.model_width(base_causal_lm(policy))  # sizes the CPU pieces of each mini-batch

    n_steps = common.total_steps(cfg, len(train_prompts))
    optimizer = common.make_optimizer(model, cfg)
    scheduler = common.make_scheduler(optimizer, cfg, n_steps * cfg.ppo_epochs * cfg.num_minibatches)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw = accelerator.unwrap_model(model)
    monitor = None
    if cfg.monitor:
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
        raw.policy,
        tokenizer,
        cfg.sampling(),
        max_prompt_tokens=max(cfg.max_length - cfg.max_new_tokens, 1),
        return_states=not cfg.recompute_logprobs,
        weights_owner=raw,  # under FSDP2 the root holds the embeddings and head: gather all of it
        model_spec=cfg.model,  # where a vLLM engine starts from (its weights are then the trainer's)
    )

    batches = batching.global_batches([1] * len(train_prompts), cfg.batch_size, cfg.seed, start=state.step)
    progress = Progress(n_steps, "ppo", cfg.progress and accelerator.is_main_process, completed=state.step)
    kl_fn = KL_ESTIMATORS[cfg.kl_estimator]
    samples_file = run_dir.path / "samples.jsonl"

    @torch.no_grad()
    def reference_logprobs(rollout, like_sampler: bool = True) -> torch.Tensor:
        """The reference's log-probs of the rollout, in the precision of the policy's log-probs they are compared
        with: those of the sampler (``like_sampler``: float32 where it ran without autocast, or kept float32 under
        it, as the CPU's decode step does; the monitor's checks sample without autocast), else of a pass under
        autocast. The KL of the starting policy to its reference is then zero, not the rounding between bf16 and
        float32 (and on the CPU, whose bf16 products are emulated, the reference pass runs at float32's speed)."""
        with nullcontext() if like_sampler and not rollout.in_autocast else accelerator.autocast():
            if reference is not None:
                return response_forward(reference, rollout, cfg.temperature)["logprobs"]
            return model(rollout, cfg.temperature, part="reference")["logprobs"]

    def monitor_check() -> None:
        """The monitor's check of the current policy (at step 0 too: the signals' starting values). Collective:
        every process samples the same check prompts with the same stream (a sharded policy is gathered for it,
        as for a rollout) and takes part in saving the model; only the main process writes."""
        samples = monitor.sample(
            raw.policy, tokenizer, check_sampling(cfg), reference_logprobs, seed=cfg.seed, weights_owner=raw
        )
        save = lambda path: common.save_final_model(  # noqa: E731
            accelerator, raw.policy, tokenizer, path, merge_lora=cfg.merge_lora
        )
        status = monitor.check(monitor.measure(samples, state.step), samples, save)
        if status.alarm and cfg.monitor_switch_to and "switched_at" not in state.extra:
            state.extra["switched_at"] = state.step  # the mitigation from here on (kept by a resume)
            monitor.switched_at = state.step
            accelerator.print(f"monitor: training reward switched to {cfg.monitor_switch_to} at step {state.step}")

    model.train()
    with common.checkpoint_on_interrupt(run_dir, accelerator, state, cfg.keep_checkpoints, progress, logger) as stop:
        while state.step < n_steps:
            if monitor is not None and monitor.due(state.step):
                monitor_check()
                if monitor.stop:
                    break
            t0, cpu0 = time.perf_counter(), time.process_time()
            kl_coef = state.extra["kl_coef"]
            global_batch = next(batches)
            share = batching.shard_range(len(global_batch), accelerator)  # this process's prompts, contiguous
            prompts = [train_prompts[global_batch[i]] for i in share]
            # 1. rollout. The noise of response row r at step k is a function of (seed, k, r): a resumed run and a
            # run on any number of processes sample the same responses.
            t_sync = time.perf_counter()
            sampler.sync_weights(raw.policy)  # a vLLM engine takes the weights of the last optimiser step
            t_sync = time.perf_counter() - t_sync
            rows = RowSeeds(cfg.seed * 1_000_003 + state.step, first_row=share.start * cfg.group_size)
            with accelerator.autocast():  # the trainer's precision, one context for the whole rollout
                rollout = sampler.generate(prompts, n=cfg.group_size, rows=rows)
            t_rollout = time.perf_counter() - t0

            # 2.-3. on this process's share: raw scores, behaviour log-probs / values, reference log-probs
            if "switched_at" in state.extra:  # the monitor's alarm switched the reward to a penalised ensemble
                reward_fn.transform = cfg.monitor_switch_to
            raw_scores = reward_fn(rollout.prompts, rollout.texts).to(device)  # (b,)
            with torch.no_grad(), accelerator.autocast():
                old = behaviour(model, rollout, cfg, with_critic=raw.critic is not None)
            ref_logprobs = reference_logprobs(rollout, like_sampler=old["logprobs"] is rollout.logprobs)
            # ... then the whole batch, the same on every process
            batch = gather_batch(accelerator, rollout, old, ref_logprobs, raw_scores, tokenizer.pad_token_id)
            mask = batch.response_mask  # (B, T)
            scores = normalizer(batch.raw_scores)  # normalised, and a fixed low score for responses that never ended
            if cfg.missing_eos_penalty is not None:
                scores = torch.where(batch.ended, scores, torch.full_like(scores, cfg.missing_eos_penalty))
            rewards = kl_penalized_rewards(
                scores, batch.logprobs, batch.ref_logprobs, mask, kl_coef, cfg.kl_estimator
            )  # (B, T)
            kl = masked_sum(kl_fn(batch.logprobs, batch.ref_logprobs), mask, dim=-1)  # (B,) KL per response
            sequence_rewards = masked_sum(rewards, mask, dim=-1)  # (B,) score - kl_coef * KL

            # 4. advantages: GAE on the per-token rewards, or a group baseline on the sequence reward
            if cfg.advantage == "gae":
                advantages, returns = gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)  # (B, T) each
            else:
                advantages = sequence_advantages(cfg, sequence_rewards).unsqueeze(1) * mask  # (B,) -> (B, T)
                returns = None
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)

            # 5. PPO epochs over mini-batches with the clipped losses
            stats = update(model, optimizer, scheduler, accelerator, batch, advantages, returns, cfg, state.step, width)

            # 6. adaptive KL control (Ziegler et al. 2019): n = responses in this batch
            B = mask.size(0)
            mean_kl = kl.mean().item()
            if cfg.adaptive_kl:
                state.extra["kl_coef"] = adaptive_kl_coef(kl_coef, mean_kl, cfg.target_kl, cfg.kl_horizon, B)
            state.extra["reward_norm"] = normalizer.state()
            state.extra["kl"] = mean_kl
            state.extra["train_score"] = batch.raw_scores.mean().item()
            state.step += 1
            state.tokens_seen += int(mask.sum())
            elapsed, cpu_elapsed = time.perf_counter() - t0, time.process_time() - cpu0

            if state.step % cfg.log_every == 0 or state.step == n_steps:
                metrics = {
                    "objective/scores": batch.raw_scores.mean().item(),
                    "objective/scores_normalized": scores.mean().item(),
                    "objective/rlhf_reward": sequence_rewards.mean().item(),
                    "objective/kl": mean_kl,
                    "objective/kl_coef": kl_coef,
                    "objective/entropy": masked_mean(batch.entropy, mask).item(),
                    "val/response_length": mask.sum(-1).float().mean().item(),
                    "val/eos_rate": batch.ended.float().mean().item(),
                    "train/lr": scheduler.get_last_lr()[0],
                    "time/rollout_s": t_rollout,
                    "time/weight_sync_s": t_sync,
                    "time/step_s": elapsed,
                    "time/step_cpu_s": cpu_elapsed,  # process CPU time: what the step costs, whatever runs beside it
                    "time/completions_per_s": B / elapsed,
                    **stats,
                }
                if batch.values is not None:
                    metrics["val/explained_variance"] = explained_variance(batch.values, returns, mask).item()
                    metrics["val/mean"] = masked_mean(batch.values, mask).item()
                logger.log(state.step, metrics)
                progress.update(0, info=f"score {metrics['objective/scores']:.3f} kl {mean_kl:.2f}")
            if (state.step % cfg.sample_every == 0 or state.step == 1) and accelerator.is_main_process:
                log_samples(logger, samples_file, state.step, rollout, raw_scores, cfg.num_samples)
            progress.update()
            if cfg.save_every and state.step % cfg.save_every == 0:
                common.save_checkpoint(run_dir, accelerator, state, cfg.keep_checkpoints)
            stop.at_step_end()  # where a Ctrl-C stops: a checkpoint here resumes the same run
        if monitor is not None and not monitor.stop and monitor.due(state.step):
            monitor_check()  # the last step's policy
    progress.close()
    with accelerator.autocast():
        held_out = evaluate(sampler, reward_fn, eval_prompts, cfg, device, accelerator) if eval_prompts else {}
    logger.log(state.step, held_out)
    logger.close()
    common.save_final_model(accelerator, raw.policy, tokenizer, run_dir.final, merge_lora=cfg.merge_lora)
    if raw.critic is not None:
        save_critic(accelerator, raw.critic, run_dir.path / "critic.pt")
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


def behaviour(model, rollout, cfg: PPOConfig, with_critic: bool) -> dict:
    """Log-probs, entropy and values of the policy that sampled the rollout. The transformers sampler runs
    the trainer's own model and returns what it computed while sampling, so this costs no policy forward
    (only a separate critic's); other samplers' rollouts (vLLM: other kernels, maybe another precision) are
    run through the policy again, as is every rollout with ``recompute_logprobs``."""
    if rollout.hidden is None or cfg.recompute_logprobs:
        return model(rollout, cfg.temperature, entropy=True)
    out = {"logprobs": rollout.logprobs, "entropy": rollout.entropy}
    if with_critic:
        out.update(model(rollout, cfg.temperature, part="values", hidden=rollout.hidden))
    return out


def update(
    model, optimizer, scheduler, accelerator, batch: RolloutBatch, advantages, returns, cfg: PPOConfig, step, width=0
):
    """``ppo_epochs`` passes over the global batch in ``num_minibatches`` mini-batches, each one optimiser step.
    Mini-batch rows are a permutation of the global batch (a function of seed and step); this process runs its
    slice, and its losses are sums over its tokens divided by the token count of the whole mini-batch, times the
    number of processes (DDP and FSDP average the gradients): the gradient of the whole mini-batch's mean. On the
    CPU the slice runs forward and backward in pieces of 4 rows or fewer (``batching.micro_rows``, sized by
    ``width``, the policy's hidden size x layers), each weighted by its share of the mini-batch's tokens, so the
    pieces' gradients add up to the slice's. The figures are likewise each piece's share of the mini-batch means,
    summed over the processes."""
    from accelerate.utils import DistributedType

    P = accelerator.num_processes
    whole_slices = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    B = batch.response_mask.size(0)
    n_updates = cfg.ppo_epochs * cfg.num_minibatches  # as many as the scheduler was sized for
    shuffle = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
    sums: dict[str, float] = {}
    grad_norms = []

    def add(name, value, weight):
        sums[name] = sums.get(name, 0.0) + float(value) * weight / n_updates

    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=shuffle)
        # num_minibatches mini-batches of sizes that differ by one row at most (not ceil(B / n) rows and the rest,
        # which may make fewer mini-batches than the scheduler counts and a last one with fewer rows than there are
        # processes: an empty share that crashed one process's forward while the others waited in all-reduce)
        for mb_rows in order.tensor_split(cfg.num_minibatches):
            idx = minibatch_share(mb_rows, accelerator).to(batch.response_mask.device)
            mb_tokens = float(batch.response_mask[mb_rows.to(idx.device)].sum())  # the whole mini-batch's tokens
            # on the CPU in pieces: less activation memory. Not under FSDP / DeepSpeed: there every forward is
            # collective (processes holding slices of different sizes would run different numbers of pieces) and
            # DeepSpeed steps the optimiser inside each backward
            pieces = [idx] if whole_slices else batching.micro_rows(idx, idx.device, width, batch.piece_tokens)
            for i, piece in enumerate(pieces):
                mine = batch.rows(piece)
                mb_mask = mine.response_mask
                share = float(mb_mask.sum()) / mb_tokens  # this piece's tokens / the mini-batch's, all processes
                with accelerator.no_sync(model) if i < len(pieces) - 1 else nullcontext():
                    with accelerator.autocast():
                        new = model(mine, cfg.temperature, entropy=cfg.entropy_coef > 0)
                    pg_loss, pg_stats = ppo_policy_loss(
                        new["logprobs"], mine.logprobs, advantages[piece], mb_mask, cfg.cliprange
                    )
                    loss = pg_loss
                    if returns is not None:
                        vf_loss, vf_stats = ppo_value_loss(
                            new["values"], mine.values, returns[piece], mb_mask, cfg.cliprange_value
                        )
                        loss = loss + cfg.vf_coef * vf_loss
                        add("loss/value", vf_loss.item(), share)
                        add("val/clipfrac", vf_stats["vf_clipfrac"].item(), share)
                    if cfg.entropy_coef > 0:
                        mb_entropy = masked_mean(new["entropy"], mb_mask)
                        loss = loss - cfg.entropy_coef * mb_entropy
                        add("policy/entropy", mb_entropy.item(), share)
                    # per-token means of this piece -> the mini-batch's mean (times P: DDP and FSDP average)
                    accelerator.backward(loss * (share * P))
                add("loss/policy", pg_loss.item(), share)
                add("loss/total", loss.item(), share)
                add("policy/clipfrac", pg_stats["clipfrac"].item(), share)
                add("policy/approx_kl", pg_stats["approx_kl"].item(), share)
            grad_norm = common.optimizer_step(accelerator, model, optimizer, scheduler, cfg.max_grad_norm)
            if grad_norm is not None:
                grad_norms.append(grad_norm)  # already global: the same on every process
    stats = common.global_sums(accelerator, sums)
    if grad_norms:
        stats["train/grad_norm"] = sum(grad_norms) / len(grad_norms)
    return stats


def log_samples(logger, samples_file: Path, step: int, rollout, raw_scores, num_samples: int) -> None:
    """A table of prompts, responses and scores (this process's first rows) to TensorBoard and samples.jsonl."""
    logger.text(step, "samples", samples_table(rollout, raw_scores, num_samples))
    with samples_file.open("a") as f:
        for i in range(min(num_samples, len(rollout.texts))):
            row = {
                "step": step,
                "prompt": to_json(rollout.prompts[i]),
                "response": rollout.texts[i],
                "score": raw_scores[i].item(),
                "ended": bool(rollout.ended[i]),
            }
            f.write(json.dumps(row) + "\n")


def save_critic(accelerator, critic, path: Path) -> None:
    """critic.pt: the value head's (or separate critic's) state dict, gathered whole under a sharding engine."""
    if sharding_of(critic) is None:
        if accelerator.is_main_process:
            torch.save(critic.state_dict(), path)
        return
    state = {name: t.detach().cpu() for name, t in named_full_weights(critic, merge_lora=False)}
    if accelerator.is_main_process:
        torch.save(state, path)


@torch.no_grad()
def evaluate(
    sampler, reward_fn, prompts: list, cfg: PPOConfig, device="cpu", accelerator=None, limit: int = 64
) -> dict[str, float]:
    """Mean raw score, EOS rate and length of one sample per held-out prompt (the first ``limit``), each
    process sampling its share (every process all of them when there are fewer prompts than processes)."""
    prompts = prompts[:limit]
    P = accelerator.num_processes if accelerator is not None else 1
    share = batching.shard_range(len(prompts), accelerator) if P > 1 and len(prompts) >= P else range(len(prompts))
    rollout = sampler.generate([prompts[i] for i in share], n=1, rows=RowSeeds(cfg.seed, first_row=share.start))
    scores = reward_fn(rollout.prompts, rollout.texts)
    sums = {
        "score": scores.sum().item(),
        "eos": rollout.ended.float().sum().item(),
        "length": rollout.lengths.float().sum().item(),
        "n": float(len(share)),
    }
    if P > 1:
        sums = common.global_sums(accelerator, sums)
    n = max(sums["n"], 1.0)
    return {
        "eval/score": sums["score"] / n,
        "eval/eos_rate": sums["eos"] / n,
        "eval/response_length": sums["length"] / n,
    }
