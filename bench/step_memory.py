"""Where a DPO step's memory goes on the CPU: the bytes autograd keeps for the backward against the process's
resident memory, for full weights and LoRA, under each setting of the C allocator.

    python bench/step_memory.py                          # SmolLM2-135M, 8 pairs of 48 + 48 words
    python bench/step_memory.py --model tiny-4m --pairs 8

Each case is its own process (allocator settings hold per process, and PyTorch reads THP_MEM_ALLOC_ENABLE once):
it loads the model, runs one forward and backward of rlhfkit's DPO policy (``CompletionLogProbs``) over one
micro-batch, and prints what autograd saved (unique storages, through ``saved_tensors_hooks``), RSS after the
forward and after the backward above the RSS before them, the process's high-water mark, and its CPU seconds
(user and system; the system seconds are mostly page faults). The allocator settings:

- ``glibc``: glibc's default, whose mmap threshold rises to the size of the largest block freed (up to 32 MB);
- ``threshold 1 MB``: ``RLHFKIT_MMAP_THRESHOLD=1048576`` (stages fix the threshold when it is set);
- ``THP``: ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch aligns tensors of 2 MB and more to 2 MB and advises huge pages).

The gap between "saved" and "RSS after forward" is memory the heap holds but nothing uses (docs/performance.md,
"Memory on SmolLM2"). One torch thread.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "glibc": {},
    "threshold 1 MB": {"RLHFKIT_MMAP_THRESHOLD": "1048576"},
    "THP": {"THP_MEM_ALLOC_ENABLE": "1"},
}


def status_mb(key: str) -> float:
    return int(Path("/proc/self/status").read_text().split(f"{key}:")[1].split()[0]) / 1024


def one_step(model: str, pairs: int, words: int, lora: bool) -> None:
    """Runs in the child: one forward and backward, then prints one line of figures."""
    import torch

    from bench.dpo_rm import make_rows
    from rlhfkit.config.stages import DPOConfig
    from rlhfkit.data.pairs import collate_groups
    from rlhfkit.data.records import Comparison
    from rlhfkit.models.load import add_lora, load_causal_lm
    from rlhfkit.quiet import quiet_third_parties
    from rlhfkit.train.common import fix_mmap_threshold
    from rlhfkit.train.dpo import CompletionLogProbs, tokenize_all

    torch.set_num_threads(1)
    quiet_third_parties()
    fix_mmap_threshold()
    spec = "smollm2-135m-instruct" if model == "smollm2" else model
    lm, tokenizer = load_causal_lm(spec, "float32")
    groups = tokenize_all(tokenizer, [Comparison(**r) for r in make_rows(pairs, words)], 1024)
    if lora:
        lm = add_lora(lm, DPOConfig(model=spec, data="-", lora=True, lora_r=16, lora_alpha=32))
    policy = CompletionLogProbs(lm).train()
    packed = collate_groups(groups, tokenizer.pad_token_id, True)
    saved: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    before = status_mb("VmRSS")
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        logps = policy(packed)
    after_forward = status_mb("VmRSS") - before
    logps.sum().backward()
    after_backward = status_mb("VmRSS") - before
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures = [sum(saved.values()) / 2**20, after_forward, after_backward, status_mb("VmHWM")]
    shape = "x".join(map(str, packed.input_ids.shape))
    print("\t".join([*(f"{x:.0f}" for x in figures), f"{usage.ru_utime:.1f}", f"{usage.ru_stime:.1f}", shape]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny-4m"])
    ap.add_argument("--pairs", type=int, default=8, help="pairs in the micro-batch")
    ap.add_argument("--words", type=int, default=48)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return one_step(args.model, args.pairs, args.words, args.lora)
    print(f"{args.model}, one micro-batch of {args.pairs} pairs ({args.words} + {args.words} words), float32, 1 thread")
    print(f"{'weights':8s} {'allocator':15s} {'saved MB':>9s} {'RSS +fwd':>9s} {'RSS +bwd':>9s} {'peak MB':>8s} "
          f"{'user s':>7s} {'sys s':>6s}  batch (rows x tokens)")  # fmt: skip
    base_env = {k: v for k, v in os.environ.items() if k not in ("RLHFKIT_MMAP_THRESHOLD", "THP_MEM_ALLOC_ENABLE")}
    for lora in (False, True):
        for name in args.settings.split(","):
            env = {**base_env, **SETTINGS[name], "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
            command = [sys.executable, __file__, "--child", "--model", args.model, "--pairs", str(args.pairs)]
            command += ["--words", str(args.words)] + ["--lora"] * lora
            out = subprocess.run(command, env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{name}: the child failed:\n{out.stderr[-3000:]}")
            saved, fwd, bwd, peak, user, system, shape = out.stdout.strip().splitlines()[-1].split("\t")
            weights = "LoRA" if lora else "full"
            print(
                f"{weights:8s} {name:15s} {saved:>9s} {fwd:>9s} {bwd:>9s} {peak:>8s} {user:>7s} {system:>6s}  {shape}"
            )


if __name__ == "__main__":
    main()
