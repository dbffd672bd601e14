"""In-process helpers for store-level tests: a migrated SQLite file and quick ways to add labels."""

from __future__ import annotations

import uuid

from rlhfkit.feedback.auth import create_user
from rlhfkit.feedback.db import Store, migrate
from rlhfkit.feedback.store import QueueSettings, add_tasks, next_task, parse_task, submit_label


def new_store(tmp_path) -> Store:
    store = Store(str(tmp_path / "labels.db"))
    migrate(store)
    return store


def users(store: Store, *names: str, role: str = "annotator"):
    with store.write() as db:
        out = [create_user(db, name, role) for name in names]
        db.commit()
        return out


def tasks(store: Store, rows: list[dict], scorer=None) -> list[int]:
    with store.write() as db:
        added, _ = add_tasks(db, [parse_task(f"row {i}", r) for i, r in enumerate(rows)], scorer)
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


def serve(store: Store, user, **settings):
    with store.write() as db:
        task = next_task(db, user, QueueSettings(**settings))
        return None if task is None else task.id
