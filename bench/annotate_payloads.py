"""The attacks of issue 14, each sent to a real server: what does it answer? Prints a markdown table.

    python bench/annotate_payloads.py                                        # SQLite in a temp folder
    python bench/annotate_payloads.py --db postgresql://user@127.0.0.1:5432/empty_db

Every payload the issue lists (a wrong-password flood, an off-site `next`, a 100 MB login body, a 422
that echoes its input, `task_id=2**70`, a NUL character), and the neighbours of each, is sent to a server
subprocess over HTTP. For each the table gives the status, whether the answer repeats any of what was
sent (every hostile value carries a marker that is searched for in the answer), and for the large bodies
the server's resident memory before and after. `tests/feedback/test_attacks.py` asserts the same answers;
this prints them, for the docs. Exits 1 if any answer is a 5xx or repeats its input.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotate_load import ServerProcess, free_port  # noqa: E402

from rlhfkit.feedback.auth import create_user, start_session  # noqa: E402
from rlhfkit.feedback.db import Store, migrate  # noqa: E402
from rlhfkit.feedback.models import Task  # noqa: E402
from rlhfkit.feedback.projects import get_project  # noqa: E402

MARK = "M4RK-" + uuid.uuid4().hex[:8]  # inside every hostile value; must never come back


def rss_mb(server: ServerProcess) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw(server: ServerProcess, head: str, body: bytes = b"", chunked_mb: int = 0) -> tuple[int, bytes]:
    """Send bytes as they are (httpx would refuse or fix some of these), return (status, answer)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(head.encode() + body)
        if chunked_mb:  # keep sending until the server answers or the bytes run out
            s.settimeout(0.05)
            reply, chunk = b"", b"a" * (64 << 10)
            for _ in range(chunked_mb * 16):
                try:
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    reply = s.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if reply:
                    break
            s.settimeout(30)
        else:
            reply = b""
        reply = reply or s.recv(4096)
    return int(reply.split(b" ", 2)[1]), reply


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=None, help="database URL (default: a SQLite file in a temp folder)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="annotate-payloads-"))
    db = args.db or str(tmp / "labels.db")
    store = Store(db)
    migrate(store)
    with store.write() as s:
        create_user(s, "victim", "annotator", "right-password")
        admin = create_user(s, "boss", "admin")
        ann = create_user(s, "ann", "annotator")
        s.add(Task(project_id=get_project(s, None).id, kind="pairwise", prompt="p", responses=["a", "b"], n_labels=0))
        s.flush()
        admin_token = start_session(s, admin.id, hours=2)[0]
        ann_token = start_session(s, ann.id, hours=2)[0]
        s.commit()
    server = ServerProcess(db, free_port(), tmp / "server.log", overlap=1, workers=1)
    server.start()
    rows: list[tuple[str, str, str, str]] = []  # payload, route, answer, note
    bad = False

    def record(payload: str, route: str, status: int, text: str, note: str = "") -> None:
        nonlocal bad
        echoed = MARK in text
        bad |= status >= 500 or echoed
        rows.append((payload, route, f"{status}" + (" (echoes input)" if echoed else ""), note))

    def client(token: str | None = None, address: str = "127.0.0.1") -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.HTTPTransport(local_address=address)
        return httpx.Client(base_url=server.url, headers=headers, transport=transport, timeout=30)

    def json_post(c: httpx.Client, url: str, body: bytes, **headers) -> httpx.Response:
        return c.post(url, content=body, headers={"Content-Type": "application/json", **headers})

    try:
        # 1. Wrong passwords, as fast as answered, from one address: 401 until the budgets are spent, then 429.
        with client(address="127.9.0.2") as c:
            codes = []
            for n in range(12):
                r = c.post("/api/auth/login", json={"username": "victim", "password": f"wrong-{MARK}-{n}"})
                codes.append(r.status_code)
                if MARK in r.text:
                    bad = True
            first429 = codes.index(429) + 1 if 429 in codes else None
            record(
                "12 wrong passwords for one account",
                "POST /api/auth/login",
                r.status_code,
                r.text,
                f"401 x {codes.count(401)}, then 429 from attempt {first429} (Retry-After: {r.headers.get('retry-after')})",
            )
            r = c.post("/api/auth/login", json={"username": "victim", "password": "right-password"})
            record("then the right password, same account", "POST /api/auth/login", r.status_code, r.text)
        with client(address="127.9.0.3") as c:
            # 10 failures at once, then one per 20 s: under load (hashing gets only idle CPU) the
            # attempts are slow enough for the bucket to refill a little, hence a loop to the first 429.
            codes, t0 = [], time.monotonic()
            while 429 not in codes and len(codes) < 40:
                r = c.post("/api/auth/login", json={"username": f"nobody{len(codes)}", "password": MARK})
                codes.append(r.status_code)
            record(
                "wrong logins from one address, a new account name each",
                "POST /api/auth/login",
                r.status_code,
                r.text,
                f"401 x {codes.count(401)} in {time.monotonic() - t0:.0f} s, then 429 "
                f"(Retry-After: {r.headers.get('retry-after')})",
            )
        with client(address="127.9.0.4") as c:
            r = c.post("/api/auth/login", json={"username": "victim2", "password": "x" * 9})
            record("meanwhile, another address", "POST /api/auth/login", r.status_code, r.text, "not affected")

        # 2. Redirects after login.
        for target in ("/%5Cexample.org/", "//evil.example", "https://evil.example", "/%09/evil.example"):
            r = httpx.get(server.url + "/login", params={"next": target})
            where = r.headers.get("location", "")
            record(f"`/login?next={target}`", "GET /login", r.status_code, r.text, f"Location: `{where or '-'}`")
        r = httpx.get(server.url + "/login", params={"next": "/review?project=x"})
        record("`/login?next=/review?project=x`", "GET /login", r.status_code, r.text, "kept")

        # 3. Big bodies: refused before they are read, so the server's memory does not grow.
        before = rss_mb(server)
        status, reply = raw(
            server,
            f"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 << 20}\r\n\r\n",
            b"{" * 1000,
        )
        record(
            "a 100 MB body (Content-Length), no account",
            "POST /api/auth/login",
            status,
            reply.decode(errors="replace"),
            f"server RSS {before:.0f} -> {rss_mb(server):.0f} MB",
        )
        before = rss_mb(server)
        status, reply = raw(
            server,
            "POST /api/labels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {ann_token}\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunked_mb=100,
        )
        record(
            "up to 100 MB chunked (no Content-Length)",
            "POST /api/labels",
            status,
            reply.decode(errors="replace"),
            f"server RSS {before:.0f} -> {rss_mb(server):.0f} MB",
        )

        # 4. 422s name the field, never the value.
        with client() as c:
            r = c.post("/api/auth/login", json={"username": ["x"], "password": {"p": MARK + "-my-password"}})
            record("wrong types in a login", "POST /api/auth/login", r.status_code, r.text, r.text[:70])
        with client(ann_token) as c:
            key = {"Idempotency-Key": uuid.uuid4().hex}
            r = c.post("/api/labels", json={"task_id": MARK, "answer": MARK}, headers=key)
            record("a label of wrong types", "POST /api/labels", r.status_code, r.text)

            # 5. Out-of-range numbers.
            for body, what in (
                (b'{"task_id": 1180591620717411303424, "answer": {"choice": 0}}', "`task_id` = 2**70"),
                (b'{"task_id": 2147483648, "answer": {"choice": 0}}', "`task_id` = 2**31"),
                (b'{"task_id": 1, "answer": {"choice": 0}, "duration_ms": 1e400}', "a number that overflows"),
                (b'{"task_id": NaN, "answer": {}}', "NaN"),
                (b'{"task_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON nested 100,000 deep"),
                (b'{"task_id": 1, "answer": {"choice": 0}', "truncated JSON"),
            ):
                r = json_post(c, "/api/labels", body, **{"Idempotency-Key": uuid.uuid4().hex})
                record(what, "POST /api/labels", r.status_code, r.text)
            r = c.get("/api/labels/1180591620717411303424")
            record("a label id of 2**70", "GET /api/labels/{id}", r.status_code, r.text)

            # 6. Text neither database can store.
            for text, what in ((MARK + "\x00", "a NUL character"), ("\udc80" + MARK, "an unpaired surrogate")):
                body = json.dumps({"task_id": 1, "answer": {"choice": 0}, "reason": text}).encode()
                r = json_post(c, "/api/labels", body, **{"Idempotency-Key": uuid.uuid4().hex})
                record(f"{what} in a reason", "POST /api/labels", r.status_code, r.text)
        with client(admin_token) as c:
            body = json.dumps([{"prompt": MARK + "\x00", "responses": ["a", "b"]}]).encode()
            r = json_post(c, "/api/admin/tasks", body)
            record("a NUL character in a task", "POST /api/admin/tasks", r.status_code, r.text)
            r = c.get("/api/review/queue", params={"annotator": MARK + "\x00"})
            record("a NUL character in a query", "GET /api/review/queue", r.status_code, r.text)
        with client() as c:
            body = json.dumps({"username": "\x00" + MARK, "password": "x" * 9}).encode()
            r = json_post(c, "/api/auth/login", body)
            record("a NUL character in a username", "POST /api/auth/login", r.status_code, r.text)
    finally:
        server.stop()
        store.dispose()

    print(f"\nhostile input against the annotation server, {store.dialect}\n")
    print("| payload | route | answer | note |\n| --- | --- | --- | --- |")
    for payload, route, answer, note in rows:
        print(f"| {payload} | `{route}` | {answer} | {note.replace('|', '/')} |")
    print(f"\n{len(rows)} payloads; 5xx or echoed input: {'YES' if bad else 'none'}")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
