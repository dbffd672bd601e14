"""DPO and reward-model training speed and peak memory: rlhfkit against TRL, measured in the same run.

    python bench/dpo_rm.py                    # CPU, tiny-4m (hidden 256, 4 layers), batch 8, 48-word texts
    python bench/dpo_rm.py --repeats 3 --steps 30           # steadier figures on a shared machine

What is compared, and how (see also docs/performance.md):
- the same model folder (``tiny-4m`` saved once; TRL loads policy and reference from it by path, its default),
  the same pairs, the same batch (8 pairs), the same number of optimiser steps, float32 on both sides, and the
  same number of torch threads in every process (``--threads``, default 1: stable under other load);
- TRL runs with its defaults (reference = a second model copy, gradient checkpointing on, fused AdamW, padded
  chosen/rejected rows, LM head applied only at completion tokens) except what it needs to run on the CPU
  without evaluation, logging or saving: ``use_cpu``, ``bf16=False`` (first run), ``report_to="none"``,
  ``save_strategy="no"``;
- rlhfkit runs its defaults: reference ``precomputed``; its one-off reference pass over the pairs is timed
  on its own and charged to rlhfkit's time (as if the run were one epoch over exactly these pairs);
- each trainer runs in its own subprocess, and the same clock is on both: a stamp (wall time and the
  process's CPU time) at the end of every optimiser step (TRL: a ``TrainerCallback.on_step_end``;
  rlhfkit: ``rlhfkit.runs.Progress.update``, called once per optimiser step, wrapped in the child process).
  Throughput = pairs / time over the ``--steps`` steps after ``--warmup`` (start-up, data preparation and the
  first steps excluded). Wall time is the headline; CPU time is printed too because it moves much less when
  other jobs share the cores;
- peak memory: each process's RSS high-water mark (``ru_maxrss``: model, optimiser, activations, and the
  Python/torch baseline each process pays alike), read when training ends;
- precision: both sides in float32 (TRL ``bf16=False``), and again both in bf16 autocast (TRL's own default,
  ``bf16=True``; rlhfkit ``dtype="bf16-mixed"``, float32 weights);
- epochs: the reference pass is charged as for one epoch, and as for three (TRL's default
  ``num_train_epochs``: rlhfkit makes the pass once per run, so a third of it per epoch);
- ``--repeats`` runs everything again, alternating which side goes first; the ratios of each repeat and
  their median are printed. Ratios are comparable within one run only (other load moves both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_rows(n: int, words: int = 48, seed: int = 0) -> list[dict]:
    from rlhfkit.toy.world import CAPITALS, NUMBER_WORDS

    vocab = sorted(set(CAPITALS) | set(CAPITALS.values()) | set(NUMBER_WORDS) | {"the", "answer", "is", "what", "of"})
    rng = random.Random(seed)
    text = lambda: " ".join(rng.choice(vocab) for _ in range(words))  # noqa: E731
    return [{"prompt": text() + " ?", "chosen": " " + text(), "rejected": " " + text()} for _ in range(n)]


def prepare(folder: Path, model: str, n_pairs: int) -> None:
    """A saved model folder (so TRL loads model and reference by path, its default) and the pairs."""
    from rlhfkit.data.io import write_jsonl
    from rlhfkit.models.load import load_causal_lm

    lm, tok = load_causal_lm(model, "float32")
    lm.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    write_jsonl(folder / "pairs.jsonl", make_rows(n_pairs))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def throughput(stamps: list[tuple[float, float]], warmup: int, steps: int, batch: int, extra=(0.0, 0.0)) -> dict:
    """pairs/s over the steps after the warm-up, by wall and by CPU time; ``extra`` (wall, cpu) is added."""
    (w0, c0), (w1, c1) = stamps[warmup - 1], stamps[warmup + steps - 1]
    return {
        "pairs_per_s": steps * batch / (w1 - w0 + extra[0]),
        "pairs_per_cpu_s": steps * batch / (c1 - c0 + extra[1]),
    }


def trl_run(kind: str, folder: Path, steps: int, warmup: int, batch: int, bf16: bool = False) -> dict:
    import datasets
    from transformers import AutoTokenizer, TrainerCallback

    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows)
    tok = AutoTokenizer.from_pretrained(folder / "model")
    stamps: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(stamp())

    common = dict(
        output_dir=str(folder / f"trl-{kind}"),
        per_device_train_batch_size=batch,
        max_steps=warmup + steps,
        bf16=bf16,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        use_cpu=True,
        disable_tqdm=True,
    )
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=str(folder / "model"),
            processing_class=tok,
            train_dataset=ds,
            args=DPOConfig(**common),
            callbacks=[Clock()],
        )
    else:
        from trl import RewardConfig, RewardTrainer

        trainer = RewardTrainer(
            model=str(folder / "model"),
            processing_class=tok,
            train_dataset=ds,
            args=RewardConfig(**common),
            callbacks=[Clock()],
        )
    trainer.train()
    return {**throughput(stamps, warmup, steps, batch), "peak_mb": peak_mb()}


def ours_run(
    kind: str, folder: Path, steps: int, warmup: int, batch: int, reference: str = "precomputed", bf16: bool = False
) -> dict:
    import torch

    from rlhfkit.runs import Progress

    stamps: list[tuple[float, float]] = []
    update = Progress.update

    def clocked_update(self, *args, **kwargs):  # called once at the end of every optimiser step
        stamps.append(stamp())
        return update(self, *args, **kwargs)

    Progress.update = clocked_update
    out = Path(tempfile.mkdtemp(dir=folder, prefix=f"ours-{kind}-"))
    common = dict(
        model=str(folder / "model"),
        data=str(folder / "pairs.jsonl"),
        eval_fraction=0.0,
        batch_size=batch,
        max_steps=warmup + steps,
        log_every=10_000,
        progress=False,
        report_to=["jsonl"],
        output_dir=str(out / "run"),
        dtype="bf16-mixed" if bf16 else "float32",
    )
    extra = (0.0, 0.0)
    if kind == "dpo":
        from rlhfkit.train.dpo import DPOConfig, run

        run(DPOConfig(reference=reference, **common))
        peak = peak_mb()
        if reference == "precomputed":  # time the one-off reference pass again, alone, to charge it
            from rlhfkit.data.io import read_records
            from rlhfkit.models.load import load_causal_lm
            from rlhfkit.train.dpo import CompletionLogProbs, reference_logps, tokenize_all

            lm, tok = load_causal_lm(str(folder / "model"), "float32")
            records = read_records(folder / "pairs.jsonl", "comparison")[0][: (warmup + steps) * batch]
            groups = tokenize_all(tok, records, 512)
            w0, c0 = stamp()
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                reference_logps(CompletionLogProbs(lm).eval(), groups, tok.pad_token_id, True, batch, "cpu")
            w1, c1 = stamp()
            share = steps / (warmup + steps)  # the timed steps' share of the pairs
            extra = ((w1 - w0) * share, (c1 - c0) * share)
    else:
        from rlhfkit.train.reward import RewardConfig, run

        run(RewardConfig(normalize=False, **common))
        peak = peak_mb()
    # TRL's default num_train_epochs is 3: over three epochs the one-off reference pass is paid once.
    three = throughput(stamps, warmup, steps, batch, (extra[0] / 3, extra[1] / 3))
    return {
        **throughput(stamps, warmup, steps, batch, extra),
        "peak_mb": peak,
        "ref_pass_s": extra[0],
        "pairs_per_s_3_epochs": three["pairs_per_s"],
        "pairs_per_cpu_s_3_epochs": three["pairs_per_cpu_s"],
    }


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    if args.child == "trl":
        result = trl_run(args.kind, folder, args.steps, args.warmup, args.batch, args.bf16)
    else:
        result = ours_run(args.kind, folder, args.steps, args.warmup, args.batch, args.reference, args.bf16)
    print("RESULT " + json.dumps(result))


def spawn(who: str, kind: str, folder: Path, args, reference: str = "precomputed", bf16: bool = False) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        who,
        "--kind",
        kind,
        "--folder",
        str(folder),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--reference",
        reference,
        "--threads",
        str(args.threads),
    ] + (["--bf16"] if bf16 else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{who} {kind} failed:\n{proc.stderr[-3000:]}")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def one_repeat(folder: Path, args, ours_first: bool) -> dict:
    res = {}
    for kind in ("dpo", "rm"):
        order = ["ours", "trl"] if ours_first else ["trl", "ours"]
        for who in order:
            res[(who, kind)] = spawn(who, kind, folder, args)
            if who == "ours" and kind == "dpo":
                res[("ours", "dpo-copy")] = spawn("ours", "dpo", folder, args, reference="copy")
            if kind == "dpo":  # both in bf16 autocast, TRL's own default precision
                res[(who, "dpo-bf16")] = spawn(who, "dpo", folder, args, bf16=True)
    return res


def report(res: dict) -> dict[str, float]:
    d, c, m = res[("ours", "dpo")], res[("ours", "dpo-copy")], res[("ours", "rm")]
    td, tm, tb = res[("trl", "dpo")], res[("trl", "rm")], res[("trl", "dpo-bf16")]
    return {
        "dpo": d["pairs_per_s"] / td["pairs_per_s"],
        "dpo_cpu": d["pairs_per_cpu_s"] / td["pairs_per_cpu_s"],
        "dpo_3_epochs": d["pairs_per_s_3_epochs"] / td["pairs_per_s"],
        "dpo_3_epochs_cpu": d["pairs_per_cpu_s_3_epochs"] / td["pairs_per_cpu_s"],
        "dpo_bf16": res[("ours", "dpo-bf16")]["pairs_per_s"] / tb["pairs_per_s"],
        "dpo_bf16_3_epochs": res[("ours", "dpo-bf16")]["pairs_per_s_3_epochs"] / tb["pairs_per_s"],
        "dpo_copy": c["pairs_per_s"] / td["pairs_per_s"],
        "rm": m["pairs_per_s"] / tm["pairs_per_s"],
        "rm_cpu": m["pairs_per_cpu_s"] / tm["pairs_per_cpu_s"],
        "mem_dpo": d["peak_mb"] / td["peak_mb"],
        "mem_dpo_copy": c["peak_mb"] / td["peak_mb"],
        "mem_rm": m["peak_mb"] / tm["peak_mb"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-4m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (1: stable under other load)")
    ap.add_argument("--repeats", type=int, default=1, help="run everything this many times, alternating who goes first")
    ap.add_argument("--child", choices=["trl", "ours"])
    ap.add_argument("--kind", choices=["dpo", "rm"])
    ap.add_argument("--folder")
    ap.add_argument("--reference", default="precomputed")
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    print(
        f"model {args.model}, batch {args.batch} pairs, {args.steps} timed steps after {args.warmup} warm-up steps, "
        f"{args.threads} torch thread(s) per process"
    )
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, args.model, (args.steps + args.warmup) * args.batch)
        for r in range(args.repeats):
            before = load_average()
            res = one_repeat(folder, args, ours_first=r % 2 == 1)
            print(f"\nrepeat {r + 1} (load average 1/5/15 min: {before} before, {load_average()} after)")
            print(f"{'':20s}{'pairs/s':>10s}{'pairs/CPU-s':>13s}{'peak RSS MB':>13s}")
            for (who, kind), x in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])):
                print(f"{who + ' ' + kind:20s}{x['pairs_per_s']:10.2f}{x['pairs_per_cpu_s']:13.2f}{x['peak_mb']:13.0f}")
            q = report(res)
            ratios.append(q)
            print(
                f"DPO pairs/s rlhfkit/TRL: {q['dpo']:.2f}x wall, {q['dpo_cpu']:.2f}x CPU (reference=copy: {q['dpo_copy']:.2f}x)"
            )
            print(
                f"DPO over 3 epochs (TRL's default num_train_epochs; the reference pass paid once): "
                f"{q['dpo_3_epochs']:.2f}x wall, {q['dpo_3_epochs_cpu']:.2f}x CPU"
            )
            print(
                f"DPO, both in bf16 autocast (TRL's default precision; rlhfkit --dtype bf16-mixed): "
                f"{q['dpo_bf16']:.2f}x wall, 3 epochs {q['dpo_bf16_3_epochs']:.2f}x"
            )
            print(f"RM  pairs/s rlhfkit/TRL: {q['rm']:.2f}x wall, {q['rm_cpu']:.2f}x CPU")
            print(f"peak RSS rlhfkit/TRL: DPO {q['mem_dpo']:.2f} (copy {q['mem_dpo_copy']:.2f}), RM {q['mem_rm']:.2f}")
    if args.repeats > 1:
        med = {k: statistics.median(q[k] for q in ratios) for k in ratios[0]}
        print(
            f"\nmedian of {args.repeats} repeats: DPO {med['dpo']:.2f}x wall ({med['dpo_cpu']:.2f}x CPU; "
            f"3 epochs {med['dpo_3_epochs']:.2f}x, {med['dpo_3_epochs_cpu']:.2f}x CPU; both bf16 {med['dpo_bf16']:.2f}x, 3 epochs {med['dpo_bf16_3_epochs']:.2f}x), "
            f"RM {med['rm']:.2f}x wall ({med['rm_cpu']:.2f}x CPU), "
            f"peak RSS DPO {med['mem_dpo']:.2f}, RM {med['mem_rm']:.2f}"
        )


if __name__ == "__main__":
    main()
