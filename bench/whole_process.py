"""Whole processes, start to exit: what a user waits for and the memory the run takes, rlhfkit against TRL.

    python bench/whole_process.py                                   # tiny-4m: sft, rm, dpo, ppo, ppo-2x4, grpo; 3 repeats
    python bench/whole_process.py --model smollm2 --cases dpo,dpo-lora,ppo,ppo-bf16 --repeats 1
    python bench/whole_process.py --cases dpo --repeats 5 --json out.json

Each run is its own process (``bench/whole_process_children.py``): ``ours`` is the ``rlhfkit`` command, ``trl``
the script a TRL user writes for the same run. Measured from outside by ``os.wait4``: the child's CPU seconds
(user + system, all threads; the system part is printed beside each run), wall seconds from spawn to exit, and its
peak RSS (``ru_maxrss``). The two sides alternate (who goes first flips every case and repeat) and the medians
over ``--repeats`` are printed, with the load average around each repeat. Every process runs one torch thread
(``OMP_NUM_THREADS=1``).

The same work on both sides: the same model folder (``tiny-4m`` saved once, or SmolLM2-135M-Instruct as
``rlhfkit models get`` installs it), the same rows (prompts, chosen and rejected of ``--words`` random words
each; SFT trains on prompt + chosen), batch 8, the same number of optimiser steps, no held-out evaluation,
the final model saved. Offline stages run one epoch (``--pairs`` / 8 steps). Online (``ppo``, ``grpo``):
``--online-steps`` steps of 8 completions of exactly 48 tokens, a programmatic reward, KL coefficient 0.05
against a frozen reference on both sides, one optimiser pass per rollout; TRL's GRPOTrainer (2 prompts x 4
generations) is the anchor of rlhfkit's PPO (GAE with a value head) on 8 prompts (``ppo``: four times the anchor's
prompt tokens) and on the anchor's own 2 prompts x 4 (``ppo-2x4``), and of its GRPO mode (2 x 4).
TRL otherwise runs with its defaults (gradient checkpointing on, fused AdamW, its tokenisation, its save);
rlhfkit with its own (metrics to JSONL and TensorBoard, a progress bar; reward-model normalisation off, the
one thing TRL has no counterpart for). Precision: float32 on both sides, or ``-bf16`` cases: bf16 autocast on
both (TRL ``bf16=True``, its default; rlhfkit ``--dtype bf16-mixed``). ``-lora`` cases: LoRA r 16, alpha 32,
every linear layer, on both.

The start-up breakdown (medians, CPU seconds) splits each process into imports, model load, data
preparation, reference pass, first optimiser step, the other steps, save, and the rest (see the children's
docstring for where each is stamped), and, for online runs, the sampling inside the steps ("rollout"); the
memory breakdown gives RSS after each phase and the peak.

``--ops`` adds one more run of each side per case under ``torch.profiler`` (not timed with the others: the
profiler costs time of its own) and prints where each process's CPU goes by kind of operator: matrix products
(the arithmetic both sides share, with the GFLOP each side multiplies and the rate it reached), attention, the
optimiser, every other operator, and what no operator accounts for (interpreter, imports, Python, the
profiler's own bookkeeping). Beside it,
this machine's own float32 matrix-product rate on one thread, measured in the same run, for the floor: a side
cannot run faster than its GFLOP at that rate.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.whole_process_children import OP_KINDS  # noqa: E402  (the children's kinds of operator, stdlib only)

CHILD = Path(__file__).with_name("whole_process_children.py")
BATCH, NEW_TOKENS, KL = 8, 48, 0.05


@dataclass
class Case:
    name: str
    stage: str  # sft, rm, dpo, ppo, grpo
    lora: bool = False
    bf16: bool = False
    group: int = 1  # online: completions per prompt on rlhfkit's side (TRL's GRPO always samples 2 prompts x 4)


CASES = {
    c.name: c
    for c in [
        Case("sft", "sft"),
        Case("rm", "rm"),
        Case("dpo", "dpo"),
        Case("ppo", "ppo"),
        Case("ppo-2x4", "ppo", group=4),
        Case("grpo", "grpo", group=4),
        Case("sft-lora", "sft", lora=True),
        Case("rm-lora", "rm", lora=True),
        Case("dpo-lora", "dpo", lora=True),
        Case("ppo-lora", "ppo", lora=True),
        Case("dpo-bf16", "dpo", bf16=True),
        Case("dpo-lora-bf16", "dpo", lora=True, bf16=True),
        Case("ppo-bf16", "ppo", bf16=True),
        Case("ppo-2x4-bf16", "ppo", bf16=True, group=4),
        Case("grpo-bf16", "grpo", bf16=True, group=4),
    ]
}
DEFAULT_CASES = {"tiny-4m": "sft,rm,dpo,ppo,ppo-2x4,grpo", "smollm2": "dpo,dpo-lora,ppo,ppo-bf16"}


@dataclass
class Setup:
    model: str
    pairs: Path
    demos: Path
    prompts: Path
    online_steps: int
    out: Path
    runs: list = field(default_factory=list)


def prepare(tmp: Path, model: str, n_pairs: int, words: int, online_steps: int) -> Setup:
    """The model folder both sides load, and the data files (same rows on both sides)."""
    from bench.dpo_rm import make_rows
    from rlhfkit.data.io import write_jsonl

    if model == "smollm2":
        from rlhfkit.models.hub import get_known_model

        folder = str(get_known_model("smollm2-135m-instruct"))
    else:
        from rlhfkit.models.load import load_causal_lm

        lm, tok = load_causal_lm(model, "float32")
        folder = str(tmp / "model")
        lm.save_pretrained(folder)
        tok.save_pretrained(folder)
    rows = make_rows(n_pairs, words)
    write_jsonl(tmp / "pairs.jsonl", rows)
    write_jsonl(tmp / "demos.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
    n_prompts = online_steps * BATCH  # PPO takes 8 prompts a step; enough for one pass either way
    write_jsonl(tmp / "prompts.jsonl", [{"prompt": r["prompt"]} for r in make_rows(n_prompts, words, seed=1)])
    return Setup(folder, tmp / "pairs.jsonl", tmp / "demos.jsonl", tmp / "prompts.jsonl", online_steps, tmp / "out")


def ours_command(case: Case, s: Setup, out: Path) -> list[str]:
    data = {"sft": s.demos, "rm": s.pairs, "dpo": s.pairs}.get(case.stage, s.prompts)
    args = ["--model", s.model, "--data", str(data), "--eval-fraction", "0", "--output-dir", str(out)]
    args += ["--batch-size", str(BATCH // case.group)]  # online: prompts a step, each sampled `group` times
    if case.stage in ("sft", "rm", "dpo"):
        args += ["--epochs", "1"]
    if case.stage == "rm":
        args += ["--normalize", "false"]
    if case.stage in ("ppo", "grpo"):
        reward = "bench.whole_process_children:count_the"
        args += ["--reward", reward, "--max-steps", str(s.online_steps), "--ppo-epochs", "1"]
        args += ["--max-new-tokens", str(NEW_TOKENS), "--kl-coef", str(KL), "--missing-eos-penalty", "null"]
    if case.stage == "grpo":
        args += ["--advantage", "grpo"]
    if case.group > 1:  # the anchor's rollouts: BATCH / group prompts, group completions each
        args += ["--group-size", str(case.group)]
    if case.lora:
        args += ["--lora"]
    if case.bf16:
        args += ["--dtype", "bf16-mixed"]
    return ["ours", case.stage, *args]


def trl_command(case: Case, s: Setup, out: Path) -> list[str]:
    data = {"sft": s.demos, "rm": s.pairs, "dpo": s.pairs}.get(case.stage, s.prompts)
    args = ["--model", s.model, "--data", str(data), "--out", str(out), "--batch", str(BATCH)]
    if case.stage in ("ppo", "grpo"):
        args += ["--steps", str(s.online_steps), "--group", "4", "--new-tokens", str(NEW_TOKENS), "--beta", str(KL)]
    args += ["--lora"] * case.lora + ["--bf16"] * case.bf16
    return ["trl", case.stage, *args]


def side_command(case: Case, side: str, s: Setup, out: Path, ours_args: str) -> list[str]:
    """The child's command for ``side`` ("ours" with the extra ``--ours-args``, or "trl")."""
    if side == "ours":
        return ours_command(case, s, out) + shlex.split(ours_args)
    return trl_command(case, s, out)


