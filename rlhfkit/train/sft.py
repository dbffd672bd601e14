"""Supervised fine-tuning on demonstrations, loss on completion tokens only.

    rlhfkit sft --model tiny --data toy --max-steps 200          # the embedded default on the toy world, seconds
    rlhfkit sft --config sft.yaml --lr 1e-4                      # YAML, then flags

Python: ``rlhfkit.train.sft.run(SFTConfig(...))`` returns the run folder.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from rlhfkit.config.stages import SFTConfig
from rlhfkit.data.chat import IGNORE_INDEX, tokenize_demonstration
from rlhfkit.data.io import load_train_eval
from rlhfkit.models.load import add_lora, load_causal_lm
from rlhfkit.runs import Progress, parent_of
from rlhfkit.train import batching, common
from rlhfkit.train.token_cache import cached_tokens


def tokenize_all(tokenizer, records, max_length: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for r in records:
        ids, labels = tokenize_demonstration(tokenizer, r)
        out.append((ids[:max_length], labels[:max_length]))
    return [(ids, labels) for ids, labels in out if any(t != IGNORE_INDEX for t in labels)]


def collate(examples, pad_id: int, packing: bool, max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded batch, or with ``packing`` rows of concatenated examples whose position ids restart
    at each example (transformers then masks attention per example; no padding waste)."""
    if packing:
        rows, row = [], ([], [], [])
        for ids, labels in examples:
            if len(row[0]) + len(ids) > max_length and row[0]:
                rows.append(row)
                row = ([], [], [])
            row[0].extend(ids)
            row[1].extend(labels)
            row[2].extend(range(len(ids)))
        rows.append(row)
        width = max(len(r[0]) for r in rows)
        pad = lambda seq, v: seq + [v] * (width - len(seq))  # noqa: E731
        return {
            "input_ids": torch.tensor([pad(r[0], pad_id) for r in rows]),
            "labels": torch.tensor([pad(r[1], IGNORE_INDEX) for r in rows]),
            "position_ids": torch.tensor([r[2] + list(range(len(r[2]), width)) for r in rows]),
        }
    width = max(len(ids) for ids, _ in examples)
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in examples]),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in examples]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in examples]),
    }


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy over completion tokens, their count)."""
    labels = batch.pop("labels")
    logits = model(**batch, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((targets != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate(model, examples, cfg: SFTConfig, pad_id: int, accelerator) -> dict[str, float]:
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for chunk in batching.eval_chunks(len(examples), accelerator, cfg.batch_size):
        batch = {
            k: v.to(accelerator.device)
            for k, v in collate([examples[i] for i in chunk or [0]], pad_id, False, cfg.max_length).items()
        }
        loss, n = token_loss_sum(model, batch)
        if chunk:  # an empty chunk only keeps this process in step with the others
            total += loss
            count += n
    model.train()
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    loss = (total / count.clamp(min=1)).item()
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50))}


def run(cfg: SFTConfig) -> Path:
    accelerator = common.make_accelerator(cfg)
    run_dir = common.open_run(cfg, accelerator)
    train_records, eval_records, invalid = load_train_eval(
        cfg.data, cfg.eval_data, cfg.eval_fraction, "demonstration", skip_invalid=cfg.skip_invalid, seed=cfg.seed
    )
    model, tokenizer = load_causal_lm(cfg.model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)
    if cfg.lora:
        model = add_lora(model, cfg)
    tokenize = lambda records: tokenize_all(tokenizer, records, cfg.max_length)  # noqa: E731
    train = cached_tokens(tokenize, train_records, tokenizer, cfg.max_length)
    held_out = cached_tokens(tokenize, eval_records, tokenizer, cfg.max_length)
    pad_id = tokenizer.pad_token_id

    micro_batch = batching.cpu_micro_batch(model, [len(ids) for ids, _ in train])
    batching.check_global_batch(accelerator, cfg.batch_size, cfg.grad_accum, micro_batch=micro_batch)
    n_steps = common.total_steps(cfg, len(train))
    optimizer = common.make_optimizer(model, cfg)
    scheduler = common.make_scheduler(optimizer, cfg, n_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    logger = common.start_run(
        run_dir, cfg, accelerator, [parent_of("model", cfg.model)], {"train": cfg.data, "eval": cfg.eval_data}
    )
    run_dir.write_invalid_rows(invalid)
    state = common.resume(run_dir, accelerator, cfg.resume, common.TrainerState())

    lengths = [len(ids) for ids, _ in train]
    batches = batching.global_batches(lengths, cfg.batch_size, cfg.seed, cfg.group_by_length, start=state.step)
    progress = Progress(n_steps, "sft", cfg.progress and accelerator.is_main_process, completed=state.step)
    model.train()
    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    with common.checkpoint_on_interrupt(run_dir, accelerator, state, cfg.keep_checkpoints, progress, logger) as stop:
        while state.step < n_steps:
            micro = [
                [train[i] for i in m]
                for m in batching.split_micro(next(batches), accelerator, cfg.grad_accum, micro_batch)
            ]
            collated = [collate(m, pad_id, cfg.packing, cfg.max_length) for m in micro]
            # Normalise by the completion tokens of the whole step, on all processes: accumulation
            # and data parallelism then give the same gradient as one big batch.
            n_tokens = torch.tensor(
                sum(int((c["labels"][:, 1:] != IGNORE_INDEX).sum()) for c in collated), device=accelerator.device
            )
            step_tokens = accelerator.reduce(n_tokens, "sum").clamp(min=1)
            for i, batch in enumerate(collated):
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                sync = i == len(collated) - 1
                with accelerator.no_sync(model) if not sync else nullcontext():
                    with accelerator.autocast():
                        loss_sum, n = token_loss_sum(model, batch)
                    accelerator.backward(loss_sum * accelerator.num_processes / step_tokens)
                window_loss += loss_sum.item()
                window_tokens += n
            grad_norm = common.optimizer_step(accelerator, model, optimizer, scheduler, cfg.max_grad_norm)
            state.step += 1
            state.tokens_seen += int(step_tokens)
            progress.update(info=f"loss {window_loss / max(window_tokens, 1):.3f}")
            if state.step % cfg.log_every == 0 or state.step == n_steps:
                elapsed = time.perf_counter() - window_start
                window = common.global_sums(accelerator, {"loss": window_loss, "tokens": window_tokens})
                metrics = {
                    "train/loss": window["loss"] / max(window["tokens"], 1),
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/tokens_per_s": window["tokens"] / elapsed,
                    "train/tokens_seen": state.tokens_seen,
                }
                if grad_norm is not None:
                    metrics["train/grad_norm"] = grad_norm
                logger.log(state.step, metrics)
                window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
            if cfg.eval_every and state.step % cfg.eval_every == 0 and held_out:
                logger.log(state.step, evaluate(model, held_out, cfg, pad_id, accelerator))
            if cfg.save_every and state.step % cfg.save_every == 0:
                common.save_checkpoint(run_dir, accelerator, state, cfg.keep_checkpoints)
            stop.at_step_end()  # where a Ctrl-C stops: a checkpoint here resumes the same run
    progress.close()
    held_out_figures = evaluate(model, held_out, cfg, pad_id, accelerator) if held_out else {}
    logger.log(state.step, held_out_figures)
    logger.close()
    common.save_final_model(accelerator, model, tokenizer, run_dir.final, merge_lora=cfg.merge_lora)
    run_dir.finish(
        {
            "steps": state.step,
            "tokens_seen": state.tokens_seen,
            "eval_loss": held_out_figures.get("eval/loss"),
            "eval_perplexity": held_out_figures.get("eval/perplexity"),
        }
    )
    accelerator.wait_for_everyone()
    return run_dir.path
