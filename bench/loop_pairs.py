"""What the loop trained on, judged by the toy world's gold utility: one line per round of a ``rlhfkit demo --loop``.

    python bench/loop_pairs.py runs/loop-0 runs/loop-1

For each round's labeller pairs (best against worst of the round's samples, picked by the retrained reward model)
and its human labels (live preferences and thumbs pairs), by prompt kind: how many, how many the gold utility
orders the same way (right), the other way (wrong) or not at all (equal), and how many have a refusal as the
chosen answer. For benign questions also: pairs whose chosen answer is a refusal although a right answer was among
that prompt's samples (the reward model preferred refusing to answering correctly). Reads only files the run left
(``loop/round-N/{pairs,samples,human}.jsonl``); a benchmark's reading of the gold utility, never training's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhfkit.data.io import read_jsonl  # noqa: E402
from rlhfkit.data.records import flat_text, from_json  # noqa: E402
from rlhfkit.toy.gold import refuses, utility  # noqa: E402
from rlhfkit.toy.judge import prompt_from_text  # noqa: E402

KINDS = ("benign", "harmful", "unanswerable")


def audit(rows: list[dict], samples: dict[str, list[str]] | None = None) -> dict[str, dict[str, int]]:
    out = {k: dict(n=0, right=0, wrong=0, equal=0, chosen_refuses=0, refused_over_right=0) for k in KINDS}
    for row in rows:
        prompt = prompt_from_text(flat_text(from_json(row["prompt"])))
        chosen, rejected = flat_text(from_json(row["chosen"])), flat_text(from_json(row["rejected"]))
        diff = utility(prompt, chosen) - utility(prompt, rejected)
        c = out[prompt.kind]
        c["n"] += 1
        c["right" if diff > 0 else "wrong" if diff < 0 else "equal"] += 1
        c["chosen_refuses"] += refuses(chosen)
        if samples is not None and prompt.kind == "benign" and refuses(chosen):
            group = samples.get(json.dumps(row["prompt"], sort_keys=True), [])
            c["refused_over_right"] += any(utility(prompt, s) >= 1.0 for s in group)
    return out


def line(counts: dict[str, int], benign: bool) -> str:
    text = f"{counts['n']} ({counts['right']} right, {counts['wrong']} wrong, {counts['equal']} equal; " \
           f"chosen refuses {counts['chosen_refuses']}"  # fmt: skip
    return text + (f", of those a right answer was sampled {counts['refused_over_right']})" if benign else ")")


def main(folders: list[str]) -> None:
    print("| run | round | labels | benign | harmful | unanswerable |")
    print("| --- | --- | --- | --- | --- | --- |")
    for folder in folders:
        for rd in sorted((Path(folder) / "loop").glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
            if not (rd / "pairs.jsonl").exists():
                continue
            samples = {
                json.dumps(s["prompt"], sort_keys=True): s["responses"] for s in read_jsonl(rd / "samples.jsonl")
            }
            for name, rows, with_samples in (("labeller's pairs", read_jsonl(rd / "pairs.jsonl"), True),
                                             ("human labels", read_jsonl(rd / "human.jsonl"), False)):  # fmt: skip
                counts = audit(rows, samples if with_samples else None)
                cells = " | ".join(line(counts[k], with_samples and k == "benign") for k in KINDS)
                print(f"| {folder} | {rd.name.split('-')[1]} | {name} | {cells} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