def side_label(case: Case, side: str) -> str:
    return f"{case.name} {'rlhfkit' if side == 'ours' else 'TRL'}"


def spawn(command: list[str], tmp: Path, tag: str, ops: bool = False) -> dict:
    """Run one child; its CPU seconds, wall seconds and peak RSS as the kernel counts them, and its phases
    (and with ``ops``, its operators' CPU by kind under the profiler)."""
    phases, op_file = tmp / f"{tag}.phases.json", tmp / f"{tag}.ops.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "WHOLE_PROCESS_PHASES": str(phases),
    }
    if ops:
        env["WHOLE_PROCESS_OPS"] = str(op_file)
    env["WHOLE_PROCESS_T0"] = repr(time.time())
    with open(tmp / f"{tag}.log", "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(CHILD), *command], stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time and peak RSS, from the kernel
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = (tmp / f"{tag}.log").read_text()[-3000:]
        raise RuntimeError(f"{' '.join(command[:2])} failed ({proc.returncode}):\n{tail}")
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "system_s": usage.ru_stime,  # of it, in the kernel (page faults, mostly)
        "wall_s": wall,
        "peak_mb": usage.ru_maxrss / 1024,
        "phases": json.loads(phases.read_text()) if phases.exists() else {},
        **({"ops": json.loads(op_file.read_text())} if ops else {}),
    }


