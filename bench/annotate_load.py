"""Load and crash benchmark for the annotation service (a benchmark, not a timed test).

    python bench/annotate_load.py                      # SQLite in a temp folder: 50 x 200, then the crash run
    python bench/annotate_load.py --db postgresql://user@127.0.0.1:5432/empty_db
    python bench/annotate_load.py --annotators 10 --labels 50   # a quick look

Phase 1 (load): N concurrent annotators (asyncio, one process, a minimal keep-alive HTTP client;
--client httpx for httpx, which costs ~3 ms CPU per request and on 2 cores starves the server) each
ask for their next item and submit a label, M times, against a server subprocess on loopback.
Reports labels/s, latency percentiles, CPU ms per label of the server (from /proc/PID/stat) and of
the load generator, and the load averages; then checks in the database that every acknowledged label
is stored exactly once.

Phase 2 (crash): the same load with fresh annotators (--crash-labels each, default 60, to keep the
whole run near 3 minutes on 2 cores; --crash-labels 200 for the full size). When 40% of it is
acknowledged the server (every worker) gets SIGKILL and is restarted on the same database. Clients retry whatever was not acknowledged with the
same Idempotency-Key. Then: every acknowledged label must be stored (none lost), no key or
(annotator, item) pair may be stored twice, and no stored label may be one nobody was told about.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from rlhfkit.feedback.auth import create_user, start_session  # noqa: E402
from rlhfkit.feedback.db import Store, migrate  # noqa: E402
from rlhfkit.feedback.models import Label, Task  # noqa: E402
from rlhfkit.feedback.projects import create_project, find_project, get_project  # noqa: E402


class Reply:
    def __init__(self, status_code: int, body: bytes):
        self.status_code, self.content = status_code, body

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self):
        return json.loads(self.content)


class RawClient:
    """A minimal HTTP/1.1 keep-alive client, one connection per annotator. httpx costs about 3 ms of
    CPU per request, which on 2 shared cores made the load generator, not the server, the limit."""

    def __init__(self, url: str, timeout: float = 30, source: str | None = None):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.timeout = host, int(port), timeout
        self.source = source  # a local address to connect from (any 127.x.y.z is loopback on Linux)
        self.reader = self.writer = None

    async def _exchange(self, head: bytes, body: bytes) -> Reply:
        if self.writer is None:
            local = (self.source, 0) if self.source else None
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, local_addr=local)
        self.writer.write(head + body)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length, close = None, False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise ConnectionError("chunked responses are not expected from this server")
        content = await self.reader.readexactly(length or 0)
        if close:
            self.close()
        return Reply(status, content)

    async def request(self, method: str, path: str, headers: dict, body: bytes = b"") -> Reply:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            return await asyncio.wait_for(self._exchange((head + "\r\n").encode(), body), self.timeout)
        except BaseException:
            self.close()  # a half-read answer leaves the connection unusable
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


TRANSIENT = (
    httpx.TransportError,
    OSError,
    asyncio.IncompleteReadError,
    asyncio.TimeoutError,
    asyncio.LimitOverrunError,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, db: str, port: int, log: Path, overlap: int, workers: int, extra: tuple[str, ...] = ()):
        self.db, self.port, self.log, self.overlap, self.workers = db, port, log, overlap, workers
        self.extra = extra
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        t0 = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "rlhfkit.feedback.cli",
            "serve",
            "--db",
            self.db,
            "--port",
            str(self.port),
            "--overlap",
            str(self.overlap),
            "--workers",
            str(self.workers),
            *self.extra,
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        while time.perf_counter() - t0 < 60:
            if self.proc.poll() is not None:
                sys.exit(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                time.sleep(0.05)
        sys.exit(f"server did not come up in 60 s; see {self.log}")

    def pids(self) -> list[int]:
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [self.proc.pid, *map(int, children)]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process and its workers so far (from /proc/PID/stat)."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")

    def kill9(self) -> None:
        # SIGKILL the whole server: with --workers the workers are children of the supervisor.
        for pid in self.pids():
            os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def setup(
    store: Store, prefix: str, annotators: int, n_tasks: int, project: str | None = None
) -> list[tuple[int, str]]:
    """Annotators with sessions made directly (argon2 logins are not what is measured) and tasks, in
    ``project`` (made if new; default: the default project)."""
    rng = random.Random(prefix)
    with store.write() as db:
        if project is not None and find_project(db, project) is None:
            create_project(db, project)
        project_id = get_project(db, project).id
        users = [create_user(db, f"{prefix}-{i}", "annotator") for i in range(annotators)]
        tokens = [start_session(db, u.id, hours=2)[0] for u in users]
        for i in range(n_tasks):
            kind = rng.choice(["pairwise", "pairwise", "ranking", "rating", "thumbs"])
            k = 3 if kind == "ranking" else 2
            db.add(
                Task(
                    project_id=project_id,
                    kind=kind,
                    prompt=f"{prefix} prompt {i}",
                    responses=[f"response {j} to {i}" for j in range(k)],
                    scale=5,
                    is_gold=False,
                    n_labels=0,
                    external_id=f"{prefix}-{i}",
                )
            )
        db.commit()
        return [(u.id, t) for u, t in zip(users, tokens)]


def answer_for(task: dict, rng: random.Random) -> dict:
    idx = [r["index"] for r in task["responses"]]
    if task["kind"] == "pairwise":
        return {"choice": rng.choice([0, 1, "tie", "both_bad"])}
    if task["kind"] == "ranking":
        return {"ranking": rng.sample(sorted(idx), len(idx))}
    if task["kind"] == "rating":
        return {"ratings": [rng.randint(1, task["scale"]) for _ in idx]}
    return {"thumbs": [rng.random() < 0.5 for _ in idx]}


class Run:
    def __init__(self):
        self.acked: dict[str, int] = {}  # idempotency key -> label id the server acknowledged
        self.latencies: list[float] = []
        self.retries = 0
        self.replayed = 0
        self.errors: list[str] = []


async def with_retry(send, run: Run, deadline: float):
    """Retry transport errors and 5xx (the server may be down) until the deadline."""
    wait = 0.05
    while True:
        try:
            r = await send()
            if r.status_code < 500:
                return r
        except TRANSIENT:
            pass
        if time.perf_counter() > deadline:
            raise TimeoutError("server unreachable for too long")
        run.retries += 1
        await asyncio.sleep(wait)
        wait = min(wait * 2, 1.0)


async def annotator(client, token: str, n: int, run: Run, seed: int) -> None:
    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {token}"}
    if isinstance(client, RawClient):
        get = lambda: client.request("GET", "/api/next", auth)  # noqa: E731
        post = lambda: client.request("POST", "/api/labels", headers, json.dumps(body).encode())  # noqa: E731
    else:
        get = lambda: client.get("/api/next", headers=auth)  # noqa: E731
        post = lambda: client.post("/api/labels", json=body, headers=headers)  # noqa: E731
    for _ in range(n):
        deadline = time.perf_counter() + 120
        r = await with_retry(get, run, deadline)
        task = r.json()["task"]
        if task is None:
            run.errors.append("queue ran dry")
            return
        key = uuid.uuid4().hex
        body = {"task_id": task["id"], "answer": answer_for(task, rng), "duration_ms": rng.randint(2000, 9000)}
        headers = {**auth, "Idempotency-Key": key}
        t0 = time.perf_counter()
        r = await with_retry(post, run, deadline)
        if r.status_code not in (200, 201):
            run.errors.append(f"{r.status_code}: {r.text[:200]}")
            continue
        run.latencies.append(time.perf_counter() - t0)
        run.replayed += r.status_code == 200
        run.acked[key] = r.json()["id"]


async def drive(url: str, sessions, labels: int, run: Run, on_progress=None, client: str = "raw") -> float:
    if client == "raw":
        clients = [RawClient(url) for _ in sessions]
    else:
        limits = httpx.Limits(max_connections=len(sessions) + 10, max_keepalive_connections=len(sessions) + 10)
        clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=30)] * len(sessions)
    try:
        t0 = time.perf_counter()
        work = [
            asyncio.create_task(annotator(c, tok, labels, run, seed))
            for seed, (c, (_, tok)) in enumerate(zip(clients, sessions))
        ]
        if on_progress:
            work.append(asyncio.create_task(on_progress()))
        await asyncio.gather(*work)
        return time.perf_counter() - t0
    finally:
        if client == "raw":
            for c in clients:
                c.close()
        else:
            await clients[0].aclose()


def run_async(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def verify(store: Store, user_ids: list[int], run: Run) -> dict:
    with store.read() as db:
        rows = db.execute(select(Label.idempotency_key, Label.id).where(Label.annotator_id.in_(user_ids))).all()
        pairs = db.execute(
            select(Label.task_id, Label.annotator_id, func.count())
            .where(Label.annotator_id.in_(user_ids))
            .group_by(Label.task_id, Label.annotator_id)
            .having(func.count() > 1)
        ).all()
        counters = db.execute(select(func.sum(Task.n_labels))).scalar()
        total = db.execute(select(func.count()).select_from(Label)).scalar()
    stored: dict[str, list[int]] = {}
    for key, label_id in rows:
        stored.setdefault(key, []).append(label_id)
    lost = [k for k, label_id in run.acked.items() if stored.get(k) != [label_id]]
    return {
        "acknowledged": len(run.acked),
        "stored": len(rows),
        "lost": len(lost),
        "duplicated": sum(len(v) - 1 for v in stored.values()) + len(pairs),
        "unacknowledged_stored": len(set(stored) - set(run.acked)),
        "counter_ok": counters == total,
    }


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--labels", type=int, default=200, help="labels per annotator")
    ap.add_argument("--overlap", type=int, default=5)
    ap.add_argument("--db", default=None, help="database URL (default: a SQLite file in a temp folder)")
    ap.add_argument("--workers", type=int, default=1, help="server processes (2 measured no faster on 2 cores)")
    ap.add_argument(
        "--crash-labels",
        type=int,
        default=60,
        help="labels per annotator in the crash run (60 keeps the whole benchmark near 3 minutes)",
    )
    ap.add_argument("--skip-crash", action="store_true")
    ap.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator's HTTP client: raw (a minimal keep-alive client, cheap on CPU) or httpx",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="annotate-load-"))
    db = args.db or str(tmp / "labels.db")
    store = Store(db)
    migrate(store)
    n_tasks = args.annotators * args.labels // args.overlap + args.labels * 2
    port = free_port()
    server = ServerProcess(db, port, tmp / "server.log", args.overlap, args.workers)
    results = {}
    try:
        sessions = setup(store, "load", args.annotators, n_tasks)
        server.start()
        run = Run()
        load_before = os.getloadavg()
        server_cpu0, client_cpu0 = server.cpu_seconds(), time.process_time()
        seconds = run_async(drive(server.url, sessions, args.labels, run, client=args.client))
        server_cpu, client_cpu = server.cpu_seconds() - server_cpu0, time.process_time() - client_cpu0
        load_after = os.getloadavg()
        results["load"] = (run, seconds, verify(store, [u for u, _ in sessions], run))

        if not args.skip_crash:
            crash_labels = args.crash_labels
            sessions = setup(
                store, "crash", args.annotators, args.annotators * crash_labels // args.overlap + crash_labels * 2
            )
            crash = Run()
            target = args.annotators * crash_labels
            restart = {}

            async def killer():
                while len(crash.acked) < 0.4 * target:
                    await asyncio.sleep(0.01)
                restart["killed_at"] = len(crash.acked)
                server.kill9()
                restart["restart_s"] = await asyncio.to_thread(server.start)

            seconds = run_async(drive(server.url, sessions, crash_labels, crash, killer, client=args.client))
            results["crash"] = (crash, seconds, verify(store, [u for u, _ in sessions], crash), restart)
    finally:
        server.stop()
        store.dispose()

    run, seconds, check = results["load"]
    print(
        f"\nannotation service load test: {args.annotators} annotators x {args.labels} labels, "
        f"{store.dialect}, {args.workers} server workers, {args.client} client, server log {server.log}"
    )
    print(
        f"{'phase':<8}{'labels':>8}{'seconds':>9}{'labels/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'lost':>6}{'dup':>5}{'retries':>9}{'errors':>8}"
    )
    for name, res in results.items():
        run, seconds, check = res[:3]
        print(
            f"{name:<8}{check['acknowledged']:>8}{seconds:>9.1f}{check['acknowledged'] / seconds:>10.1f}"
            f"{pct(run.latencies, 0.5):>9.1f}{pct(run.latencies, 0.95):>9.1f}{pct(run.latencies, 0.99):>9.1f}"
            f"{check['lost']:>6}{check['duplicated']:>5}{run.retries:>9}{len(run.errors):>8}"
        )
    acked = results["load"][2]["acknowledged"] or 1
    print(
        f"load phase CPU: server {server_cpu * 1000 / acked:.2f} ms/label ({server_cpu:.1f} s), load generator "
        f"{client_cpu * 1000 / acked:.2f} ms/label ({client_cpu:.1f} s); load average before "
        f"{' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in load_after)} "
        f"({os.cpu_count()} CPUs)"
    )
    if "crash" in results:
        crash, _, check, restart = results["crash"]
        print(
            f"crash: SIGKILL after {restart['killed_at']} acknowledged labels; restarted in {restart['restart_s']:.1f} s; "
            f"{crash.replayed} retried submissions were answered from the stored label (replayed), "
            f"{check['unacknowledged_stored']} stored labels never acknowledged, n_labels counters consistent: "
            f"{check['counter_ok']}"
        )
    expected = {"load": args.annotators * args.labels, "crash": args.annotators * args.crash_labels}
    bad = [
        n
        for n, res in results.items()
        if res[2]["lost"]
        or res[2]["duplicated"]
        or res[0].errors
        or res[2]["unacknowledged_stored"]
        or res[2]["acknowledged"] != expected[n]
    ]
    if bad:
        for n in bad:
            print(f"{n}: FAILED {results[n][2]} errors {results[n][0].errors[:3]}")
        sys.exit(1)
    print("OK: every acknowledged label stored exactly once")


if __name__ == "__main__":
    main()
