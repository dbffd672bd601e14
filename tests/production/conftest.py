"""Fixtures for the production loop's tests: fake finished run folders for the registry, databases on SQLite and
PostgreSQL (the throwaway cluster of tests/feedback/conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rlhfkit.runs import Parent, RunCard
from tests.feedback.conftest import postgres  # noqa: F401  (a fixture, used by name)


def fake_run(root: Path, name: str, stage: str = "dpo", parents: list[Parent] = (), finished: bool = True) -> Path:
    """A run folder with a card and a final/ folder: what the registry reads (it never loads the model)."""
    folder = root / name
    (folder / "final").mkdir(parents=True)
    (folder / "final" / "weights.bin").write_bytes(name.encode() * 10)
    RunCard(
        id=f"{stage}-{name}-{time.time_ns() % 10**8:08d}",
        stage=stage,
        created="2026-12-01T10:00:00+0000",
        finished=finished,
        parents=list(parents),
        data={"train": {"path": str(root / f"{name}.jsonl"), "sha256_16": "ab" * 8}},
        figures={"eval_accuracy": 0.75},
    ).write(folder)
    return folder


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "prod.db")
    return request.getfixturevalue("postgres")()


def tiny_policy(root: Path, name: str, seed: int) -> Path:
    """A tiny random Llama saved as a model folder (different seeds answer differently)."""
    from rlhfkit.models.tiny import build_tiny

    folder = root / name
    if not (folder / "config.json").exists():
        model, tokenizer = build_tiny("tiny", seed=seed)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


class ServeServer:
    """A ``python -m rlhfkit.cli serve`` subprocess on ``db``."""

    def __init__(self, db: str, tmp: Path, *args: str, env: dict | None = None):
        from tests.feedback.conftest import free_port

        self.db, self.port, self.args, self.env = db, free_port(), args, env or {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        self.proc = None

    def start(self, timeout: float = 300) -> ServeServer:
        import os
        import subprocess
        import sys

        import httpx

        cmd = [sys.executable, "-m", "rlhfkit.cli", "serve", "--db", self.db, "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env})  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                health = httpx.get(self.url + "/healthz", timeout=1)
                if health.status_code == 200 and health.json().get("ready", True):  # its models loaded
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve did not answer /healthz in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        import subprocess

        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def chat(self, content: str, model: str = "champion", user: str | None = "u1", **extra):
        import httpx

        body = {"model": model, "messages": [{"role": "user", "content": content}], "user": user, **extra}
        return httpx.post(self.url + "/v1/chat/completions", json=body, timeout=120)

    def feedback(self, key: str | None = None, **body):
        import uuid

        import httpx

        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        return httpx.post(self.url + "/v1/feedback", json=body, headers=headers, timeout=60)
