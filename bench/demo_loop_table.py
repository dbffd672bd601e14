"""The tables of docs/production.md from finished ``rlhfkit demo --loop`` runs, one per seed: mean and spread.

    python bench/demo_loop_table.py runs/loop-0 runs/loop-1 runs/loop-2

Reads each run's ``results.json`` (written as the run goes, so an unfinished run gives the rounds it finished).
Prints Markdown: the round-by-round gold win rate against SFT, offline against iterative DPO, the gate on
reversed labels, the A/B test, and the traffic (requests, failures, feedback).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def spread(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± sd (n)' in points; one value alone is printed as it is."""
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n 1)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n {len(values)})"


def main(folders: list[str]) -> None:
    runs = []
    for folder in folders:
        path = Path(folder) / "results.json"
        if not path.exists():
            print(f"{path}: missing (the run has not finished a round)", file=sys.stderr)
            continue
        runs.append((folder, json.loads(path.read_text())))
    print(
        "seeds: " + ", ".join(f"{f} (seed {r.get('seed', '?')}, wall {r.get('wall_seconds', '-')} s)" for f, r in runs)
    )
    print()
    print(
        "| round | champion vs SFT, gold win % | candidate vs SFT % | gate win rate vs champion % | promoted | live labels |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    n_rounds = max((len(r.get("rounds", [])) for _, r in runs), default=0)
    for i in range(n_rounds):
        rows = [r["rounds"][i] for _, r in runs if len(r.get("rounds", [])) > i]
        print(f"| {i + 1} | {spread([x['champion_vs_sft']['win_rate'] for x in rows])} "
              f"| {spread([x['candidate_vs_sft']['win_rate'] for x in rows])} "
              f"| {spread([x['gate']['win_rate'] for x in rows])} "
              f"| {sum(x['promoted'] for x in rows)} of {len(rows)} "
              f"| {spread([sum(x['labels'].values()) for x in rows], 1, 0)} |")  # fmt: skip
    print()
    print("| seed | round | human labels | labeller's pairs | candidate vs SFT % | its KL to SFT (nats) | gate win rate vs champion "
          "| failed checks | promoted | champion vs SFT % |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for _, r in runs:
        for x in r.get("rounds", []):
            c, g = x["candidate_vs_sft"], x["gate"]
            labels = " + ".join(f"{n} {source}" for source, n in x["labels"].items()) or "0"
            print(f"| {r.get('seed', '?')} | {x['round']} | {labels} | {x['pairs']} "
                  f"| {100 * c['win_rate']:.1f} | {c['kl_to_sft']:.2f} | {g['win_rate']:.3f} "
                  f"[{g['win_lo']:.3f}, {g['win_hi']:.3f}] | {', '.join(g['failed']) or 'none'} "
                  f"| {'yes' if x['promoted'] else 'no'} | {100 * x['champion_vs_sft']['win_rate']:.1f} |")  # fmt: skip
    done = [r["comparison"] for _, r in runs if "offline" in r.get("comparison", {})]
    if done:
        print()
        print("| | labels | gold win % vs SFT |")
        print("| --- | --- | --- |")
        for key in ("offline", "iterative"):
            print(f"| {key} DPO | {spread([c[key]['labels'] for c in done], 1, 0)} "
                  f"| {spread([c[key]['win_rate'] for c in done])} |")  # fmt: skip
        diffs = [c["iterative"]["win_rate"] - c["offline"]["win_rate"] for c in done]
        print(
            f"| iterative - offline | | {spread(diffs)} points; per seed {', '.join(f'{100 * d:+.1f}' for d in diffs)} |"
        )
        h2h = [c["iterative_vs_offline"]["win_rate"] for c in done]
        print(f"| iterative vs offline head to head | | {spread(h2h)} |")
    sab = [r["sabotage"]["gate"] for _, r in runs if "sabotage" in r]
    if sab:
        print()
        print(f"reversed labels: rejected by the gate in {sum(not g['passed'] for g in sab)} of {len(sab)} seeds; "
              f"win rate vs champion {spread([g['win_rate'] for g in sab])} %; failed checks: "
              + "; ".join(", ".join(g["failed"]) or "none" for g in sab))  # fmt: skip
    abs_ = [r["ab"] for _, r in runs if "ab" in r]
    if abs_:
        print()
        print("| seed | metric | champion - SFT [95%] | p |")
        print("| --- | --- | --- | --- |")
        for (folder, r), ab in zip([x for x in runs if "ab" in x[1]], abs_):
            for t in ab["test"]["results"]:
                print(f"| {r.get('seed', folder)} | {ab['test']['metric']} | {t['diff']:+.3f} [{t['lo']:+.3f}, "
                      f"{t['hi']:+.3f}] | {t['p']:.2g} |")  # fmt: skip
    print()
    for folder, r in runs:
        traffic = r.get("traffic", {})
        print(f"{folder} traffic: " + "; ".join(
            f"{k} {v['requests']} requests, {v['failed']} failed, {v['feedback_acknowledged']} feedback acknowledged, "
            f"{v['feedback_until'] - v['feedback_after']} stored" for k, v in traffic.items()))  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
