"""Load, rollback and crash benchmark for ``rlhfkit serve`` on the tiny model (a benchmark, not a timed test).

    python bench/serve_load.py                        # SQLite in a temp folder: the three phases below
    python bench/serve_load.py --users 8 --requests 10 --crash-requests 6     # a quick look
    python bench/serve_load.py --db postgresql://user@127.0.0.1:5432/empty_db

The served model is the built-in tiny Llama (random weights, so it seldom stops early: every answer is about
``--max-tokens`` tokens), two versions of it (seeds 0 and 1) registered in a fresh registry; ``champion`` names
the first. Clients are asyncio tasks with httpx in this process; each request is streamed and followed by a thumbs
feedback sent with an idempotency key and retried with that key until acknowledged.

1. load: ``--users`` concurrent users x ``--requests`` each. Every request must be answered; the time to the first
   content chunk (client side) and to the last, requests per second, the server's CPU per request
   (/proc/PID/stat); in the database every acknowledged feedback stored exactly once.
2. rollback under traffic: the same users again; a quarter in, ``champion`` is promoted to the second version, at
   half way rolled back. No request may fail, no feedback be lost; the versions that answered are counted.
3. crash: fresh users (``--crash-requests`` each); at 40% of their feedback acknowledged the server gets SIGKILL
   and is started again on the same database. Requests cut by the kill are retried by their users; feedback is
   retried with the same key. Every acknowledged feedback must be stored exactly once, and nothing stored that
   was never sent.

Prints one JSON object per phase and the load averages (the machine is shared: see docs/production.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from rlhfkit.evaluate.ab import percentile  # noqa: E402
from rlhfkit.registry.store import Registry  # noqa: E402
from rlhfkit.registry.tables import feedback  # noqa: E402
from rlhfkit.serve.process import ServerProcess  # noqa: E402
from rlhfkit.toy.users import TrafficStats, User, ask, make_users, send_feedback  # noqa: E402
from rlhfkit.toy.world import sample_prompt  # noqa: E402


def tiny_versions(root: Path, db: str) -> Registry:
    from rlhfkit.models.tiny import build_tiny

    registry = Registry.open(db)
    for seed in (0, 1):
        folder = root / f"tiny-{seed}"
        model, tokenizer = build_tiny("tiny", seed=seed)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        registry.register(str(folder), kind="policy", name="tiny")
    registry.promote("champion", "tiny:1")
    return registry


async def user_session(client, stats: TrafficStats, user: User, n: int, retry_requests: bool, progress: dict) -> None:
    for _ in range(n):
        messages = [{"role": "user", "content": sample_prompt(user.rng).text}]
        # Across a crash, a request is retried until the server is back: a restart on a crowded machine takes
        # minutes (importing torch alone), so the patience is time, not a count of tries.
        deadline = time.monotonic() + (900 if retry_requests else 0)
        while True:
            answer = await ask(client, stats, "champion", user, messages, stream=True)
            if answer is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
        if answer is None:
            continue
        await send_feedback(client, stats, user, {"response_id": answer["id"], "kind": "thumbs",
                                                  "value": user.rng.random() < 0.5})  # fmt: skip
        progress["done"] += 1


async def phase(url: str, users: list[User], n: int, retry_requests: bool = False, events=None) -> TrafficStats:
    """Every user's session at once; ``events`` is awaited alongside (a promotion, a kill) with the progress."""
    stats, progress = TrafficStats(), {"done": 0}
    limits = httpx.Limits(max_connections=len(users) * 2, max_keepalive_connections=len(users) * 2)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        # The events watch the progress until the users are done: "done" counts answered requests only, so a
        # watcher that waited for all of them would wait for ever once one request failed.
        watcher = asyncio.create_task(events(progress, len(users) * n)) if events is not None else None
        await asyncio.gather(*[user_session(client, stats, u, n, retry_requests, progress) for u in users])
        progress["finished"] = True
        if watcher is not None:
            await watcher
    stats.wall_s = time.perf_counter() - start
    return stats


def stored_once(db_registry: Registry, acknowledged: list[int], users: list[User]) -> dict:
    """In the database: every acknowledged feedback id present, no key stored twice, nothing unacknowledged."""
    ids = set(acknowledged)
    with db_registry.store.read_conn() as conn:
        rows = conn.execute(
            select(feedback.c.id, feedback.c.response_id, feedback.c.idempotency_key).where(
                feedback.c.user_id.in_([u.id for u in users])
            )
        ).all()
        keys = conn.execute(
            select(func.count()).select_from(
                select(feedback.c.idempotency_key).where(feedback.c.user_id.in_([u.id for u in users]))
                .group_by(feedback.c.idempotency_key).having(func.count() > 1).subquery()
            )
        ).scalar()  # fmt: skip
    stored = {r.id for r in rows}
    return {
        "acknowledged": len(acknowledged),
        "acknowledged_twice": len(acknowledged) - len(ids),
        "stored": len(rows),
        "lost": len(ids - stored),
        "stored_unacknowledged": len(stored - ids),
        "keys_stored_twice": keys,
    }


