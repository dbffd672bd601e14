"""DPO and reward-model training speed and peak memory: rlhfkit against TRL, measured in the same run.

    python bench/dpo_rm.py                    # CPU, tiny-4m (hidden 256, 4 layers), batch 8, 48-word texts
    python bench/dpo_rm.py --steps 30 --warmup 3 --model smollm2-135m-instruct   # on a GPU machine

Each trainer runs in its own subprocess, so each peak-memory figure is that process's own RSS high-water
mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``: model, optimiser, activations, and the Python/torch
baseline that every process pays alike). Throughput is pairs per second over the steps after ``--warmup``
(start-up, data preparation and the first steps excluded). rlhfkit's default reference is ``precomputed``:
its one-off pass over the pairs is timed and charged to rlhfkit's throughput (as if the run were one
epoch over exactly these pairs). TRL runs with its defaults (reference = a second model copy, gradient
checkpointing on, padded chosen/rejected rows), except bf16 off, no eval, report_to none, batch 8.
Each process uses ``--threads`` torch threads (default 1, the same for both sides). Prints the ratios; ratios are comparable within one run only (other load on the machine moves both).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
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


def trl_run(kind: str, folder: Path, steps: int, warmup: int, batch: int) -> dict:
    import datasets
    from transformers import AutoTokenizer, TrainerCallback

    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows)
    tok = AutoTokenizer.from_pretrained(folder / "model")
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    common = dict(output_dir=str(folder / f"trl-{kind}"), per_device_train_batch_size=batch, max_steps=warmup + steps,
                  bf16=False, report_to="none", save_strategy="no", logging_steps=10_000, use_cpu=True,
                  disable_tqdm=True)
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=str(folder / "model"), processing_class=tok, train_dataset=ds,
                             args=DPOConfig(**common), callbacks=[Clock()])
    else:
        from trl import RewardConfig, RewardTrainer

        trainer = RewardTrainer(model=str(folder / "model"), processing_class=tok, train_dataset=ds,
                                args=RewardConfig(**common), callbacks=[Clock()])
    trainer.train()
    return {"pairs_per_s": steps * batch / (stamps[-1] - stamps[warmup - 1]), "peak_mb": peak_mb()}


def ours_run(kind: str, folder: Path, steps: int, warmup: int, batch: int, reference: str = "precomputed") -> dict:
    from rlhfkit.runs import read_metrics

    out = Path(tempfile.mkdtemp(dir=folder, prefix=f"ours-{kind}-"))
    common = dict(model=str(folder / "model"), data=str(folder / "pairs.jsonl"), eval_fraction=0.0, batch_size=batch,
                  max_steps=warmup + steps, log_every=warmup, progress=False, report_to=["jsonl"],
                  output_dir=str(out / "run"), dtype="float32")
    extra = 0.0
    if kind == "dpo":
        from rlhfkit.train.dpo import DPOConfig, run

        t0 = time.perf_counter()
        run(DPOConfig(reference=reference, **common))
        if reference == "precomputed":  # time the one-off reference pass again, alone, to charge it
            from rlhfkit.data.io import read_records
            from rlhfkit.models.load import load_causal_lm
            from rlhfkit.train.dpo import CompletionLogProbs, reference_logps, tokenize_all

            lm, tok = load_causal_lm(str(folder / "model"), "float32")
            records = read_records(folder / "pairs.jsonl", "comparison")[0][:(warmup + steps) * batch]
            groups = tokenize_all(tok, records, 512)
            t1 = time.perf_counter()
            reference_logps(CompletionLogProbs(lm).eval(), groups, tok.pad_token_id, True, batch, "cpu")
            extra = (time.perf_counter() - t1) * steps / (warmup + steps)  # the share of the timed steps' pairs
        del t0
    else:
        from rlhfkit.train.reward import RewardConfig, run

        run(RewardConfig(normalize=False, **common))
    windows = [m for m in read_metrics(out / "run") if m["step"] > warmup and "train/loss" in m]
    key = "train/pairs_per_s" if kind == "dpo" else "train/groups_per_s"
    pairs = sum((m["step"] - p["step"]) * batch for p, m in zip([{"step": warmup}] + windows[:-1], windows))
    seconds = sum((m["step"] - p["step"]) * batch / m[key] for p, m in zip([{"step": warmup}] + windows[:-1], windows))
    return {"pairs_per_s": pairs / (seconds + extra), "peak_mb": peak_mb(), "ref_pass_s": extra}


def child(args) -> None:
    folder = Path(args.folder)
    if args.child == "trl":
        result = trl_run(args.kind, folder, args.steps, args.warmup, args.batch)
    else:
        result = ours_run(args.kind, folder, args.steps, args.warmup, args.batch, args.reference)
    print("RESULT " + json.dumps(result))


def spawn(who: str, kind: str, folder: Path, args, reference: str = "precomputed") -> dict:
    cmd = [sys.executable, __file__, "--child", who, "--kind", kind, "--folder", str(folder), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--reference", reference]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{who} {kind} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-4m")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (1: stable under other load)")
    ap.add_argument("--child", choices=["trl", "ours"])
    ap.add_argument("--kind", choices=["dpo", "rm"])
    ap.add_argument("--folder")
    ap.add_argument("--reference", default="precomputed")
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, args.model, (args.steps + args.warmup) * args.batch)
        res = {}
        res[("trl", "dpo")] = spawn("trl", "dpo", folder, args)
        res[("ours", "dpo")] = spawn("ours", "dpo", folder, args)
        res[("ours", "dpo-copy")] = spawn("ours", "dpo", folder, args, reference="copy")
        res[("trl", "rm")] = spawn("trl", "rm", folder, args)
        res[("ours", "rm")] = spawn("ours", "rm", folder, args)
    print(f"model {args.model}, batch {args.batch} pairs, {args.steps} timed steps after {args.warmup} warm-up steps")
    print(f"{'':22s}{'pairs/s':>10s}{'peak RSS MB':>14s}")
    for (who, kind), r in res.items():
        print(f"{who + ' ' + kind:22s}{r['pairs_per_s']:10.2f}{r['peak_mb']:14.0f}")
    d, c, m = res[("ours", "dpo")], res[("ours", "dpo-copy")], res[("ours", "rm")]
    td, tm = res[("trl", "dpo")], res[("trl", "rm")]
    print(f"DPO pairs/s ratio (rlhfkit / TRL): {d['pairs_per_s'] / td['pairs_per_s']:.2f}x "
          f"(reference=copy: {c['pairs_per_s'] / td['pairs_per_s']:.2f}x)")
    print(f"RM  pairs/s ratio (rlhfkit / TRL): {m['pairs_per_s'] / tm['pairs_per_s']:.2f}x")
    print(f"peak memory ratio (rlhfkit / TRL): DPO {d['peak_mb'] / td['peak_mb']:.2f} "
          f"(copy {c['peak_mb'] / td['peak_mb']:.2f}), RM {m['peak_mb'] / tm['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
