"""KTO (Ethayarajh et al. 2024): alignment from unpaired thumbs up / down, in the DPO family.

    rlhfkit kto --model runs/sft-... --data thumbs.jsonl --max-steps 200
    rlhfkit kto --model tiny --data thumbs.jsonl --beta 0.1 --undesirable-weight 1.3

Python: ``rlhfkit.train.kto.run(KTOConfig(...))`` returns the run folder.

Data: rating records with ``label`` (thumbs up = true), TRL's unpaired-preference format: ``{"prompt",
"completion", "label"}``. Each example is scored against a reference point z0, a batch estimate of
KL(pi || pi_ref) on mismatched pairs (prompt i with another example's completion), detached, and clamped at 0
(TRL's KTOTrainer). z0 is the mean over one micro-batch of the global batch (``batch_size / grad_accum`` examples:
micro-batch m of every process together, summed across processes and divided once), so it is the same on any
number of processes; TRL's is a mean of per-process means over per-device micro-batches. The mismatched completion
of each example is fixed as TRL fixes it: the data, in file order, is cut into chunks of one micro-batch
(batch_size / grad_accum) and each chunk's completions are shifted by one (``rlhfkit.losses.kto_mismatched_indices``);
the pair travels with its example, so every micro-batch's z0 is a mean over the mismatched pairs of its own
examples. Each example is one
group in DPO's shared-prompt layout, [prompt | completion | mismatched completion], so both are scored in one
forward with the prompt computed once; the reference log-probs of both come from DPO's ``Reference``
(precomputed by default). Metric names are TRL's (rewards/chosen = thumbs up, rewards/rejected = thumbs down, kl).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch

from rlhfkit import losses
from rlhfkit.config.stages import KTOConfig
from rlhfkit.data.io import DataError, load_train_eval
from rlhfkit.data.pairs import Group, collate_groups, tokenize_group
from rlhfkit.models.load import add_lora, load_causal_lm
from rlhfkit.runs import Progress, parent_of
from rlhfkit.train import batching, common
from rlhfkit.train.dpo import CompletionLogProbs, Reference


def mismatched_partners(n: int, chunk: int) -> list[int]:
    """For each of ``n`` examples in file order, the example whose completion it is paired with for z0: within
    consecutive chunks of ``chunk`` examples, the previous one (the first takes the chunk's last), as TRL does.
    A last chunk of one joins the chunk before it, so nobody is paired with themself."""
    starts = list(range(0, n, chunk))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    out = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        out += [start + j for j in losses.kto_mismatched_indices(end - start).tolist()]
    return out


def tokenize_all(tokenizer, records: list, max_length: int, chunk: int, source: str) -> list[Group]:
    """One group per thumbs record: its prompt, its completion and its mismatched completion (rendered after this
    prompt); groups whose completion is truncated away are dropped."""
    if len(records) < 2:
        raise DataError(f"{source}: KTO needs at least 2 examples (its reference point pairs each with another)")
    partners = mismatched_partners(len(records), chunk)
    groups = []
    for record, j in zip(records, partners):
        completions = [record.completion, records[j].completion]
        group = tokenize_group(tokenizer, record.prompt, completions, max_length, own=1, label=record.label)
        if all(len(c) > 0 for c in group.completion_ids):
            groups.append(group)
    return groups


def check_thumbs(records: list, source: str) -> None:
    """KTO trains on thumbs; Likert ratings are refused with the ways to use them."""
    stars = [r for r in records if r.label is None]
    if stars:
        prompt = stars[0].prompt if isinstance(stars[0].prompt, str) else stars[0].prompt[-1].content
        raise DataError(
            f"{source}: {len(stars)} of {len(records)} records give a 'rating' and no 'label' (the first: prompt "
            f"{prompt[:40]!r}); KTO trains on thumbs up/down (label true/false). Train a reward model on ratings "
            "(`rlhfkit rm train --data-kind rating`), or give labels"
        )


def kto_step(
    policy, groups: list[Group], ref_logps: torch.Tensor, cfg: KTOConfig, pad_id: int, accelerator, counted=True
):
    """Summed KTO loss of a micro-batch and its summed statistics. ref_logps (N,): the reference's log-probs of each
    group's completion and mismatched completion, interleaved. Every process calls it together (z0 is a collective);
    ``counted=False``: a stand-in batch of a process with no share, left out of z0 (its results are dropped)."""
    packed = collate_groups(groups, pad_id, cfg.shared_prompt).to(accelerator.device)
    logps = policy(packed).view(-1, 2)  # (N,) -> (B, 2): completion, mismatched completion
    ref = ref_logps.view(-1, 2)
    # z0: the mean log-ratio on the mismatched pairs of this micro-batch on every process (a sum over processes
    # divided once by their count), then clamped (as TRL).
    mismatched = (logps[:, 1] - ref[:, 1]).detach().float().sum()
    local = torch.stack([mismatched, mismatched.new_tensor(float(len(groups)))]) * float(counted)
    total = accelerator.reduce(local, "sum") if accelerator.num_processes > 1 else local
    z0 = (total[0] / total[1].clamp(min=1)).clamp(min=0)
    desirable = torch.tensor([bool(g.label) for g in groups], device=logps.device)
    per_example, rewards = losses.kto_loss(
        logps[:, 0], ref[:, 0], desirable, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight
    )
    chosen_logps = logps[:, 0].detach()
    stats = {
        "rewards/chosen": rewards[desirable].sum().item(),
        "rewards/rejected": rewards[~desirable].sum().item(),
        "logps/chosen": chosen_logps[desirable].sum().item(),
        "logps/rejected": chosen_logps[~desirable].sum().item(),
        "count/chosen": desirable.sum().item(),
        "count/rejected": (~desirable).sum().item(),
        "kl": z0.item() * len(groups),  # weighted by the micro-batch, so the window's mean is per example
    }
    return per_example.sum(), stats


def average(sums: dict[str, float], n: int, prefix: str = "") -> dict[str, float]:
    """Means of summed statistics: thumbs-up ones over thumbs up, thumbs-down ones over thumbs down."""
    up, down = max(sums.get("count/chosen", 0), 1), max(sums.get("count/rejected", 0), 1)
    out = {}
    for k, v in sums.items():
        if k.startswith("count/"):
            continue
        out[prefix + k] = v / (up if k.endswith("chosen") else down if k.endswith("rejected") else max(n, 1))
    if f"{prefix}rewards/chosen" in out:
        out[prefix + "rewards/margins"] = out[prefix + "rewards/chosen"] - out[prefix + "rewards/rejected"]
    return out


@torch.no_grad()
def evaluate(policy, reference, groups, cfg: KTOConfig, pad_id: int, accelerator) -> dict[str, float]:
    """Held-out loss, implicit rewards of thumbs up and down, and z0, in micro-batches as training has them: batch b
    is held-out examples [b * size, (b + 1) * size), each process taking a strided share, so z0 is the same on any
    number of processes."""
    policy.eval()
    size = max(cfg.batch_size // cfg.grad_accum, 2)
    totals = {"loss": 0.0}
    # Every process runs every batch: z0 is reduced across processes in each one.
    for b in range(0, len(groups), size):
        share = list(range(b + accelerator.process_index, min(b + size, len(groups)), accelerator.num_processes))
        idx = share or [b]  # an empty share: one example, uncounted
        batch = [groups[i] for i in idx]
        with accelerator.autocast():
            loss_sum, stats = kto_step(
                policy, batch, reference(batch, idx, reference.eval_ref), cfg, pad_id, accelerator, bool(share)
            )
        if share:
            totals["loss"] += loss_sum.item()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
    policy.train()
    keys = sorted(set(totals) | {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "kl"})
    keys += ["count/chosen", "count/rejected"]
    vec = accelerator.reduce(torch.tensor([totals.get(k, 0.0) for k in keys], device=accelerator.device), "sum")
    return average(dict(zip(keys, vec.tolist())), len(groups), "eval/")


def run(cfg: KTOConfig) -> Path:
    accelerator = common.make_accelerator(cfg)
    run_dir = common.open_run(cfg, accelerator)
    train_records, eval_records, invalid = load_train_eval(
        cfg.data, cfg.eval_data, cfg.eval_fraction, "rating", skip_invalid=cfg.skip_invalid, seed=cfg.seed
    )
    check_thumbs(train_records, cfg.data)
    check_thumbs(eval_records, cfg.eval_data or cfg.data)
    model, tokenizer = load_causal_lm(cfg.model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)
    pad_id = tokenizer.pad_token_id
    chunk = cfg.batch_size // cfg.grad_accum  # a micro-batch of the global batch (all processes together)
    train = tokenize_all(tokenizer, train_records, cfg.max_length, chunk, cfg.data)
    held_out = []
    if len(eval_records) >= 2:
        held_out = tokenize_all(tokenizer, eval_records, cfg.max_length, chunk, cfg.eval_data or cfg.data)
    up = sum(bool(g.label) for g in train)
    if not 0 < up < len(train):
        raise DataError(f"{cfg.data}: KTO needs both thumbs up and thumbs down; all {len(train)} are the same")
    parents = [parent_of("model", cfg.model), parent_of("reference", cfg.model)]
    logger = common.start_run(run_dir, cfg, accelerator, parents, {"train": cfg.data, "eval": cfg.eval_data})
    run_dir.write_invalid_rows(invalid)
    # Ethayarajh et al. 2024, sec. 4.2: keep lambda_D n_D / (lambda_U n_U) in [1, 4/3]. Unbalanced thumbs (most
    # people's samples get more downs than ups) otherwise push every completion down, wanted or not.
    weight = cfg.desirable_weight or cfg.undesirable_weight * (len(train) - up) / up
    cfg = cfg.model_copy(update={"desirable_weight": weight})
    ratio = weight * up / (cfg.undesirable_weight * (len(train) - up))
    if not 1 - 1e-9 <= ratio <= 4 / 3:
        accelerator.print(
            f"note: lambda_D n_D / (lambda_U n_U) = {ratio:.2f} ({up} up, {len(train) - up} down); the KTO paper "
            "keeps it in [1, 4/3] (leave --desirable-weight unset to balance it)"
        )

    reference = Reference(cfg, model, run_dir, train, held_out, pad_id, accelerator, key_extra=("kto", chunk))
    if cfg.lora:
        model = add_lora(model, cfg)
    policy = CompletionLogProbs(model)
    micro_batch = batching.cpu_micro_batch(model, [len(g) for g in train])
    batching.check_global_batch(accelerator, cfg.batch_size, cfg.grad_accum, micro_batch=micro_batch)
    n_steps = common.total_steps(cfg, len(train))
    optimizer = common.make_optimizer(policy, cfg)
    scheduler = common.make_scheduler(optimizer, cfg, n_steps)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    reference.policy = policy

    state = common.resume(run_dir, accelerator, cfg.resume, common.TrainerState())
    batches = batching.global_batches([len(g) for g in train], cfg.batch_size, cfg.seed, start=state.step)
    if held_out and state.step == 0:
        logger.log(0, evaluate(policy, reference, held_out, cfg, pad_id, accelerator))
    progress = Progress(n_steps, "kto", cfg.progress and accelerator.is_main_process, completed=state.step)
    policy.train()
    window, n_examples, start = {}, 0, time.perf_counter()
    with common.checkpoint_on_interrupt(run_dir, accelerator, state, cfg.keep_checkpoints, progress, logger) as stop:
        while state.step < n_steps:
            global_batch = next(batches)
            micro = batching.split_micro(global_batch, accelerator, cfg.grad_accum, micro_batch)
            for i, indices in enumerate(micro):
                groups = [train[j] for j in indices]
                with accelerator.no_sync(policy) if i < len(micro) - 1 else nullcontext():
                    with accelerator.autocast():
                        ref = reference(groups, indices, reference.train_ref)
                        loss_sum, stats = kto_step(policy, groups, ref, cfg, pad_id, accelerator)
                    # Mean over the global batch (TRL's per-batch mean), whatever the split.
                    accelerator.backward(loss_sum * accelerator.num_processes / len(global_batch))
                stats["loss"] = loss_sum.item()
                for k, v in stats.items():
                    window[k] = window.get(k, 0.0) + v
                n_examples += len(groups)
            grad_norm = common.optimizer_step(accelerator, policy, optimizer, scheduler, cfg.max_grad_norm)
            state.step += 1
            progress.update(info=f"loss {window['loss'] / max(n_examples, 1):.3f}")
            if state.step % cfg.log_every == 0 or state.step == n_steps:
                totals = common.global_sums(accelerator, {**window, "examples": n_examples})
                examples = int(totals.pop("examples"))
                metrics = {("train/loss" if k == "loss" else k): v for k, v in average(totals, examples).items()}
                metrics["train/lr"] = scheduler.get_last_lr()[0]
                metrics["train/examples_per_s"] = examples / (time.perf_counter() - start)
                if grad_norm is not None:
                    metrics["train/grad_norm"] = grad_norm
                logger.log(state.step, metrics)
                window, n_examples, start = {}, 0, time.perf_counter()
            if cfg.eval_every and state.step % cfg.eval_every == 0 and held_out:
                logger.log(state.step, evaluate(policy, reference, held_out, cfg, pad_id, accelerator))
            if cfg.save_every and state.step % cfg.save_every == 0:
                common.save_checkpoint(run_dir, accelerator, state, cfg.keep_checkpoints)
            stop.at_step_end()  # where a Ctrl-C stops: a checkpoint here resumes the same run
    progress.close()
    final_eval = evaluate(policy, reference, held_out, cfg, pad_id, accelerator) if held_out else {}
    logger.log(state.step, final_eval)
    logger.close()
    common.save_final_model(
        accelerator, accelerator.unwrap_model(policy).model, tokenizer, run_dir.final, merge_lora=cfg.merge_lora
    )
    run_dir.finish(
        {
            "steps": state.step,
            "eval_loss": final_eval.get("eval/loss"),
            "eval_kl": final_eval.get("eval/kl"),
            "eval_chosen_reward": final_eval.get("eval/rewards/chosen"),
            "eval_rejected_reward": final_eval.get("eval/rewards/rejected"),
            "eval_margin": final_eval.get("eval/rewards/margins"),
            "desirable_weight": cfg.desirable_weight,
        }
    )
    accelerator.wait_for_everyone()
    return run_dir.path
