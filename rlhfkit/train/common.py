"""Plumbing every trainer shares, so each algorithm file holds only its own loop: the accelerator, optimiser and
schedule, checkpoints and resumption, cross-process sums, progress and the final save. Which examples a step
trains on, and in what pieces, is ``rlhfkit.train.batching``.

Runs on Accelerate from the start: the model and optimiser are prepared by it, and ``batch_size`` is the global
batch (all processes together), so a config means the same run on one CPU or on many GPUs. Each process takes a
strided share of every global batch, per-token losses are normalised by the token count of the whole optimiser
step across micro-batches and processes, and logged figures are sums over all processes divided once
(``global_sums``): two processes give the same gradients and the same metrics as one with the same global batch
(tests/test_multiprocess.py).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from rlhfkit.config import ModelPart, OptimPart, RunPart
from rlhfkit.data.io import one_line
from rlhfkit.runs import MetricsLogger, Parent, Progress, RunFolder

# glibc's malloc serves a request from its heap once it is below the mmap threshold, and the threshold rises to the
# size of any mmap-ed block freed (up to 32 MB). A training step on the CPU then interleaves the tensors kept for
# the backward with freed temporaries of a few MB, and the heap cannot hand the holes back to the OS: one DPO
# micro-batch of SmolLM2 with LoRA held 2 GB above its live tensors. A fixed threshold (RLHFKIT_MMAP_THRESHOLD,
# bytes; 1048576 is what docs/performance.md measured) keeps larger tensors out of the heap, so they go back to
# the OS when freed, but every one of them is then page-faulted in afresh: on this machine that cost 30% more CPU
# on SmolLM2 and more on small models, so it is opt-in. The default lever is smaller pieces for large models
# (``cpu_micro_batch``), which keeps less in the heap and cost no time.


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at ``RLHFKIT_MMAP_THRESHOLD`` bytes for this process, when set; False where it
    is unset or 0, or the C library is not glibc."""
    value = int(os.environ.get("RLHFKIT_MMAP_THRESHOLD") or 0)
    if value <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and others: their allocators behave otherwise
        return False
    M_MMAP_THRESHOLD = -3
    return hasattr(libc, "gnu_get_libc_version") and libc.mallopt(M_MMAP_THRESHOLD, value) == 1


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
    # cpu=True on a machine without a GPU makes processes started by torchrun / `accelerate launch --multi_gpu`
    # one gloo group (without it each would run alone). The schedule is stepped once per optimiser step: by
    # default Accelerate steps it once per process, for loops whose step count shrinks with more processes,
    # but here the global batch, and so the number of steps, does not depend on the number of processes.
    # A DeepSpeed launch is the exception: Accelerate sets DeepSpeed up only when not told cpu=True, and then finds
    # no backend on a machine without a GPU; naming gloo makes the processes one group (DeepSpeed runs on CPUs).
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if deepspeed and not torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        from accelerate.state import PartialState

        PartialState(cpu=False, backend="gloo")
    accelerator = Accelerator(
        mixed_precision=precision,
        cpu=not torch.cuda.is_available() and not deepspeed,
        step_scheduler_with_optimizer=False,
    )
    _fsdp_on_cpu(accelerator, precision)
    _deepspeed_settings(accelerator, cfg)
    if accelerator.device.type == "cpu":  # activations live in the C heap only on the CPU
        fix_mmap_threshold()
        if precision == "bf16" and not cpu_has_bf16():
            accelerator.print(
                "note: --dtype bf16-mixed on a CPU without bf16 instructions (AVX512-BF16, AMX): its bf16 products "
                "are emulated, 4-8x slower than float32 on the project's machine (docs/performance.md); "
                "--dtype float32 is faster here"
            )
    return accelerator


def cpu_has_bf16() -> bool:
    """Whether bf16 autocast on this CPU runs in hardware-backed kernels; without them it is emulated and slower
    than float32. A build that cannot tell answers yes: nothing is said where nothing is known."""
    from rlhfkit.models.decode import cpu_bf16_in_hardware

    return cpu_bf16_in_hardware() is not False


