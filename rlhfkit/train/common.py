"""Plumbing every trainer shares, so each algorithm file holds only its own loop.

Runs on Accelerate from the start: the model and optimiser are prepared by it, each process takes its
own slice of every global batch, and per-token losses are normalised by the token count of the whole
optimiser step across micro-batches and processes (so gradient accumulation and more processes give
the same gradient as one big batch).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from rlhfkit.config import ModelPart, OptimPart, RunPart
from rlhfkit.runs import MetricsLogger, Parent, RunFolder


def make_accelerator(cfg: ModelPart) -> Accelerator:
    # float32 master weights with bfloat16 autocast: asked for, or "auto" on a GPU. On the CPU it stays
    # opt-in: only CPUs with bf16 matrix units (AMX) gain from it (1.6x for a DPO step here).
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    precision = "bf16" if cfg.dtype == "bf16-mixed" or (cfg.dtype == "auto" and gpu_bf16) else "no"
    # Accelerate keeps one state per process and refuses a second precision; stages that run in one
    # process (the demo) may differ, so a new precision starts a new state (the process group is kept).
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision)


def training_dtype(cfg: ModelPart) -> str:
    """The dtype the weights are loaded in (mixed precision keeps float32 weights)."""
    return "float32" if cfg.dtype in ("auto", "bf16-mixed") else cfg.dtype


def make_optimizer(model: torch.nn.Module, cfg: OptimPart) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on norms and biases
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel does the same update in one pass over the parameters (about 4x faster on CPU here).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, fused=fused)


def optimizer_step(
    accelerator, model: torch.nn.Module, optimizer, scheduler, max_grad_norm: float | None
) -> float | None:
    """Clip (if asked), step, advance the schedule, clear the gradients; returns the pre-clip grad norm."""
    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)) if max_grad_norm else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps, then constant, linear
    decay to 0 or half a cosine to 0 at ``total``. The same numbers as transformers' ``get_scheduler``
    (constant_with_warmup, linear, cosine), written here because importing it pulls in its Trainer's
    utilities and peft (what that costs: ``bench/import_costs.py``, docs/performance.md)."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_scheduler(optimizer, cfg: OptimPart, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.lr_schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"lr_schedule {cfg.lr_schedule!r}: choose cosine, linear or constant")
    factor = partial(lr_factor, cfg.lr_schedule, warmup=int(cfg.warmup_ratio * total_steps), total=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def total_steps(cfg: RunPart, n_examples: int, world_size: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = max(1, n_examples // (cfg.batch_size * world_size))
    return max(1, math.ceil(cfg.epochs * per_epoch))


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """The global batches of one epoch, a pure function of (seed, epoch), so a resumed run sees the same data.

    With ``group_by_length`` examples of similar length share a batch (less padding): shuffle, sort by
    length inside mega-batches of 50 batches, cut into batches, shuffle the batches (as HF's
    LengthGroupedSampler does). The last incomplete batch is dropped.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        mega = batch_size * 50
        order = [i for s in range(0, len(order), mega) for i in sorted(order[s : s + mega], key=lambda i: -lengths[i])]
    batches = [order[s : s + batch_size] for s in range(0, len(order) - batch_size + 1, batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def global_batches(
    lengths: list[int], batch_size: int, seed: int, group_by_length: bool = False, start: int = 0
) -> Iterator[list[int]]:
    """Endless stream of global batches, epoch after epoch, from step ``start`` on; step k is always the
    same batch, so a resumed run skips exactly what it already saw."""

    def stream():
        epoch = 0
        while True:
            batches = batch_order(lengths, batch_size, seed, epoch, group_by_length)
            if not batches:
                raise ValueError(f"fewer examples ({len(lengths)}) than one batch ({batch_size})")
            yield from batches
            epoch += 1

    return itertools.islice(stream(), start, None)


# Examples per micro-batch on the CPU when grad_accum is not set: the activations held for the backward pass
# shrink with the micro-batch while the products stay large enough to run at full speed on a CPU core
# (measured in docs/performance.md, "Micro-batches").
CPU_MICRO_BATCH = 4


def split_micro(batch: list[int], accelerator: Accelerator, grad_accum: int | None) -> list[list[int]]:
    """This process's share of a global batch, cut into ``grad_accum`` micro-batches (None: micro-batches of
    ``CPU_MICRO_BATCH`` examples on the CPU, the whole share elsewhere)."""
    mine = batch[accelerator.process_index :: accelerator.num_processes]
    if grad_accum is None:
        size = CPU_MICRO_BATCH if accelerator.device.type == "cpu" else max(len(mine), 1)
    else:
        size = math.ceil(len(mine) / grad_accum)
    return [mine[s : s + size] for s in range(0, len(mine), size)]


def micro_rows(rows: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """A mini-batch of rollout rows as the pieces to run forward and backward one at a time: on the CPU pieces of
    ``CPU_MICRO_BATCH`` rows, in row order so that the samples of one prompt stay together (they then share
    the prompt's forward, ``rlhfkit.rollout.shared_prompt_forward``); elsewhere the whole mini-batch."""
    if torch.device(device).type != "cpu":
        return [rows]
    return list(rows.sort().values.split(CPU_MICRO_BATCH))


@dataclass
class TrainerState:
    step: int = 0
    tokens_seen: int = 0
    best_eval_loss: float | None = None
    extra: dict = field(default_factory=dict)


def save_checkpoint(run: RunFolder, accelerator: Accelerator, state: TrainerState, keep: int) -> Path:
    """Model, optimiser, scheduler and RNG states via Accelerate, then trainer_state.json last: a checkpoint
    without it was interrupted while being written and is ignored on resume."""
    path = run.checkpoints / f"step-{state.step}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path), safe_serialization=True)
    if accelerator.is_main_process:
        (path / "trainer_state.json").write_text(json.dumps(state.__dict__))
        done = sorted(run.checkpoints.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(path: Path, accelerator: Accelerator) -> TrainerState:
    accelerator.load_state(str(path))
    return TrainerState(**json.loads((path / "trainer_state.json").read_text()))


def resume(run: RunFolder, accelerator: Accelerator, enabled: bool, fresh: TrainerState) -> TrainerState:
    """The state of the latest finished checkpoint in ``run`` (model, optimiser, scheduler and RNG restored
    in place), or ``fresh`` when there is none or resuming is off."""
    if enabled and (ckpt := run.latest_checkpoint()):
        accelerator.print(f"resumed from {ckpt}")
        return load_checkpoint(ckpt, accelerator)
    return fresh


@contextmanager
def interrupt_as_keyboard_interrupt():
    """SIGTERM (a scheduler's kill) is treated like Ctrl-C, so both save a checkpoint before exiting."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def checkpoint_on_interrupt(
    run: RunFolder,
    accelerator: Accelerator,
    state: TrainerState,
    keep: int,
    progress: Progress,
    logger: MetricsLogger | None = None,
):
    """Around a training loop: Ctrl-C or SIGTERM saves a checkpoint of ``state`` (as the loop left it) and
    re-raises, so the same command resumes."""
    try:
        with interrupt_as_keyboard_interrupt():
            yield
    except KeyboardInterrupt:
        progress.close()
        path = save_checkpoint(run, accelerator, state, keep)
        accelerator.print(f"interrupted at step {state.step}; checkpoint saved to {path}")
        if logger is not None:
            logger.close()
        raise


class Progress:
    """A rich progress bar with ETA on the main process; silent elsewhere."""

    def __init__(self, total: int, description: str, enabled: bool, completed: int = 0):
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.task = self.bar.add_task(description, total=total, completed=completed, info="")
            self.bar.start()

    def update(self, advance: int = 1, info: str | None = None) -> None:
        if self.bar:
            self.bar.update(self.task, advance=advance, **({"info": info} if info is not None else {}))

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


def open_run(cfg, accelerator: Accelerator) -> RunFolder:
    """The stage's run folder, checked (not finished, same settings if resuming) but not yet written, and the
    seed set. Call ``start_run`` once the data and models have loaded: a failed start leaves no folder."""
    set_seed(cfg.seed)
    return RunFolder.open(cfg.stage, cfg, is_main=accelerator.is_main_process)


def start_run(
    run: RunFolder, cfg, accelerator: Accelerator, parents: list[Parent], data: dict[str, str | None]
) -> MetricsLogger:
    """Create the folder (config, unfinished card with parents and data hashes) and open the metric sinks."""
    run.start(parents, data)
    accelerator.wait_for_everyone()  # every process writes checkpoint files into it from now on
    return MetricsLogger(run, cfg.report_to, enabled=accelerator.is_main_process)
