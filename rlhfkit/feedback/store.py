"""What the service does with the database: load tasks, hand out the next item, store labels.

Every function takes an open SQLAlchemy session and leaves committing to the caller, except
``submit_label`` and ``next_task``, which commit themselves because their guarantees (one label per
idempotency key; a lease before the item is shown) are only true once committed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from rlhfkit.feedback import active
from rlhfkit.feedback.models import KINDS, Assignment, Label, Task, User, utcnow
from rlhfkit.feedback.questions import AnswerError, validate_answer, validate_flags


class TaskError(ValueError):
    """A task row that cannot be loaded; the message names the file:line and the field."""


class LabelConflict(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- loading tasks


def parse_task(location: str, raw: Any) -> Task:
    """One JSONL row -> an unsaved Task. Rows look like
    ``{"prompt": ..., "responses": [...], "kind": "pairwise", "scale": 5, "id": ..., "gold": {...}}``;
    ``completions`` is accepted for ``responses`` (the ranking file's name for them)."""
    if not isinstance(raw, dict):
        raise TaskError(f"{location}: expected a JSON object, got {type(raw).__name__}")
    responses = raw.get("responses", raw.get("completions"))
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise TaskError(f"{location}: field 'prompt': must be a non-empty string")
    if (
        not isinstance(responses, list)
        or len(responses) < 2
        or not all(isinstance(r, str) and r.strip() for r in responses)
    ):
        raise TaskError(f"{location}: field 'responses': must be a list of at least 2 non-empty strings")
    kind = raw.get("kind", "pairwise" if len(responses) == 2 else "ranking")
    if kind not in KINDS:
        raise TaskError(f"{location}: field 'kind': '{kind}' is not one of {', '.join(KINDS)}")
    if kind == "pairwise" and len(responses) != 2:
        raise TaskError(f"{location}: field 'responses': a pairwise task needs exactly 2, got {len(responses)}")
    scale = raw.get("scale", 5)
    if not isinstance(scale, int) or isinstance(scale, bool) or not 2 <= scale <= 10:
        raise TaskError(f"{location}: field 'scale': must be an integer 2..10, got {scale!r}")
    gold = raw.get("gold")
    if gold is not None:
        try:
            gold = validate_answer(kind, gold, len(responses), scale)
        except AnswerError as e:
            raise TaskError(f"{location}: field 'gold': {e}") from None
    ext = raw.get("id")
    return Task(
        external_id=None if ext is None else str(ext),
        kind=kind,
        prompt=prompt,
        responses=responses,
        scale=scale,
        is_gold=gold is not None,
        gold_answer=gold,
        meta=raw.get("meta"),
        n_labels=0,
        created_at=utcnow(),
    )


def read_task_file(path: Path) -> list[Task]:
    tasks = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            tasks.append(parse_task(f"{path}:{lineno}", raw))
    if not tasks:
        raise TaskError(f"{path}: no tasks in the file")
    return tasks


def apply_scores(task: Task, scorer: active.Scorer) -> None:
    scores = active.check_scores(
        scorer(task.prompt, list(task.responses)), len(task.responses), f"task '{task.external_id or task.prompt[:40]}'"
    )
    task.scores = scores
    task.uncertainty = active.uncertainty(scores)
    task.disagreement = active.disagreement(scores)


def add_tasks(db: Session, tasks: Iterable[Task], scorer: active.Scorer | None = None) -> tuple[list[Task], int]:
    """Insert tasks, skipping any whose external id is already stored. Returns (added tasks with their
    new ids, number skipped)."""
    tasks = list(tasks)
    ids = [t.external_id for t in tasks if t.external_id is not None]
    known = set(db.scalars(select(Task.external_id).where(Task.external_id.in_(ids)))) if ids else set()
    added = []
    for task in tasks:
        if task.external_id in known:
            continue
        if task.external_id is not None:
            known.add(task.external_id)
        if scorer is not None:
            apply_scores(task, scorer)
        db.add(task)
        added.append(task)
    db.flush()
    return added, len(tasks) - len(added)


# ---------------------------------------------------------------- the queue


def display_order(task_id: int, user_id: int, k: int) -> list[int]:
    """Responses in a random order that stays the same for this annotator and item (so a reload does
    not reshuffle), and differs between annotators, so position bias averages out."""
    order = list(range(k))
    random.Random(f"{task_id}:{user_id}").shuffle(order)
    return order


@dataclass
class QueueSettings:
    strategy: str = "round-robin"
    overlap: int = 3  # labels wanted per (non-gold) item
    gold_rate: float = 0.0  # chance that the next item is a gold item
    lease_seconds: int = 600  # how long a served item is held for its annotator


# The queue's statements are built once, with bound parameters (user_id, now, overlap): building
# SQLAlchemy expressions costs more CPU than running these queries, and this runs on every request.
_mine = aliased(Assignment, name="mine")
_NOT_DONE = and_(
    ~exists().where(Label.task_id == Task.id, Label.annotator_id == bindparam("user_id")).correlate(Task),
    # An alias, correlated on Task only: the outer query may itself join Assignment.
    ~exists()
    .where(_mine.task_id == Task.id, _mine.user_id == bindparam("user_id"), _mine.skipped.is_(True))
    .correlate(Task),
)
_OTHERS_HOLDING = (
    select(func.count())
    .select_from(Assignment)
    .where(
        Assignment.task_id == Task.id,
        Assignment.user_id != bindparam("user_id"),
        Assignment.skipped.is_(False),
        Assignment.expires_at > bindparam("now"),
    )
    .correlate(Task)
    .scalar_subquery()
)
ELIGIBLE = and_(Task.is_gold.is_(False), _NOT_DONE, Task.n_labels + _OTHERS_HOLDING < bindparam("overlap"))
_TASK_COLS = (Task.id, Task.kind, Task.prompt, Task.responses, Task.scale)  # what serving an item needs
_LEASED = (
    select(*_TASK_COLS)
    .join(Assignment, Assignment.task_id == Task.id)
    .where(
        Assignment.user_id == bindparam("user_id"),
        Assignment.skipped.is_(False),
        Assignment.expires_at > bindparam("now"),
        _NOT_DONE,
    )
    .limit(1)
)
_GOLD = select(*_TASK_COLS).where(Task.is_gold.is_(True), _NOT_DONE).order_by(func.random()).limit(1)
_QUEUE = {
    name: select(*_TASK_COLS).where(ELIGIBLE).order_by(*active.order_for(name)).limit(1) for name in active.STRATEGIES
}
_ASSIGNMENTS = Assignment.__table__


def _lease_statement(dialect: str):
    """Take or renew the lease in one statement (an upsert) where the database has one."""
    values = {
        "task_id": bindparam("task_id"),
        "user_id": bindparam("user_id"),
        "skipped": False,
        "expires_at": bindparam("expires_at"),
    }
    if dialect in ("sqlite", "postgresql"):
        from importlib import import_module

        insert = import_module(f"sqlalchemy.dialects.{dialect}").insert
        stmt = insert(_ASSIGNMENTS).values(values)
        return stmt.on_conflict_do_update(
            index_elements=["task_id", "user_id"], set_={"expires_at": stmt.excluded.expires_at}
        )
    return None


_LEASE = {d: _lease_statement(d) for d in ("sqlite", "postgresql")}
_RENEW = (
    update(_ASSIGNMENTS)
    .where(_ASSIGNMENTS.c.task_id == bindparam("task_id"), _ASSIGNMENTS.c.user_id == bindparam("user_id"))
    .values(expires_at=bindparam("expires_at"))
)


def lease_next(conn: Connection, user_id: int, settings: QueueSettings, rng: random.Random | None = None):
    """Pick the next item for ``user_id`` and write its lease, in the caller's transaction (the caller
    commits). Returns a row (id, kind, prompt, responses, scale) or None when nothing is left."""
    if settings.strategy not in _QUEUE:
        raise ValueError(f"strategy '{settings.strategy}': must be one of {', '.join(_QUEUE)}")
    now = utcnow()
    rng = rng or random
    params = {"user_id": user_id, "now": now, "overlap": settings.overlap}
    # An item already leased to this user and not yet labelled comes back first (e.g. after a reload).
    row = conn.execute(_LEASED, params).first()
    if row is None and settings.gold_rate > 0 and rng.random() < settings.gold_rate:
        row = conn.execute(_GOLD, params).first()
    if row is None:
        row = conn.execute(_QUEUE[settings.strategy], params).first()
    if row is None:
        return None
    lease = {"task_id": row.id, "user_id": user_id, "expires_at": now + timedelta(seconds=settings.lease_seconds)}
    upsert = _LEASE.get(conn.dialect.name)
    if upsert is not None:
        conn.execute(upsert, lease)
    elif conn.execute(_RENEW, lease).rowcount == 0:
        conn.execute(_ASSIGNMENTS.insert(), {**lease, "skipped": False})
    return row


def next_task(db: Session, user: User, settings: QueueSettings, rng: random.Random | None = None) -> Task | None:
    """Pick (and lease) the next item for ``user``; commits. None when nothing is left for them."""
    row = lease_next(db.connection(), user.id, settings, rng)
    db.commit()
    if row is None:
        return None
    # The lease was written with Core: bring a copy this session already holds up to date.
    lease = db.identity_map.get(identity_key(Assignment, (row.id, user.id)))
    if lease is not None:
        db.refresh(lease)
    return db.get(Task, row.id)


def skip_task(db: Session, user: User, task_id: int) -> None:
    lease = db.get(Assignment, (task_id, user.id))
    if lease is None:
        raise LabelConflict(404, f"task {task_id}: was not served to you, so there is nothing to skip")
    lease.skipped = True
    db.commit()


_OPEN = and_(Task.is_gold.is_(False), Task.n_labels < bindparam("overlap"))
_PROGRESS = select(
    select(func.count()).select_from(Label).where(Label.annotator_id == bindparam("user_id")).scalar_subquery(),
    select(func.count()).select_from(Task).where(_OPEN).scalar_subquery(),
    select(func.count())
    .select_from(Label)
    .join(Task, Task.id == Label.task_id)
    .where(Label.annotator_id == bindparam("user_id"), _OPEN)
    .scalar_subquery(),
    select(func.count())
    .select_from(Assignment)
    .join(Task, Task.id == Assignment.task_id)
    .where(Assignment.user_id == bindparam("user_id"), Assignment.skipped.is_(True), _OPEN)
    .scalar_subquery(),
)


def progress(db: Session | Connection, user: User, settings: QueueSettings) -> dict:
    """Labels done, and items left: open items (fewer than k labels) this user has not labelled or
    skipped. Leases are ignored here: counting them per item would cost a scan on every request."""
    conn = db.connection() if isinstance(db, Session) else db
    done, open_tasks, mine, skipped = conn.execute(_PROGRESS, {"user_id": user.id, "overlap": settings.overlap}).one()
    return {"done": done, "remaining": max(0, open_tasks - mine - skipped)}


# ---------------------------------------------------------------- labels

_LABELS = Label.__table__
_LABEL_COLS = (
    _LABELS.c.id,
    _LABELS.c.task_id,
    _LABELS.c.idempotency_key,
    _LABELS.c.answer,
    _LABELS.c.reason,
    _LABELS.c.flags,
    _LABELS.c.duration_ms,
    _LABELS.c.review_status,
    _LABELS.c.created_at,
    _LABELS.c.updated_at,
)
# One query finds both a replay (same key) and an earlier label for this item (another key).
_EARLIER = select(*_LABEL_COLS).where(
    _LABELS.c.annotator_id == bindparam("user_id"),
    or_(_LABELS.c.idempotency_key == bindparam("key"), _LABELS.c.task_id == bindparam("task_id")),
)
_TASK_AND_LEASE = select(
    Task.kind,
    Task.responses,
    Task.scale,
    exists()
    .where(Assignment.task_id == Task.id, Assignment.user_id == bindparam("user_id"))
    .correlate(Task)
    .label("served"),
).where(Task.id == bindparam("task_id"))
_INSERT_LABEL = _LABELS.insert()
_COUNT_LABEL = update(Task.__table__).where(Task.id == bindparam("task_id")).values(n_labels=Task.n_labels + 1)
_END_LEASE = delete(_ASSIGNMENTS).where(
    _ASSIGNMENTS.c.task_id == bindparam("task_id"), _ASSIGNMENTS.c.user_id == bindparam("user_id")
)


def _label_dict(row) -> dict:
    return {
        k: getattr(row, k)
        for k in (
            "id",
            "task_id",
            "answer",
            "reason",
            "flags",
            "duration_ms",
            "review_status",
            "created_at",
            "updated_at",
        )
    }


def store_label(
    conn: Connection,
    user_id: int,
    key: str,
    task_id: int,
    answer: Any,
    reason: str | None,
    flags: Any,
    duration_ms: int | None,
) -> tuple[dict, bool]:
    """Write one label in the caller's transaction (the caller commits; the label counts as stored
    only then). Returns (the label's fields, replayed).

    A repeated ``key`` from the same annotator returns the label already stored under it (replayed =
    True) and writes nothing, whether the first request's answer reached the client or not. A race
    with a concurrent twin surfaces as IntegrityError from the INSERT: roll back and call
    ``stored_after_conflict``.
    """
    if not key or len(key) > 100:
        raise LabelConflict(400, "header Idempotency-Key: required, 1-100 characters (e.g. a UUID per submission)")
    earlier = conn.execute(_EARLIER, {"user_id": user_id, "key": key, "task_id": task_id}).all()
    for stored in earlier:
        if stored.idempotency_key == key:
            if stored.task_id != task_id:
                raise LabelConflict(
                    422,
                    f"Idempotency-Key '{key}': already used for task {stored.task_id}, "
                    f"not {task_id}; use a new key per submission",
                )
            return _label_dict(stored), True
    if earlier:
        raise LabelConflict(
            409,
            f"task {task_id}: you labelled it already (label {earlier[0].id}); "
            f"PUT /api/labels/{earlier[0].id} to change it",
        )
    task = conn.execute(_TASK_AND_LEASE, {"task_id": task_id, "user_id": user_id}).first()
    if task is None:
        raise LabelConflict(404, f"task {task_id}: no such task")
    if not task.served:
        # On PostgreSQL a concurrent twin may have committed (and ended the lease) since the first
        # query: then this is a replay, not a label for an item never served.
        again = conn.execute(_EARLIER, {"user_id": user_id, "key": key, "task_id": task_id}).first()
        if again is not None and again.idempotency_key == key and again.task_id == task_id:
            return _label_dict(again), True
        raise LabelConflict(403, f"task {task_id}: was not served to you; GET /api/next for your next item")
    try:
        answer = validate_answer(task.kind, answer, len(task.responses), task.scale)
        flags = validate_flags(flags, len(task.responses))
    except AnswerError as e:
        raise LabelConflict(422, str(e)) from None
    now = utcnow()
    label = {
        "task_id": task_id,
        "annotator_id": user_id,
        "idempotency_key": key,
        "answer": answer,
        "reason": reason or None,
        "flags": flags,
        "created_at": now,
        "updated_at": now,
        "review_status": None,
        "duration_ms": None if duration_ms is None else max(0, min(int(duration_ms), 3_600_000)),
    }
    # The INSERT: on PostgreSQL a concurrent twin waits here, then fails the unique check.
    label["id"] = conn.execute(_INSERT_LABEL, label).inserted_primary_key[0]
    conn.execute(_COUNT_LABEL, {"task_id": task_id})
    conn.execute(_END_LEASE, {"task_id": task_id, "user_id": user_id})
    del label["annotator_id"], label["idempotency_key"]
    return label, False


def stored_after_conflict(conn: Connection, user_id: int, key: str, task_id: int) -> tuple[dict, bool]:
    """After an IntegrityError (and a rollback): a concurrent request with the same key (or for the
    same task) won the race; return its row."""
    stored = conn.execute(_EARLIER, {"user_id": user_id, "key": key, "task_id": task_id}).first()
    if stored is None:
        raise LabelConflict(500, f"task {task_id}: the label could not be stored; retry with the same key")
    if stored.idempotency_key != key:
        raise LabelConflict(409, f"task {task_id}: you labelled it already (label {stored.id})")
    return _label_dict(stored), True


def submit_label(
    db: Session,
    user: User,
    key: str,
    task_id: int,
    answer: Any,
    reason: str | None,
    flags: Any,
    duration_ms: int | None,
) -> tuple[Label, bool]:
    """Store one label and commit; returns (label, replayed). See ``store_label``."""
    try:
        stored, replayed = store_label(db.connection(), user.id, key, task_id, answer, reason, flags, duration_ms)
        db.commit()
    except IntegrityError:
        db.rollback()
        stored, replayed = stored_after_conflict(db.connection(), user.id, key, task_id)
        db.commit()
    if not replayed:  # written with Core: bring copies this session already holds up to date
        lease = db.identity_map.get(identity_key(Assignment, (task_id, user.id)))
        if lease is not None:
            db.expunge(lease)
        task = db.identity_map.get(identity_key(Task, task_id))
        if task is not None and "n_labels" in task.__dict__:
            set_committed_value(task, "n_labels", task.n_labels + 1)
    return db.get(Label, stored["id"]), replayed


def update_label(db: Session, user: User, label_id: int, answer: Any, reason: str | None, flags: Any) -> Label:
    label = db.get(Label, label_id)
    # Another annotator's label looks exactly like a missing one: its existence is not theirs to know.
    if label is None or (label.annotator_id != user.id and user.role != "admin"):
        raise LabelConflict(404, f"label {label_id}: no such label among yours")
    task = db.get(Task, label.task_id)
    try:
        label.answer = validate_answer(task.kind, answer, len(task.responses), task.scale)
        label.flags = validate_flags(flags, len(task.responses))
    except AnswerError as e:
        raise LabelConflict(422, str(e)) from None
    label.reason = reason or None
    label.updated_at = utcnow()
    db.commit()
    return label
