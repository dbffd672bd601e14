"""In-process helpers for store-level tests: a migrated SQLite file and quick ways to add labels."""

from __future__ import annotations

import uuid

from rlhfkit.feedback.auth import create_user
from rlhfkit.feedback.db import Store, migrate
from rlhfkit.feedback.projects import get_project
from rlhfkit.feedback.store import QueueSettings, next_task, submit_label
from rlhfkit.feedback.tasks import add_tasks, parse_task


def new_store(tmp_path) -> Store:
    store = Store(str(tmp_path / "labels.db"))
    migrate(store)
    return store


def project_id(store: Store, name: str = "default") -> int:
    with store.read() as db:
        return get_project(db, name).id


def users(store: Store, *names: str, role: str = "annotator"):
    with store.write() as db:
        out = [create_user(db, name, role) for name in names]
        db.commit()
        return out


def tasks(store: Store, rows: list[dict], scorer=None, project: str = "default") -> list[int]:
    pid = project_id(store, project)
    with store.write() as db:
        added, _ = add_tasks(db, pid, [parse_task(f"row {i}", r) for i, r in enumerate(rows)], scorer)
        db.commit()
        return [t.id for t in added]


def label(store: Store, user, task_id: int, answer: dict, **extra) -> int:
    """Serve ``task_id`` to ``user`` (whatever the queue says) and store a label for it."""
    from rlhfkit.feedback.models import Assignment, utcnow

    with store.write() as db:
        if db.get(Assignment, (task_id, user.id)) is None:
            db.add(Assignment(task_id=task_id, user_id=user.id, expires_at=utcnow(), skipped=False))
            db.commit()
        stored, _ = submit_label(
            db,
            user,
            uuid.uuid4().hex,
            task_id,
            answer,
            extra.get("reason"),
            extra.get("flags"),
            extra.get("duration_ms"),
        )
        return stored.id


def serve(store: Store, user, project: str = "default", **settings):
    pid = project_id(store, project)
    with store.write() as db:
        task = next_task(db, user, pid, QueueSettings(**settings))
        return None if task is None else task.id