def matmul_rate(seconds: float = 3.0) -> float:
    """This machine's float32 matrix-product rate on one thread, GFLOP/s: the best of products shaped like a
    small model's layers (a few thousand tokens by 256-1024 features)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = 0.0
    try:
        for m, k, n in ((2048, 256, 1024), (2048, 1024, 256), (2048, 576, 1536)):
            a, b = torch.randn(m, k), torch.randn(k, n)
            a @ b  # warm-up
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 3:
                a @ b
                count += 1
            best = max(best, 2 * m * k * n * count / (time.perf_counter() - start) / 1e9)
    finally:
        torch.set_num_threads(threads)
    return best


def breakdown(run: dict) -> dict[str, float]:
    """CPU seconds per phase of one run (they add up to the process's CPU seconds)."""
    marks, spent = run["phases"].get("marks", {}), run["phases"].get("spent", {})
    cpu = lambda name: marks[name]["cpu"] if name in marks else 0.0  # noqa: E731
    out = {"imports": cpu("imports")}
    for phase in ("model load", "data prep", "reference"):
        out[phase] = spent.get(phase, {}).get("cpu", 0.0)
    out["first step"] = cpu("first step") - cpu("train begin")
    out["other steps"] = cpu("train end") - cpu("first step")
    out["save"] = spent.get("save", {}).get("cpu", 0.0)
    out["teardown"] = run["cpu_s"] - cpu("exit") if "exit" in marks else 0.0  # after the exit handlers
    out["rest"] = run["cpu_s"] - sum(out.values())
    out["to first step"] = cpu("first step")
    out["rollout"] = spent.get("rollout", {}).get("cpu", 0.0)  # inside the steps: not part of the sum above
    return out


def memory(run: dict) -> dict[str, float]:
    """RSS (MB) after each phase and the high-water mark at the end of the first step; the process's peak."""
    marks = run["phases"].get("marks", {})
    out = {}
    for name, key in (
        ("imports", "imports"),
        ("model load", "after model load"),
        ("data prep", "after data prep"),
        ("reference", "after reference"),
        ("train begin", "train begin"),
    ):
        if key in marks:
            out[name] = marks[key]["rss_mb"]
    if "first step" in marks:
        out["first step peak"] = marks["first step"]["hwm_mb"]
    out["peak"] = run["peak_mb"]
    return out


def median_of(runs: list[dict], fn) -> dict[str, float]:
    rows = [fn(r) for r in runs]
    return {k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0]}


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-4m", choices=["tiny-4m", "smollm2"])
    ap.add_argument("--cases", help=f"comma-separated, of {', '.join(CASES)}; default per model: {DEFAULT_CASES}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, help="rows (pairs, demonstrations); default 256 (tiny-4m), 32 (smollm2)")
    ap.add_argument("--online-steps", type=int, help="PPO/GRPO steps; default 24 (tiny-4m), 4 (smollm2)")
    ap.add_argument("--words", type=int, default=48, help="words per prompt and per response")
    ap.add_argument("--json", help="also write every run's measurements here")
    ap.add_argument("--ours-args", default="", help="settings added to every rlhfkit command, e.g. '--grad-accum 2'")
    ap.add_argument("--ops", action="store_true", help="also one profiled run per side: CPU by kind of operator")
    args = ap.parse_args()
    from rlhfkit.quiet import quiet_third_parties

    quiet_third_parties()  # the setup saves the model: no "Writing model shards" bar in the bench's table
    small = args.model == "smollm2"
    pairs = args.pairs or (32 if small else 256)
    online = args.online_steps or (4 if small else 24)
    cases = [CASES[n] for n in (args.cases or DEFAULT_CASES[args.model]).split(",")]
    print(f"model {args.model}; {pairs} rows of {args.words}+{args.words} words, batch {BATCH}: {pairs // BATCH} steps")
    print(f"online: {online} steps of {BATCH} completions x {NEW_TOKENS} tokens; {args.repeats} repeats; 1 thread each")
    results: dict[str, dict[str, list]] = {c.name: {"ours": [], "trl": []} for c in cases}
    loads = []
    with tempfile.TemporaryDirectory(prefix="whole-process-") as d:
        tmp = Path(d)
        setup = prepare(tmp, args.model, pairs, args.words, online)
        for r in range(args.repeats):
            before = load_average()
            for i, case in enumerate(cases):
                sides = ["ours", "trl"] if (r + i) % 2 == 0 else ["trl", "ours"]
                for side in sides:
                    out = setup.out / f"{case.name}-{side}-{r}"
                    command = side_command(case, side, setup, out, args.ours_args)
                    run = spawn(command, tmp, f"{case.name}-{side}-{r}")
                    results[case.name][side].append(run)
                    print(
                        f"  repeat {r + 1} {case.name:10s} {side:5s} {run['cpu_s']:7.1f} s CPU "
                        f"({run['system_s']:5.1f} system) {run['wall_s']:7.1f} s wall {run['peak_mb']:6.0f} MB",
                        flush=True,
                    )
            loads.append((before, load_average()))
            print(f"repeat {r + 1}: load average (1/5/15 min) {before} before, {loads[-1][1]} after", flush=True)
        profiled = {}
        if args.ops:
            for case in cases:
                for side in ("ours", "trl"):
                    command = side_command(case, side, setup, setup.out / f"{case.name}-{side}-ops", args.ours_args)
                    profiled[case.name, side] = spawn(command, tmp, f"{case.name}-{side}-ops", ops=True)
                    print(f"  profiled {case.name:10s} {side:5s}", flush=True)
    report(cases, results, loads)
    if profiled:
        report_ops(cases, results, profiled, matmul_rate())
    if args.json:
        everything = {"args": vars(args), "loads": loads, "results": results}
        everything["profiled"] = {f"{name} {side}": run for (name, side), run in profiled.items()}
        Path(args.json).write_text(json.dumps(everything, indent=1))


def report(cases: list[Case], results: dict, loads: list) -> None:
    n = len(next(iter(results.values()))["ours"])
    print(f"\nWhole process, medians of {n} (ratios: TRL / rlhfkit for time, rlhfkit / TRL for memory)")
    header = f"{'case':11s}{'CPU s rlhfkit':>14s}{'TRL':>8s}{'ratio':>8s}{'wall s':>9s}{'TRL':>8s}{'ratio':>8s}"
    print(header + f"{'peak MB':>9s}{'TRL':>7s}{'ratio':>7s}{'CPU ratio range':>17s}")
    for case in cases:
        ours, trl = results[case.name]["ours"], results[case.name]["trl"]
        med = {
            side: {k: statistics.median(r[k] for r in runs) for k in ("cpu_s", "wall_s", "peak_mb")}
            for side, runs in (("ours", ours), ("trl", trl))
        }
        o, t = med["ours"], med["trl"]
        per_repeat = sorted(b["cpu_s"] / a["cpu_s"] for a, b in zip(ours, trl))
        print(
            f"{case.name:11s}{o['cpu_s']:14.1f}{t['cpu_s']:8.1f}{t['cpu_s'] / o['cpu_s']:7.2f}x"
            f"{o['wall_s']:9.1f}{t['wall_s']:8.1f}{t['wall_s'] / o['wall_s']:7.2f}x"
            f"{o['peak_mb']:9.0f}{t['peak_mb']:7.0f}{o['peak_mb'] / t['peak_mb']:7.2f}"
            f"{per_repeat[0]:10.2f}-{per_repeat[-1]:.2f}x"
        )
    print("\nStart-up breakdown, CPU s (medians): imports, model load, data prep, reference pass, first step, ...")
    names = ["imports", "model load", "data prep", "reference", "first step", "other steps", "save", "teardown"]
    names.append("rest")
    print(f"{'case':16s}" + "".join(f"{n:>12s}" for n in names + ["to 1st step", "(rollout)"]))
    for case in cases:
        for side in ("ours", "trl"):
            b = median_of(results[case.name][side], breakdown)
            label = side_label(case, side)
            print(f"{label:16s}" + "".join(f"{b[k]:12.2f}" for k in names + ["to first step", "rollout"]))
    print("\nMemory, RSS MB after each phase (medians)")
    names = ["imports", "model load", "data prep", "reference", "train begin", "first step peak", "peak"]
    print(f"{'case':16s}" + "".join(f"{n:>16s}" for n in names))
    for case in cases:
        for side in ("ours", "trl"):
            m = median_of(results[case.name][side], memory)
            label = side_label(case, side)
            print(f"{label:16s}" + "".join(f"{m[k]:16.0f}" if k in m else f"{'-':>16s}" for k in names))
    print("load averages around the repeats: " + "; ".join(f"{a} -> {b}" for a, b in loads))


def report_ops(cases: list[Case], results: dict, profiled: dict, rate: float) -> None:
    """Where each profiled run's CPU went by kind of operator, and the rest ("no operator": interpreter, imports,
    Python between operators, the profiler's own bookkeeping); the timed runs' median beside it. The profiler
    slows a run (most where operators are many and small: decoding), so its seconds are not the timed ones; the
    GFLOP are counted, not timed, and "matmul floor s" is them at this machine's rate: no run of that work is
    faster."""
    print(
        f"\nWhere the CPU goes, one profiled run per side (CPU s; this machine's float32 matmul, one thread: "
        f"{rate:.1f} GFLOP/s)"
    )
    header = f"{'case':16s}{'timed':>8s}{'profiled':>10s}" + "".join(f"{k:>11s}" for k in OP_KINDS)
    print(header + f"{'no operator':>13s}{'matmul GFLOP':>14s}{'its GFLOP/s':>13s}{'matmul floor s':>16s}")
    for case in cases:
        gflop = {}
        for side in ("ours", "trl"):
            run = profiled[case.name, side]
            ops = run["ops"]
            timed = statistics.median(r["cpu_s"] for r in results[case.name][side])
            gflop[side] = ops["matmul"]["gflop"]
            rest = run["cpu_s"] - sum(ops[k]["cpu_s"] for k in OP_KINDS)
            label = side_label(case, side)
            achieved = gflop[side] / ops["matmul"]["cpu_s"] if ops["matmul"]["cpu_s"] else 0.0
            print(
                f"{label:16s}{timed:8.1f}{run['cpu_s']:10.1f}"
                + "".join(f"{ops[k]['cpu_s']:11.2f}" for k in OP_KINDS)
                + f"{rest:13.2f}{gflop[side]:14.0f}{achieved:13.1f}{gflop[side] / rate:16.2f}"
            )
        if gflop["ours"]:
            print(f"{'':16s}matrix-product work, TRL / rlhfkit: {gflop['trl'] / gflop['ours']:.2f}x")


if __name__ == "__main__":
    main()