def _deepspeed_settings(accelerator: Accelerator, cfg) -> None:
    """DeepSpeed's config needs batch sizes, which Accelerate takes from a DataLoader; rlhfkit cuts its batches
    itself (the global batch over processes and micro-batches), so DeepSpeed's figures are only nominal. DeepSpeed
    clips gradients itself: it takes the stage's ``max_grad_norm`` (0: no clipping), not a second setting."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = 1
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = accelerator.num_processes
    ds["gradient_clipping"] = float(getattr(cfg, "max_grad_norm", None) or 0.0)


def _fsdp_on_cpu(accelerator: Accelerator, precision: str) -> None:
    """Apply a launch config's FSDP settings to CPU processes, as Accelerate does on GPUs.

    Accelerate enables FSDP only on accelerators and silently falls back to DDP on CPU processes, while torch's
    FSDP2 runs on CPU with gloo. So that the same config file shards on a laptop (and the sharded paths are
    tested without a GPU), the state is set here the way Accelerate sets it for a GPU launch."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or torch.cuda.is_available():
        return
    state = accelerator.state
    if state.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.FSDP):
        return
    if getattr(state, "fsdp_plugin", None) is None:
        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables `accelerate launch` sets
        if plugin.fsdp_version != 2:
            raise ValueError("FSDP on CPU processes needs fsdp_version: 2 (configs/accelerate/fsdp2.yaml)")
        if precision != "no":
            plugin.set_mixed_precision(precision)
        state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP


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
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) if max_grad_norm else None
    if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns the (already global) norm as a replicated DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return None if grad_norm is None else float(grad_norm)


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


def total_steps(cfg: RunPart, n_examples: int) -> int:
    """Optimiser steps of the run: ``max_steps``, or ``epochs`` passes of global batches."""
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = max(1, n_examples // cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * per_epoch))


def global_sums(accelerator: Accelerator, sums: dict[str, float]) -> dict[str, float]:
    """Each value summed over all processes, in one collective (every process must pass the same keys). Logged
    means are these sums divided once by a summed count, never a mean of per-process means."""
    if accelerator.num_processes == 1 or not sums:
        return dict(sums)
    keys = sorted(sums)
    vec = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(vec, "sum").tolist()))


def gather_rows(accelerator: Accelerator, tensor: torch.Tensor, pad_first: bool = False, pad_value=0):
    """Every process's (rows, ...) tensor concatenated in process order; processes may hold different numbers of
    rows, and along dim 1 each is padded to the widest (on the left with ``pad_first``)."""
    if accelerator.num_processes == 1:
        return tensor
    if tensor.dim() > 1:
        tensor = accelerator.pad_across_processes(tensor, dim=1, pad_index=pad_value, pad_first=pad_first)
    rows = accelerator.gather(torch.tensor([tensor.size(0)], device=tensor.device)).tolist()
    if max(rows) == 0:
        return tensor
    padded = accelerator.pad_across_processes(tensor.contiguous(), dim=0, pad_index=pad_value)
    blocks = accelerator.gather(padded).split(max(rows))
    return torch.cat([block[:n] for block, n in zip(blocks, rows)])


def gather_objects(accelerator: Accelerator, items: list) -> list:
    """Every process's list of picklable items, concatenated in process order."""
    if accelerator.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(list(items))


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
    """Restore the checkpoint at ``path``; one that cannot be read (a file cut short by a full disk, edited by
    hand) fails naming it and what to do, and nothing in the run folder is changed."""
    from safetensors import SafetensorError

    try:
        state = TrainerState(**json.loads((path / "trainer_state.json").read_text(encoding="utf-8")))
        accelerator.load_state(str(path))
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as e:
        detail = one_line(e)[:300]
        raise ValueError(
            f"{path}: this checkpoint cannot be read ({type(e).__name__}: {detail}); move it aside to resume from "
            "the one before, or run with --no-resume into another --output-dir"
        ) from None
    return state


def resume(run: RunFolder, accelerator: Accelerator, enabled: bool, fresh: TrainerState) -> TrainerState:
    """The state of the latest finished checkpoint in ``run`` (model, optimiser, scheduler and RNG restored
    in place), or ``fresh`` when there is none or resuming is off."""
    if enabled and (ckpt := run.latest_checkpoint()):
        accelerator.print(f"resumed from {ckpt}")
        return load_checkpoint(ckpt, accelerator)
    return fresh


