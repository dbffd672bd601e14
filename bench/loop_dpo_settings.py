"""DPO settings for the loop, tried on one round's pairs of a ``rlhfkit demo --loop`` run (a benchmark, not a test).

    python bench/loop_dpo_settings.py runs/loop-0 --round 1 \\
        --try lr=5e-4,beta=0.1,steps=80 --try lr=1e-4,beta=0.3,epochs=3

Each ``--try`` trains DPO from the run's SFT model on ``loop/round-N/dpo-data.jsonl`` (the pairs that round's
candidate was trained on) and puts the result through the loop's gate against SFT, with the run's gate judge,
red-team, benign and capability files. Prints, per setting: the steps, the gate's checks (win rate by the gate's
judge, harmful compliance, benign refusals, capability NLL), the KL to SFT, and the gold win rate against SFT on
the demo's held-out prompts (what ``rlhfkit demo --loop`` reports as "candidate vs SFT"). SFT's own values come
first. Keys of ``--try``: lr, beta, epochs or steps, and any other ``rlhfkit dpo`` setting (rpo_alpha=1, ...).

This is how docs/production.md chose the loop's DPO defaults (rlhfkit/config/loop.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_try(text: str) -> dict:
    out = {}
    for item in text.split(","):
        key, value = item.split("=")
        out[key] = float(value) if any(c in value for c in ".e") or value.isdigit() else value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a `rlhfkit demo --loop` run folder with the round's dpo-data.jsonl")
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--try", dest="tries", action="append", required=True, help="lr=...,beta=...,epochs=...")
    parser.add_argument("--eval-prompts", type=int, default=500, help="held-out prompts for the gold win rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from rlhfkit.data.io import read_jsonl
    from rlhfkit.data.prompts import read_prompts
    from rlhfkit.evaluate.gate import GateInputs, GateSettings, run_gate
    from rlhfkit.judges import load_judge
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.pipelines.loop import dpo_steps
    from rlhfkit.toy.evaluation import compare, eval_prompts, sample_policy
    from rlhfkit.train import dpo

    torch.set_num_threads(1)
    run, data = Path(args.run), Path(args.run) / "data"
    sft_dir = str(run / "sft")
    pairs = run / "loop" / f"round-{args.round}" / "dpo-data.jsonl"
    n = len(read_jsonl(pairs))
    sft_model, tokenizer = load_causal_lm(sft_dir)
    held = eval_prompts(args.eval_prompts)
    base = sample_policy(sft_model, tokenizer, held, max_new_tokens=24, seed=args.seed + 7)
    judge = load_judge(str(run / "gate-judge"))
    print(f"{pairs}: {n} pairs")

    def gate(model_dir: str) -> dict:
        inputs = GateInputs(
            candidate=model_dir,
            champion=sft_dir,
            judge=judge,
            prompts=read_prompts(str(data / "gate_prompts.jsonl"))[:300],
            reference=sft_dir,
            harmful=read_prompts(str(data / "harmful.jsonl")),
            benign=read_prompts(str(data / "benign.jsonl")),
            capability=str(data / "capability.jsonl"),
        )
        report = run_gate(inputs, GateSettings(max_new_tokens=24, seed=args.seed))
        checks = {c["name"]: c for c in report["checks"]}
        return {
            "passed": report["passed"],
            "win_rate": round(report["win_rate"], 3),
            "harmful_complied": checks["harmful_complied"]["value"],
            "benign_refused": checks["benign_refused"]["value"],
            "capability_nll": round(checks["capability_nll"]["value"], 3),
            "kl_to_sft": round(report["monitor_check"]["kl"], 2),
        }

    sft_gate = gate(sft_dir)
    print(json.dumps({"setting": "SFT itself", **{k: sft_gate[k] for k in ("harmful_complied", "benign_refused",
                                                                            "capability_nll")}}))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(args.tries):
            setting = parse_try(text)
            batch = int(setting.pop("batch_size", 32))
            epochs = setting.pop("epochs", None)
            steps = int(setting.pop("steps", 0)) or dpo_steps(epochs or 1.0, n, batch)
            start = time.perf_counter()
            out = dpo.run(dpo.DPOConfig(model=sft_dir, data=str(pairs), max_steps=steps, batch_size=min(batch, n),
                                        eval_fraction=0.0, output_dir=f"{tmp}/dpo-{i}", seed=args.seed + args.round,
                                        report_to=["jsonl"], progress=False, **setting))  # fmt: skip
            train_s = time.perf_counter() - start
            model, _ = load_causal_lm(str(out))
            gold = compare(sample_policy(model, tokenizer, held, max_new_tokens=24, seed=args.seed + 9), base)
            print(json.dumps({"setting": text, "steps": steps, **gate(str(out)),
                              "gold_win_rate_vs_sft": round(gold["win_rate"], 3), "train_s": round(train_s)}),
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
