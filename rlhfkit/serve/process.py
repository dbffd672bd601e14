"""``rlhfkit serve`` as a child process: for the demo, the benchmarks and the tests, which talk to it over HTTP
as any client would (and may kill it with SIGKILL and start it again).

    with ServerProcess("prod.db", "--refresh", "0.5") as server:
        httpx.post(server.url + "/v1/chat/completions", json=...)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, db: str, *args: str, log: str | Path | None = None, port: int | None = None,
                 env: dict | None = None):  # fmt: skip
        self.db, self.args, self.env = db, args, env or {}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log else Path(db).with_suffix(f".serve-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> ServerProcess:
        import httpx

        cmd = [sys.executable, "-m", "rlhfkit.cli", "serve", "--db", self.db, "--port", str(self.port), *self.args]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **self.env}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rlhfkit serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                health = httpx.get(self.url + "/healthz", timeout=2)
                if health.status_code == 200 and health.json().get("ready", True):  # its models loaded
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"rlhfkit serve did not answer /healthz in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log_file", None):
            self._log_file.close()

    def cpu_seconds(self) -> float | None:
        """The server's CPU time so far (user + system, from /proc), for per-request costs."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError, AttributeError):
            return None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