class StepStop:
    """Ctrl-C or SIGTERM during training stops the run at the end of the step under way, where the model,
    optimiser, scheduler and trainer state agree (PPO's update is several optimiser steps before its step count
    moves: a checkpoint from inside it held a half-updated model under the old count, and the resumed run did
    that step's updates again). A second signal stops at once, without a checkpoint. The loop calls ``at_step_end``
    after each step; with several processes the request is summed over them there, so all stop at the same step
    (a process stopped alone would leave the others waiting in a collective)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.requested = self.forced = False

    def handle(self, signum, frame) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt(f"signal {signum}, a second time")
        self.requested = True
        self.accelerator.print(
            "\nstopping at the end of this step, with a checkpoint (again to stop at once, without one)"
        )

    def at_step_end(self) -> None:
        requested = self.requested
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(requested)], device=self.accelerator.device)
            requested = bool(self.accelerator.reduce(flag, "sum").item())
        if requested:
            raise KeyboardInterrupt("stopped at the end of a step")

    @contextmanager
    def installed(self):
        # A signal ignored when the run started (a background job's SIGINT) stays ignored.
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            if previous[s] is not signal.SIG_IGN:
                signal.signal(s, self.handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@contextmanager
def checkpoint_on_interrupt(
    run: RunFolder,
    accelerator: Accelerator,
    state: TrainerState,
    keep: int,
    progress: Progress,
    logger: MetricsLogger | None = None,
):
    """Around a training loop, yielding a ``StepStop`` whose ``at_step_end()`` the loop calls after each step:
    Ctrl-C or SIGTERM saves a checkpoint of ``state`` at the end of the step under way and re-raises
    KeyboardInterrupt, so the same command resumes; a second signal re-raises at once, saving nothing."""
    stop = StepStop(accelerator)
    try:
        with stop.installed():
            yield stop
    except KeyboardInterrupt:
        progress.close()
        if stop.forced:
            last = run.latest_checkpoint()
            accelerator.print(f"stopped inside step {state.step + 1}: no checkpoint of it; the last one is {last}")
        else:
            path = save_checkpoint(run, accelerator, state, keep)
            accelerator.print(f"interrupted at step {state.step}; checkpoint saved to {path}")
        if logger is not None:
            logger.close()
        raise


def save_final_model(accelerator: Accelerator, model, tokenizer, path: Path, merge_lora: bool = True) -> None:
    """The trained model in Hugging Face format, written by the main process. Under a sharding engine every process
    takes part in gathering the full weights, one tensor at a time, and only the main process keeps them."""
    from rlhfkit.models.load import base_causal_lm, save_model
    from rlhfkit.models.sharded import named_full_weights, sharding_of

    model = accelerator.unwrap_model(model)
    if sharding_of(model) is None:
        if accelerator.is_main_process:
            save_model(model, tokenizer, path, merge_lora=merge_lora)
        return
    merged = merge_lora or not hasattr(model, "peft_config")
    state = {}
    for name, tensor in named_full_weights(model, merge_lora=merged):
        if accelerator.is_main_process:
            state[name] = tensor.detach().to("cpu", copy=True)
    if accelerator.is_main_process:
        target = base_causal_lm(model) if merged else model
        target.save_pretrained(path, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(path)


def refuse_sharding(accelerator: Accelerator, stage: str) -> None:
    """Stages whose saving has not been written for sharded weights say so at the start, not after training."""
    from accelerate.utils import DistributedType

    zero3 = accelerator.distributed_type == DistributedType.DEEPSPEED and (
        accelerator.state.deepspeed_plugin.zero_stage == 3
    )
    if accelerator.distributed_type == DistributedType.FSDP or zero3:
        raise ValueError(
            f"{stage} keeps whole weights on every process: launch it with DDP or DeepSpeed ZeRO-2 "
            "(configs/accelerate/ddp.yaml, deepspeed-zero2.yaml), not FSDP or ZeRO-3; docs/scaling.md lists which "
            "stages shard"
        )


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
