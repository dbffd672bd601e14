"""Admin API (users, tasks, dashboard figures, export) and the reviewer queue."""

from __future__ import annotations

import json
from collections import defaultdict

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response
from sqlalchemy import select

from rlhfkit.feedback.auth import AuthError, create_invite, create_user, require
from rlhfkit.feedback.dashboard import stats
from rlhfkit.feedback.export import AGGREGATES, EXPORT_KINDS, build_records, label_rows
from rlhfkit.feedback.models import Label, Task, User
from rlhfkit.feedback.routes_label import label_out
from rlhfkit.feedback.schemas import LabelOut, LoadOut, ReviewIn, UserCreate, UserCreated, UserOut
from rlhfkit.feedback.store import TaskError, add_tasks, parse_task

admin = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require("admin"))])
review = APIRouter(prefix="/api/review", tags=["review"], dependencies=[Depends(require("reviewer"))])


@admin.get("/users", response_model=list[UserOut])
def list_users(request: Request) -> list[UserOut]:
    with request.app.state.store.read() as db:
        return [UserOut(id=u.id, username=u.username, role=u.role) for u in db.scalars(select(User).order_by(User.id))]


@admin.post(
    "/users",
    response_model=UserCreated,
    status_code=201,
    summary="Create a user; without a password an invite token is returned",
)
def add_user(body: UserCreate, request: Request) -> UserCreated:
    with request.app.state.store.write() as db:
        try:
            user = create_user(db, body.username, body.role, body.password)
        except AuthError as e:
            raise HTTPException(409 if "taken" in str(e) else 422, str(e)) from None
        token = None if body.password else create_invite(db, user)
        db.commit()
        return UserCreated(user=UserOut(id=user.id, username=user.username, role=user.role), invite_token=token)


@admin.post("/users/{username}/invite", summary="A new invite token for an existing user")
def new_invite(username: str, request: Request) -> dict:
    with request.app.state.store.write() as db:
        user = db.scalar(select(User).where(User.username == username))
        if user is None:
            raise HTTPException(404, f"user '{username}': no such user")
        token = create_invite(db, user)
        db.commit()
    return {"username": username, "invite_token": token}


@admin.post("/tasks", response_model=LoadOut, status_code=201, summary="Load tasks (same rows as the JSONL file)")
def load_tasks(request: Request, rows: list[dict] = Body(...)) -> LoadOut:
    try:
        tasks = [parse_task(f"request body item {i + 1}", row) for i, row in enumerate(rows)]
    except TaskError as e:
        raise HTTPException(422, str(e)) from None
    with request.app.state.store.write() as db:
        added, skipped = add_tasks(db, tasks, request.app.state.scorer)
        db.commit()
        return LoadOut(added=len(added), skipped_existing=skipped, task_ids=[t.id for t in added])


@admin.get("/stats", summary="Dashboard figures: totals, agreement, per-annotator throughput and gold accuracy")
def get_stats(request: Request) -> dict:
    with request.app.state.store.read() as db:
        return stats(db, request.app.state.settings.overlap)


@admin.get(
    "/export",
    summary="Labels as JSONL in a trainer's format",
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def export(
    request: Request,
    kind: str = "comparison",
    aggregate: str = "none",
    drop_ties: bool = False,
    include_gold: bool = False,
) -> Response:
    if kind not in EXPORT_KINDS or aggregate not in AGGREGATES:
        raise HTTPException(
            422,
            f"kind must be one of {EXPORT_KINDS} and aggregate one of {AGGREGATES}; "
            f"got kind={kind!r}, aggregate={aggregate!r}",
        )
    with request.app.state.store.read() as db:
        records = build_records(kind, label_rows(db, include_gold), aggregate, drop_ties)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return Response(
        body, media_type="application/x-ndjson", headers={"Content-Disposition": f'attachment; filename="{kind}.jsonl"'}
    )


@review.get("/queue", summary="Items whose labels disagree or carry flags, with all their labels")
def queue(request: Request, limit: int = 50) -> list[dict]:
    with request.app.state.store.read() as db:
        rows = db.execute(
            select(Label, User.username, Task)
            .join(User, User.id == Label.annotator_id)
            .join(Task, Task.id == Label.task_id)
            .where(Task.is_gold.is_(False))
            .order_by(Label.task_id, Label.id)
        ).all()
    by_task: dict[int, dict] = {}
    labels: dict[int, list[LabelOut]] = defaultdict(list)
    for label, username, task in rows:
        by_task[task.id] = {"task_id": task.id, "kind": task.kind, "prompt": task.prompt, "responses": task.responses}
        labels[task.id].append(label_out(label, username))
    items = []
    for task_id, item in by_task.items():
        answers = {json.dumps(lab.answer, sort_keys=True) for lab in labels[task_id]}
        flagged = any(lab.flags for lab in labels[task_id])
        if len(answers) > 1 or flagged:
            items.append(
                {
                    **item,
                    "disagree": len(answers) > 1,
                    "flagged": flagged,
                    "labels": [lab.model_dump(mode="json") for lab in labels[task_id]],
                }
            )
    return items[: max(1, min(limit, 500))]


@review.post("/labels/{label_id}", response_model=LabelOut, summary="Accept or reject a label (rejected: not exported)")
def set_review(label_id: int, body: ReviewIn, request: Request) -> LabelOut:
    with request.app.state.store.write() as db:
        label = db.get(Label, label_id)
        if label is None:
            raise HTTPException(404, f"label {label_id}: no such label")
        label.review_status = body.status
        db.commit()
        return label_out(label, db.get(User, label.annotator_id).username)
