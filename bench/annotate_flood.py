"""Wrong-password flood against the annotation service: do honest annotators keep labelling?

    python bench/annotate_flood.py                       # SQLite in a temp folder
    python bench/annotate_flood.py --db postgresql://user@127.0.0.1:5432/empty_db
    python bench/annotate_flood.py --spray               # also: every attempt from a new address

Three honest annotators (sessions made directly; each asks for its next item and submits a label, as
fast as the server answers) run for --seconds without a flood, then for --seconds while four clients
post wrong-password logins as fast as the server answers them, ignoring 429 and Retry-After. Each
flooder connects from its own loopback address (127.N.0.2..5, fresh for each phase) and cycles through real account names,
so it has its own per-address budget and spends the accounts' budgets too. The flooders run in a
process of their own, started half a second before the honest clients are timed. The figure: flooded labels/s
over unflooded labels/s (the target is >= 0.8), with p50 label latency and how the flood was answered.

With --spray a third phase repeats the flood with every login attempt from a fresh loopback address
and a fresh account name, so no per-address or per-account bucket applies and only the server-wide
hashing gate limits the hashing (a botnet, rather than four clients).

The honest annotators are scripts labelling tens of items a second each, so the server runs with
--api-rate 0 (the per-account request limit is for runaway scripts, and would otherwise be what is
measured). Afterwards every acknowledged label is checked in the database (0 lost, 0 duplicated).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotate_load import TRANSIENT, RawClient, Run, ServerProcess, answer_for, free_port, pct, setup, verify  # noqa: E402

from rlhfkit.feedback.db import Store, migrate  # noqa: E402


async def honest(url: str, token: str, stop: asyncio.Event, run: Run, seed: int, project: str) -> None:
    rng = random.Random(seed)
    client = RawClient(url)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        while not stop.is_set():
            r = await client.request("GET", f"/api/next?project={project}", auth)
            task = r.json()["task"] if r.status_code == 200 else None
            if task is None:
                run.errors.append(f"next: {r.status_code} {r.text[:100]}")
                return
            key = uuid.uuid4().hex
            body = json.dumps({"task_id": task["id"], "answer": answer_for(task, rng)}).encode()
            t0 = time.perf_counter()
            r = await client.request("POST", "/api/labels", {**auth, "Idempotency-Key": key}, body)
            if r.status_code not in (200, 201):
                run.errors.append(f"label: {r.status_code} {r.text[:100]}")
                continue
            run.latencies.append(time.perf_counter() - t0)
            run.acked[key] = r.json()["id"]
    finally:
        client.close()


async def flooder(url: str, source: str | None, names: list[str], stop: asyncio.Event, answers: Counter) -> None:
    """Wrong passwords as fast as they are answered. ``source`` None: a new address per attempt."""
    client = RawClient(url, source=source) if source else None
    n = 0
    while not stop.is_set():
        n += 1
        if source is None:  # a fresh client (and so a fresh TCP connection) from a fresh address
            client = RawClient(
                url, source=f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
            )
        name = names[n % len(names)] if names else f"nobody-{uuid.uuid4().hex[:8]}"
        body = json.dumps({"username": name, "password": f"wrong-{n}"}).encode()
        try:
            r = await client.request("POST", "/api/auth/login", {}, body)
            answers[r.status_code] += 1
        except TRANSIENT:
            answers["connection error"] += 1
        if source is None:
            client.close()
    if client is not None:
        client.close()


def flood_process(url: str, mode: str, names: list[str], subnet: int, ready, stop, out) -> None:
    """The attacker, in a process of its own (as it would be on its own machine), so its event loop
    does not slow the honest clients' one: here they only share the two CPUs, as with a real attacker."""

    async def attack():
        done = asyncio.Event()
        answers = Counter()
        if mode == "clients":
            # 127.<subnet>.0.2..5: fresh addresses per phase, so each flooded phase starts with full budgets
            addresses = [f"127.{subnet}.0.{2 + i}" for i in range(4)]
            work = [asyncio.create_task(flooder(url, a, names, done, answers)) for a in addresses]
        elif mode == "spray":
            work = [asyncio.create_task(flooder(url, None, [], done, answers)) for _ in range(4)]
        else:  # "none": the unflooded phase runs the same process, doing nothing, so phases differ only in the flood
            work = []
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        done.set()
        await asyncio.gather(*work)
        return answers

    out.put(dict(asyncio.run(attack())))


async def honest_phase(url: str, sessions, seconds: float, project: str) -> tuple[Run, float]:
    stop = asyncio.Event()
    run = Run()
    work = [asyncio.create_task(honest(url, tok, stop, run, seed, project)) for seed, (_, tok) in enumerate(sessions)]
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*work)
    return run, time.perf_counter() - t0


