"""A/B and A/A tests over real HTTP with the toy world's simulated users: does ``rlhfkit ab report`` find a real
difference, and only a real one? (A benchmark of the test's calibration, not a timed test.)

    python bench/serve_ab.py --from runs/demo-loop-0                  # SFT and the final champion of a demo run
    python bench/serve_ab.py --sft runs/x/sft --policy runs/x/dpo --aa 20 --ab 5

Each repeat is a fresh experiment (its own salt) with fresh users, on one ``rlhfkit serve``:

- A/A: two arms serving two registered copies of the same SFT model (two versions made from the same files);
  a calibrated test calls them different in about 5% of repeats (19 or more of 20 clean is the target; with 20
  repeats at exactly 5%, 17 or more clean happens 98% of the time).
- A/B: SFT against the policy. The report must find the policy's higher thumbs-up rate at p < 0.05.

Users give a thumbs up or down and a 1-5 rating on every answer (their persona's judgements, with noise), ``--chats``
answers each; ``--metric`` is the experiments' primary metric (rating by default: a thumbs up needs a persona's
utility above 0.5, which the toy world's honest "I do not know" never reaches, so thumbs barely tell a policy that
stopped answering wrongly from SFT).
Prints one JSON line per repeat and a summary; ``--out`` keeps them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhfkit.registry.experiments import Arm, Experiments  # noqa: E402
from rlhfkit.registry.store import Registry  # noqa: E402
from rlhfkit.serve.monitor import experiment_report  # noqa: E402
from rlhfkit.serve.process import ServerProcess  # noqa: E402
from rlhfkit.toy.users import make_users, simulate  # noqa: E402


def models(args) -> tuple[str, str]:
    if args.sft and args.policy:
        return args.sft, args.policy
    if not args.from_run:
        sys.exit("give --from RUN (a demo --loop run folder) or both --sft and --policy")
    demo = Registry.open(str(Path(args.from_run) / "production.db"))
    sft, champion = demo.resolve("policy:1"), demo.resolve("champion")
    if champion.id == sft.id:
        sys.exit(f"{args.from_run}: the champion is still SFT; give --policy")
    return sft.source, champion.source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="from_run", default=None, help="a finished `rlhfkit demo --loop` folder")
    parser.add_argument("--sft", default=None)
    parser.add_argument("--policy", default=None)
    parser.add_argument("--aa", type=int, default=20, help="A/A repeats")
    parser.add_argument("--ab", type=int, default=5, help="A/B repeats")
    parser.add_argument("--users", type=int, default=100, help="users per repeat (half per arm)")
    parser.add_argument("--chats", type=int, default=5, help="answers each user rates")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metric", default="rating", help="the experiments' primary metric (thumbs_up, rating, ...)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sft, policy = models(args)
    tmp = Path(tempfile.mkdtemp(prefix="serve-ab-"))
    registry = Registry.open(str(tmp / "ab.db"))
    a = registry.register(sft, kind="policy", name="sft-a")
    b = registry.register(sft, kind="policy", name="sft-b")  # the same files, a second version: an A/A test
    p = registry.register(policy, kind="policy", name="policy")
    experiments = Experiments(registry)
    print(json.dumps({"load_average_before": os.getloadavg(), "sft": sft, "policy": policy}), flush=True)
    lines = []
    with ServerProcess(registry.store.url.removeprefix("sqlite:///"), "--max-tokens", str(args.max_tokens),
                       log=tmp / "serve.log") as server:  # fmt: skip
        plan = [("aa", i, a.ref, b.ref) for i in range(args.aa)] + [("ab", i, a.ref, p.ref) for i in range(args.ab)]
        for kind, i, control, treatment in plan:
            name = f"{kind}-{i}"
            experiments.create(name, [Arm("control", control, 1), Arm("treatment", treatment, 1)], metric=args.metric)
            users = make_users(args.users, seed=args.seed * 1000 + (i if kind == "aa" else 500 + i), prefix=name)
            start = time.perf_counter()
            stats = asyncio.run(simulate(server.url, name, users, args.chats, regenerate=0.0,
                                         concurrency=args.concurrency, max_tokens=args.max_tokens, rate=True))  # fmt: skip
            report = experiment_report(registry.store, name)
            [test] = report["test"]["results"]
            line = {"kind": kind, "repeat": i, "metric": args.metric, "p": test["p"], "diff": test["diff"], "lo": test["lo"], "hi": test["hi"],
                    "significant": test["p"] < 0.05, "requests": stats.requests, "failed": stats.failed,
                    "users": [arm["users"] for arm in report["arms"]], "wall_s": round(time.perf_counter() - start, 1),
                    "load_average": os.getloadavg()}  # fmt: skip
            print(json.dumps(line), flush=True)
            lines.append(line)
    aa = [x for x in lines if x["kind"] == "aa"]
    ab = [x for x in lines if x["kind"] == "ab"]
    summary = {
        "aa_repeats": len(aa),
        "aa_no_difference": sum(not x["significant"] for x in aa),
        "aa_p_values": [round(x["p"], 3) for x in aa],
        "ab_repeats": len(ab),
        "ab_detected": sum(x["significant"] and x["diff"] > 0 for x in ab),
        "ab_p_values": [x["p"] for x in ab],
        "ab_diff": [round(x["diff"], 3) for x in ab],
        "load_average_after": os.getloadavg(),
    }
    print(json.dumps(summary), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"repeats": lines, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