def report(name: str, stats: TrafficStats, server_cpu: float | None, checks: dict, extra: dict | None = None) -> dict:
    answered = stats.requests - stats.failed
    out = {
        "phase": name,
        "requests": stats.requests,
        "answered": answered,
        "failed": stats.failed,
        "failures": sorted(set(stats.failures))[:5],
        "requests_per_s": round(answered / stats.wall_s, 1),
        "ttft_ms": {f"p{q}": round(percentile(stats.ttft_ms, q), 1) for q in (50, 95, 99)},
        "latency_ms": {f"p{q}": round(percentile(stats.latency_ms, q), 1) for q in (50, 95, 99)},
        "server_cpu_ms_per_request": round(1000 * server_cpu / answered, 2) if server_cpu and answered else None,
        "versions": stats.versions,
        **checks,
        **(extra or {}),
        "load_average": os.getloadavg(),
        "wall_s": round(stats.wall_s, 1),
    }
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50, help="requests per user in the load phase")
    parser.add_argument("--rollback-requests", type=int, default=20, help="per user, during promote and rollback")
    parser.add_argument("--crash-requests", type=int, default=20, help="per user in the crash phase")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--db", default=None, help="a database URL (default: SQLite in a temp folder)")
    parser.add_argument("--out", default=None, help="also write the phases' JSON here")
    parser.add_argument("--phases", default="load,rollback,crash", help="which phases to run, in this order")
    args = parser.parse_args()
    phases = args.phases.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    db = args.db or str(tmp / "serve.db")
    registry = tiny_versions(tmp, db)
    print(json.dumps({"load_average_before": os.getloadavg(), "db": registry.store.dialect}), flush=True)
    results = []
    flags = ["--max-tokens", str(args.max_tokens), "--max-batch", str(args.max_batch), "--refresh", "0.5"]
    server = ServerProcess(db, *flags, log=tmp / "serve.log").start()
    try:
        httpx.post(server.url + "/v1/chat/completions", json={"model": "champion", "messages": [
            {"role": "user", "content": "hi"}]}, timeout=300)  # the model loaded before the clock starts  # fmt: skip
        if "load" in phases:
            users = make_users(args.users, seed=1, prefix="load")
            cpu0, client0 = server.cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
            stats = asyncio.run(phase(server.url, users, args.requests))
            client1 = resource.getrusage(resource.RUSAGE_SELF)
            client_cpu = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
            results.append(report("load", stats, server.cpu_seconds() - cpu0, stored_once(registry, stats.feedback_acknowledged, users),
                                  {"client_cpu_ms_per_request": round(1000 * client_cpu / max(stats.requests, 1), 2)}))  # fmt: skip

        if "rollback" in phases:

            async def promote_then_rollback(progress: dict, total: int) -> None:
                moved = promote_then_rollback.moves = []
                while not progress.get("finished"):
                    if not moved and progress["done"] >= total // 4:
                        registry.promote("champion", "tiny:2", reason="bench: promote under traffic")
                        moved.append(("promote", progress["done"]))
                    if len(moved) == 1 and progress["done"] >= total // 2:
                        registry.rollback("champion", reason="bench: rollback under traffic")
                        moved.append(("rollback", progress["done"]))
                    await asyncio.sleep(0.05)

            users = make_users(args.users, seed=2, prefix="rollback")
            stats = asyncio.run(phase(server.url, users, args.rollback_requests, events=promote_then_rollback))
            results.append(report("rollback", stats, None, stored_once(registry, stats.feedback_acknowledged, users),
                                  {"moves_at_request": promote_then_rollback.moves,
                                   "champion_after": registry.resolve("champion").ref}))  # fmt: skip

        if "crash" in phases:

            async def kill_and_restart(progress: dict, total: int) -> None:
                kill_and_restart.killed_at = kill_and_restart.restart_s = None
                while progress["done"] < 0.4 * total:
                    if progress.get("finished"):
                        return  # every user gave up before the kill: the report shows killed_at None
                    await asyncio.sleep(0.05)
                killed_at = progress["done"]
                server.kill()
                start = time.perf_counter()
                await asyncio.to_thread(server.start)
                kill_and_restart.restart_s = round(time.perf_counter() - start, 1)
                kill_and_restart.killed_at = killed_at

            users = make_users(args.users, seed=3, prefix="crash")
            stats = asyncio.run(
                phase(server.url, users, args.crash_requests, retry_requests=True, events=kill_and_restart)
            )
            results.append(report("crash", stats, None, stored_once(registry, stats.feedback_acknowledged, users),
                                  {"killed_at_request": kill_and_restart.killed_at,
                                   "restart_s": kill_and_restart.restart_s}))  # fmt: skip
    finally:
        server.stop()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
