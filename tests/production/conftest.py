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
