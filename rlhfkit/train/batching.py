"""Which examples a step trains on, and in what pieces: the global batches of a run, each process's strided share
of one, and the micro-batches (pieces) that share runs in on the CPU.

``batch_size`` is the global batch (all processes together). Each process takes a strided share of every global
batch (``split_micro``), so two processes run the same pieces as one with the same global batch
(tests/test_multiprocess.py). On the CPU a share is cut into pieces that bound the activations held for the
backward (``cpu_micro_batch``); PPO's rollout rows into pieces of ``CPU_MICRO_ROWS`` or fewer (``micro_rows``).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator

import torch
from accelerate import Accelerator


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


# Examples per micro-batch on each CPU process when grad_accum is not set: the activations held for the backward
# pass shrink with the micro-batch, but each piece has a fixed cost. On the demo's model (SFT, batch 32, 60 steps,
# one process) pieces of 4 took 56-58 s of CPU, pieces of 8 35.6 s, the whole batch 27-30 s; 8 keeps most of the
# memory saving for a fifth of the time (docs/performance.md, "Micro-batches").
CPU_MICRO_BATCH = 8
# On a larger model a piece's matrix products are big enough that its fixed cost does not count, and its
# activations do: a Llama keeps about ACTIVATION_BYTES per token per unit of hidden size x layers for the
# backward (108 measured on SmolLM2-135M, 120 on tiny-4m, `python bench/step_memory.py`), and glibc's heap holds
# freed temporaries of the same size on top. So pieces are halved until their activations fit ACTIVATION_BUDGET:
# SmolLM2 DPO on 8 pairs of 48 + 48 words ran in pieces of 4 pairs at 0.75 of TRL's peak memory instead of 1.26
# (LoRA), and no slower (docs/performance.md, "Memory on SmolLM2").
ACTIVATION_BYTES = 110
ACTIVATION_BUDGET = 2 << 30
# Rows per piece of a PPO mini-batch on the CPU (batching.micro_rows); samples of one prompt share its forward.
CPU_MICRO_ROWS = 4
# PPO keeps its reference model and the rollout resident beside a piece's activations, where DPO has computed its
# reference log-probs before training and freed the model: PPO's pieces get a third of the budget. SmolLM2 PPO
# (8 rows of ~165 tokens) then runs in pieces of 2 rows and peaked at 0.95 of TRL GRPO's memory instead of 1.07, at
# the same speed; its GRPO mode (a prompt and its 4 samples, ~310 tokens) keeps pieces of 4 (docs/performance.md,
# "Memory on SmolLM2").
PPO_ACTIVATION_BUDGET = ACTIVATION_BUDGET // 3


def model_width(model: torch.nn.Module) -> int:
    """hidden size x layers of a transformers model (0 when its config does not say): what a token's activations
    scale with."""
    config = getattr(model, "config", None)
    return getattr(config, "hidden_size", 0) * getattr(config, "num_hidden_layers", 0)


def fitting_piece(size: int, tokens_of: Callable[[int], int], width: int, budget: int) -> int:
    """``size`` halved while a piece of that many items (``tokens_of(n)`` tokens, on a model of ``width``) would keep
    more than ``budget`` bytes of activations for the backward; never below 1."""
    while size > 1 and tokens_of(size) * width * ACTIVATION_BYTES > budget:
        size //= 2
    return size


def cpu_micro_batch(model: torch.nn.Module, lengths: list[int]) -> int:
    """Examples per CPU piece for ``model`` on examples of ``lengths`` tokens: ``CPU_MICRO_BATCH``, halved while
    a piece of examples at the 90th-percentile length would keep more than ``ACTIVATION_BUDGET`` for the backward.
    Every process computes it from the same model and data, so all cut their batches alike."""
    if not lengths:
        return CPU_MICRO_BATCH
    typical = sorted(lengths)[int(0.9 * (len(lengths) - 1))]
    return fitting_piece(CPU_MICRO_BATCH, lambda n: n * typical, model_width(model), ACTIVATION_BUDGET)


def check_global_batch(
    accelerator: Accelerator,
    batch_size: int,
    grad_accum: int | None = 1,
    name: str = "batch_size",
    micro_batch: int = CPU_MICRO_BATCH,
):
    """Refuse a global batch too small to give every process and micro-batch at least one example. ``micro_batch``:
    the CPU piece the trainer cuts (``cpu_micro_batch``), which sets the number of micro-batches when ``grad_accum``
    is unset (``resolve_grad_accum``): smaller pieces make more of them, so the trainer's own is counted."""
    from accelerate.utils import DistributedType

    accum = resolve_grad_accum(accelerator, batch_size, grad_accum, micro_batch)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accum > 1:
        raise ValueError(
            "under DeepSpeed set grad_accum 1 (DeepSpeed steps the optimiser inside every backward pass); "
            "use more processes, or a smaller batch_size, for the memory"
        )
    need = accelerator.num_processes * accum
    if batch_size < need:
        pieces = f" (unset: pieces of up to {micro_batch} examples on the CPU)" if grad_accum is None else ""
        raise ValueError(
            f"{name} {batch_size} is the global batch (all processes together): with {accelerator.num_processes} "
            f"processes and grad_accum {accum}{pieces} it must be at least {need}"
        )


