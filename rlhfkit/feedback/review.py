"""The review queue and an annotator's own history, filtered and paged in SQL.

The review queue lists labels (one row per label, with its item's prompt and every response text, the
answer, flags and reason), never the reviewer's own. Filters: review status, question type, annotator
and a focus: labels whose item's standing labels disagree, labels that carry flags, either ("needs
attention", the default), or all. Each page also carries, for its items, the other labels on them, so
a reviewer sees what the disagreement is about. Only one page of labels is read per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Text, and_, cast, distinct, exists, func, or_, select
from sqlalchemy.orm import aliased

from rlhfkit.feedback.models import KINDS, Label, Task, User
from rlhfkit.feedback.store import LABEL_FIELDS

STATUSES = ("pending", "accepted", "rejected", "any")
FOCUS = ("attention", "disagree", "flagged", "all")
_standing = aliased(Label, name="standing")
_reviewer = aliased(User, name="reviewer")


@dataclass
class QueueFilter:
    status: str = "pending"
    focus: str = "attention"
    kind: str | None = None
    annotator: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status: must be one of {', '.join(STATUSES)}")
        if self.focus not in FOCUS:
            raise ValueError(f"focus: must be one of {', '.join(FOCUS)}")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind: must be one of {', '.join(KINDS)}")


def _disagreeing(project_id: int):
    """Items of the project whose standing (not rejected) labels give more than one distinct answer.
    Answers are stored canonically (``questions.validate_answer``), so equal answers have equal text."""
    return (
        select(_standing.task_id)
        .join(Task, Task.id == _standing.task_id)
        .where(
            Task.project_id == project_id,
            or_(_standing.review_status.is_(None), _standing.review_status != "rejected"),
        )
        .group_by(_standing.task_id)
        .having(func.count(distinct(cast(_standing.answer, Text))) > 1)
    )


def _label(row) -> dict:
    return {name: getattr(row, name) for name in LABEL_FIELDS}


def _task(row) -> dict:
    return {
        "id": row.task_id,
        "kind": row.kind,
        "prompt": row.prompt,
        "messages": row.messages,
        "responses": list(row.responses),
        "scale": row.scale,
    }


def review_queue(
    conn: Connection, project_id: int, reviewer_id: int, where: QueueFilter, limit: int, offset: int
) -> dict:
    """{"total": n, "items": [{"label": {...}, "annotator", "reviewed_by", "task": {...}, "others": [...]}]}"""
    conditions = [Task.project_id == project_id, Task.is_gold.is_(False), Label.annotator_id != reviewer_id]
    if where.status == "pending":
        conditions.append(Label.review_status.is_(None))
    elif where.status != "any":
        conditions.append(Label.review_status == where.status)
    if where.kind is not None:
        conditions.append(Task.kind == where.kind)
    if where.annotator is not None:
        conditions.append(User.username == where.annotator)
    flagged = Label.flags.is_not(None)
    disagree = Label.task_id.in_(_disagreeing(project_id))
    focus = {"attention": or_(flagged, disagree), "flagged": flagged, "disagree": disagree}.get(where.focus)
    if focus is not None:
        conditions.append(focus)
    joined = (
        select(Label.id)
        .join(Task, Task.id == Label.task_id)
        .join(User, User.id == Label.annotator_id)
        .where(and_(*conditions))
    )
    total = conn.execute(select(func.count()).select_from(joined.subquery())).scalar_one()
    rows = conn.execute(
        select(
            *(getattr(Label, name) for name in LABEL_FIELDS),
            User.username.label("annotator"),
            _reviewer.username.label("reviewer"),
            Label.reviewed_at,
            Task.kind,
            Task.prompt,
            Task.messages,
            Task.responses,
            Task.scale,
        )
        .join(Task, Task.id == Label.task_id)
        .join(User, User.id == Label.annotator_id)
        .outerjoin(_reviewer, _reviewer.id == Label.reviewed_by)
        .where(and_(*conditions))
        .order_by(Label.task_id, Label.id)
        .limit(limit)
        .offset(offset)
    ).all()
    others: dict[int, list[dict]] = {}
    task_ids = sorted({r.task_id for r in rows})
    if task_ids:
        for o in conn.execute(
            select(Label.id, Label.task_id, Label.answer, Label.review_status, User.username)
            .join(User, User.id == Label.annotator_id)
            .where(Label.task_id.in_(task_ids))
            .order_by(Label.id)
        ):
            others.setdefault(o.task_id, []).append(
                {"id": o.id, "annotator": o.username, "answer": o.answer, "review_status": o.review_status}
            )
    items = [
        {
            "label": _label(r),
            "annotator": r.annotator,
            "reviewed_by": r.reviewer,
            "reviewed_at": r.reviewed_at,
            "task": _task(r),
            "others": [o for o in others.get(r.task_id, []) if o["id"] != r.id],
        }
        for r in rows
    ]
    return {"total": total, "items": items}


def history(conn: Connection, user_id: int, project_id: int, limit: int, offset: int) -> dict:
    """One annotator's labels in a project, newest first, each with its item: {"total", "items"}."""
    # The project as a correlated EXISTS, so the user's label index drives both queries (see
    # store._PROGRESS: a join filtered on the project makes SQLite walk the project's tasks).
    task = aliased(Task, name="own_task")  # not the joined Task below, so it stays inside the EXISTS
    in_project = exists().where(task.id == Label.task_id, task.project_id == project_id)
    conditions = and_(Label.annotator_id == user_id, in_project)
    total = conn.execute(select(func.count()).select_from(Label).where(conditions)).scalar_one()
    rows = conn.execute(
        select(
            *(getattr(Label, name) for name in LABEL_FIELDS),
            Task.kind,
            Task.prompt,
            Task.messages,
            Task.responses,
            Task.scale,
        )
        .join(Task, Task.id == Label.task_id)
        .where(conditions)
        .order_by(Label.created_at.desc(), Label.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return {"total": total, "items": [{"label": _label(r), "task": _task(r)} for r in rows]}