def phase(
    url: str, sessions, seconds: float, flood: str | None, names: list[str], subnet: int, project: str
) -> tuple[Run, Counter, float]:
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    attacker = ctx.Process(target=flood_process, args=(url, flood or "none", names, subnet, ready, stop, out))
    attacker.start()
    ready.wait(60)
    time.sleep(0.5)  # the flooders connect; the flood's first, costliest seconds are inside the timed window
    run, took = asyncio.run(honest_phase(url, sessions, seconds, project))
    stop.set()
    answers = Counter(out.get(timeout=60))
    attacker.join(30)
    return run, answers, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=None, help="database URL (default: a SQLite file in a temp folder)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--spray", action="store_true", help="also flood from a new address and account per attempt")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat (unflooded, flooded[, spray]) this many times, interleaved, so that load from other work on "
        "the machine falls on both alike; the ratio is taken over the totals",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="annotate-flood-"))
    db = args.db or str(tmp / "labels.db")
    store = Store(db)
    migrate(store)
    server = ServerProcess(db, free_port(), tmp / "server.log", overlap=3, workers=1, extra=("--api-rate", "0"))
    one_round = [("unflooded", None), ("4 flooding clients", "clients")] + (
        [("spray flood", "spray")] if args.spray else []
    )
    phases = one_round * args.rounds
    results = []
    try:
        for n, (name, flood) in enumerate(phases):
            # Fresh annotators and items per phase, so every phase starts from the same queue state.
            # A project per phase: the queue and progress queries then see the same number of items in
            # every phase, instead of more in each (the earlier phases' items are in other projects).
            sessions = setup(store, f"flood{n}", 3, 3000, project=f"phase{n}")
            names = [f"flood{n}-{i}" for i in range(3)] + ["admin"]
            if n == 0:
                server.start()
            # Every phase starts the same way: the 6,000 new items just written (and, on SQLite, the WAL
            # checkpoint after them) settle before anything is timed, flooded or not.
            time.sleep(3)
            load_before = os.getloadavg()[0]
            cpu0 = server.cpu_seconds()  # includes the flood's 0.5 s head start
            run, answers, seconds = phase(server.url, sessions, args.seconds, flood, names, n, f"phase{n}")
            check = verify(store, [u for u, _ in sessions], run)
            results.append(
                (name, run, answers, seconds, check, load_before, os.getloadavg()[0], server.cpu_seconds() - cpu0)
            )
    finally:
        server.stop()
        store.dispose()

    def rate(kind: str) -> float:
        chosen = [r for r in results if r[0] == kind]
        return sum(len(r[1].acked) for r in chosen) / sum(r[3] for r in chosen)

    base = rate("unflooded")
    print(
        f"\nwrong-password flood: 3 honest annotators, {store.dialect}, {args.seconds:.0f} s per phase, "
        f"{args.rounds} round(s), {os.cpu_count()} CPUs"
    )
    print(
        f"{'phase':<20}{'labels':>8}{'labels/s':>10}{'ratio':>7}{'p50 ms':>8}{'p95 ms':>8}{'lost':>6}{'dup':>5}"
        f"{'server CPU s':>14}  {'load 1m':>13}  flood answers"
    )
    bad = False
    for name, run, answers, seconds, check, l0, l1, cpu in results:
        phase_rate = len(run.acked) / seconds
        flood = ", ".join(f"{code}: {count}" for code, count in sorted(answers.items(), key=str)) or "-"
        print(
            f"{name:<20}{len(run.acked):>8}{phase_rate:>10.1f}{phase_rate / base:>7.2f}{pct(run.latencies, 0.5):>8.1f}"
            f"{pct(run.latencies, 0.95):>8.1f}{check['lost']:>6}{check['duplicated']:>5}{cpu:>14.1f}  "
            f"{l0:>5.2f} -> {l1:<5.2f}  {flood}"
        )
        bad |= bool(check["lost"] or check["duplicated"] or run.errors or check["unacknowledged_stored"])
        if run.errors:
            print(f"  errors: {run.errors[:3]}")
    print("\nover all rounds (labels/s over the totals; latency percentiles of all label submissions):")
    for kind in dict.fromkeys(r[0] for r in results):
        lat = [x for r in results if r[0] == kind for x in r[1].latencies]
        print(
            f"  {kind:<20}{rate(kind):>8.1f} labels/s {rate(kind) / base:>6.0%}   p50 {pct(lat, 0.5):>6.1f} ms"
            f"   p95 {pct(lat, 0.95):>6.1f} ms"
        )
    print(
        f"honest labels/s under 4 flooding clients: {rate('4 flooding clients') / base:.0%} of unflooded (target >= 80%)"
    )
    if args.spray:
        print(f"under the spray flood: {rate('spray flood') / base:.0%} of unflooded")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