def resolve_grad_accum(
    accelerator: Accelerator, batch_size: int, grad_accum: int | None, micro_batch: int = CPU_MICRO_BATCH
) -> int:
    """Micro-batches per process for a global batch of ``batch_size``. Unset (None): pieces of ``micro_batch``
    examples per CPU process (``CPU_MICRO_BATCH``, or fewer for a large model: ``cpu_micro_batch``), one piece
    elsewhere and under DeepSpeed (which steps inside every backward). Unset, the global batch falls into
    ``P * ceil(B / mP)`` strided pieces, which is ``B / m`` whatever P when B is a multiple of mP: then 1 and P
    processes run the very same pieces (tests/test_multiprocess.py relies on it). Other sizes give other pieces
    of the same examples; every loss but KTO's (whose default is 1) is a sum over examples divided once by a
    global count, so the step is still the same up to rounding."""
    if grad_accum is not None:
        return grad_accum
    from accelerate.utils import DistributedType

    if accelerator.device.type != "cpu" or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return 1
    return max(1, math.ceil(batch_size / (accelerator.num_processes * micro_batch)))


def split_micro(
    batch: list[int], accelerator: Accelerator, grad_accum: int | None, micro_batch: int = CPU_MICRO_BATCH
) -> list[list[int]]:
    """This process's share of a global batch, cut into ``grad_accum`` micro-batches (None: ``resolve_grad_accum``
    with pieces of ``micro_batch`` examples), both strided: micro-batch m of process p is
    ``batch[m + p * g :: P * g]``, so micro-batch m of all processes together is ``batch[m::g]`` whatever P (what
    KTO's batch estimate of z0 is taken over). The global batch falls into the same P x g pieces however they are
    spread (2 processes x 1 = 1 process x 2), and, batches being sorted by length under ``group_by_length``, every
    process gets as many long examples as short ones."""
    if grad_accum is None:
        grad_accum = resolve_grad_accum(accelerator, len(batch), None, micro_batch)
    P, g = accelerator.num_processes, grad_accum
    return [m for m in (batch[i + accelerator.process_index * g :: P * g] for i in range(g)) if m]


def eval_chunks(n: int, accelerator: Accelerator, batch_size: int) -> list[list[int]]:
    """This process's strided share of ``n`` held-out items in batches, as many batches on every process (the
    last ones may be empty): under a sharding engine every forward is collective, so a process that ran one
    batch fewer would leave the others waiting. An empty batch is run on item 0 and its result dropped."""
    mine = list(range(accelerator.process_index, n, accelerator.num_processes))
    batches = math.ceil(math.ceil(n / accelerator.num_processes) / batch_size)
    return [mine[b * batch_size : (b + 1) * batch_size] for b in range(batches)]


def shard_range(n: int, accelerator: Accelerator) -> range:
    """This process's contiguous share of ``n`` rows (shares differ in size by at most one)."""
    p, P = accelerator.process_index, accelerator.num_processes
    return range(n * p // P, n * (p + 1) // P)


def micro_rows(
    rows: torch.Tensor, device: torch.device, width: int = 0, piece_tokens: Callable[[torch.Tensor], int] | None = None
) -> list[torch.Tensor]:
    """A mini-batch of rollout rows as the pieces to run forward and backward one at a time: on the CPU pieces of
    ``CPU_MICRO_ROWS`` rows, halved while the first piece's tokens (``piece_tokens(rows)``, on a model of ``width``,
    ``model_width``) would keep more than ``PPO_ACTIVATION_BUDGET``; in row order so that the samples of one prompt
    stay together (they then share the prompt's forward, ``rlhfkit.rollout_forward.shared_prompt_forward``).
    Elsewhere the whole mini-batch."""
    if torch.device(device).type != "cpu":
        return [rows]
    ordered, size = rows.sort().values, CPU_MICRO_ROWS
    if piece_tokens is not None:
        size = fitting_piece(size, lambda n: piece_tokens(ordered[:n]), width, PPO_ACTIVATION_BUDGET)
    return list(ordered.split(size))
