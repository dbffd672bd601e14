"""Fixtures for the annotation service: a real server process on a real database.

``server`` is parametrised over SQLite (a file) and PostgreSQL (a throwaway cluster started here
when ``initdb`` is installed; otherwise those cases are skipped with the reason).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from rlhfkit.feedback.auth import create_user
from rlhfkit.feedback.db import Store, migrate

ADMIN_PASSWORD = "admin-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``python -m rlhfkit.feedback.cli serve`` subprocess and clients for it."""

    def __init__(self, db: str, tmp: Path, *args: str):
        self.db, self.port = db, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        cmd = [
            sys.executable,
            "-m",
            "rlhfkit.feedback.cli",
            "serve",
            "--db",
            self.db,
            "--port",
            str(self.port),
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not answer /healthz in 60 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def client(self, token: str | None = None, *, cookie: bool = False) -> httpx.Client:
        """A new client (its own cookie jar), with a session token if given: as a bearer header, or with ``cookie``
        as the browser's session cookie. Its timeout is 30 s, not httpx's default 5: a login hashes with Argon2id
        (~0.3 s of CPU alone), and on a loaded 2-core machine it took longer than 5."""
        if cookie:
            return httpx.Client(base_url=self.url, cookies={"rlhfkit_session": token}, timeout=30)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One request without a session, from a fresh client closed after it (a login's cookie must not carry
        over to the next anonymous request)."""
        with self.client() as anonymous:
            return anonymous.request(method, path, **kwargs)

    def login(self, username: str, password: str) -> httpx.Client:
        r = self.request("POST", "/api/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return self.client(r.json()["token"])

    @property
    def admin(self) -> httpx.Client:
        if not hasattr(self, "_admin"):
            self._admin = self.login("admin", ADMIN_PASSWORD)
        return self._admin

    def new_user(self, role: str = "annotator", password: str = "a-good-password") -> tuple[str, httpx.Client]:
        name = f"{role[:3]}-{uuid.uuid4().hex[:8]}"
        r = self.admin.post("/api/admin/users", json={"username": name, "role": role, "password": password})
        assert r.status_code == 201, r.text
        return name, self.login(name, password)

    def load(self, rows: list[dict]) -> list[int]:
        r = self.admin.post("/api/admin/tasks", json=rows)
        assert r.status_code == 201, r.text
        return r.json()["task_ids"]

    def sql(self, query: str, **params) -> list[tuple]:
        """Run SQL on the database directly, to check (or age) what was really stored."""
        from sqlalchemy import text

        store = Store(self.db)
        try:
            with store.write() as db:
                result = db.execute(text(query), params)
                rows = [tuple(row) for row in result] if result.returns_rows else []
                db.commit()
                return rows
        finally:
            store.dispose()


def serve_until(client: httpx.Client, task_id: int, tries: int = 200) -> dict:
    """Ask for next items, skipping others, until ``task_id`` comes up (tests share one server)."""
    for _ in range(tries):
        r = client.get("/api/next")
        assert r.status_code == 200, r.text
        task = r.json()["task"]
        assert task is not None, f"task {task_id} was never served"
        if task["id"] == task_id:
            return task
        assert client.post(f"/api/tasks/{task['id']}/skip").status_code == 204
    raise AssertionError(f"task {task_id} not served in {tries} tries")


def bootstrap(db: str) -> None:
    store = Store(db)
    migrate(store)
    with store.write() as s:
        create_user(s, "admin", "admin", ADMIN_PASSWORD)
        s.commit()
    store.dispose()


# ---------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or (
        [shutil.which("initdb")] if shutil.which("initdb") else []
    )
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields a function that makes a fresh database URL."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb); scripts/install-system-deps.sh installs it")
    root = os.geteuid() == 0
    if root and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
    data = Path(f"/tmp/rlhfkit-pg-{uuid.uuid4().hex[:8]}")
    data.mkdir()
    as_pg = ["runuser", "-u", "postgres", "--"] if root else []
    if root:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        [*as_pg, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(
        [*as_pg, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", opts, "-l", str(data / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    import psycopg2

    counter = iter(range(10_000))

    def new_database() -> str:
        name = f"t{next(counter)}_{uuid.uuid4().hex[:6]}"
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute(f"CREATE DATABASE {name}")
        conn.close()
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    yield new_database
    subprocess.run(
        [*as_pg, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True
    )
    shutil.rmtree(data, ignore_errors=True)


def database(request, backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return str(tmp / "labels.db")
    return request.getfixturevalue("postgres")()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    db = database(request, request.param, tmp)
    bootstrap(db)
    # Tests are scripts that page through many items per second: the per-account API rate limit is off
    # here (test_limits.py checks it); the login limits stay on.
    srv = Server(db, tmp, "--overlap", "100", "--api-rate", "0").start()
    yield srv
    srv.stop()
