"""Labelling API: the next item, submitting and reading one's own labels, skipping."""
from __future__ import annotations

from datetime import timezone

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from sqlalchemy import select

from rlhfkit.feedback.auth import RANK, current_user
from rlhfkit.feedback.models import Label, Task, User
from rlhfkit.feedback.schemas import LabelIn, LabelOut, LabelUpdate, NextOut, Progress, ResponseOut, TaskOut
from rlhfkit.feedback.store import (LabelConflict, display_order, next_task, progress, skip_task, submit_label,
                                    update_label)

router = APIRouter(prefix="/api", tags=["labelling"])


def label_out(label: Label, username: str) -> LabelOut:
    # Stored as naive UTC; say so in the output.
    return LabelOut(id=label.id, task_id=label.task_id, annotator=username, answer=label.answer,
                    reason=label.reason, flags=label.flags, duration_ms=label.duration_ms,
                    review_status=label.review_status, created_at=label.created_at.replace(tzinfo=timezone.utc),
                    updated_at=label.updated_at.replace(tzinfo=timezone.utc))


def task_out(task: Task, user: User) -> TaskOut:
    order = display_order(task.id, user.id, len(task.responses))
    return TaskOut(id=task.id, kind=task.kind, prompt=task.prompt, scale=task.scale,
                   responses=[ResponseOut(index=i, text=task.responses[i]) for i in order])


@router.get("/next", response_model=NextOut, summary="The next item for me (leased to me for a while)")
def get_next(request: Request, user: User = Depends(current_user)) -> NextOut:
    store, settings = request.app.state.store, request.app.state.settings
    with store.write(durable=False) as db:  # only a lease is written
        task = next_task(db, user, settings)
        out = task_out(task, user) if task else None
    with store.read() as db:
        return NextOut(task=out, progress=Progress(**progress(db, user, settings)))


@router.post("/labels", response_model=LabelOut, status_code=201, summary="Submit a label (idempotent)",
             responses={200: {"description": "a retry: the label already stored under this Idempotency-Key"}})
def post_label(body: LabelIn, request: Request, response: Response, user: User = Depends(current_user),
               idempotency_key: str = Header("", description="a fresh random key per submission; a retry "
                                                             "with the same key returns the stored label")):
    with request.app.state.store.write() as db:
        try:
            label, replayed = submit_label(db, user, idempotency_key, body.task_id, body.answer, body.reason,
                                           body.flags, body.duration_ms)
        except LabelConflict as e:
            raise HTTPException(e.status, str(e)) from None
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return label_out(label, user.username)


@router.get("/labels", response_model=list[LabelOut], summary="My labels (reviewers and admins: anyone's)")
def list_labels(request: Request, user: User = Depends(current_user), annotator: str | None = None,
                task_id: int | None = None, limit: int = 100, offset: int = 0) -> list[LabelOut]:
    query = select(Label, User.username).join(User, User.id == Label.annotator_id)
    if RANK[user.role] < RANK["reviewer"]:
        if annotator not in (None, user.username):
            raise HTTPException(403, f"annotator '{user.username}' may list only their own labels")
        query = query.where(Label.annotator_id == user.id)
    elif annotator is not None:
        query = query.where(User.username == annotator)
    if task_id is not None:
        query = query.where(Label.task_id == task_id)
    query = query.order_by(Label.id).limit(min(max(limit, 1), 1000)).offset(max(offset, 0))
    with request.app.state.store.read() as db:
        return [label_out(label, name) for label, name in db.execute(query)]


@router.get("/labels/{label_id}", response_model=LabelOut, summary="One label (yours, or any for reviewers)")
def get_label(label_id: int, request: Request, user: User = Depends(current_user)) -> LabelOut:
    with request.app.state.store.read() as db:
        row = db.execute(select(Label, User.username).join(User, User.id == Label.annotator_id)
                         .where(Label.id == label_id)).first()
    # Another annotator's label answers like a missing one, so ids reveal nothing.
    if row is None or (row.Label.annotator_id != user.id and RANK[user.role] < RANK["reviewer"]):
        raise HTTPException(404, f"label {label_id}: no such label among yours")
    return label_out(row.Label, row.username)


@router.put("/labels/{label_id}", response_model=LabelOut, summary="Change one of my labels")
def put_label(label_id: int, body: LabelUpdate, request: Request, user: User = Depends(current_user)) -> LabelOut:
    with request.app.state.store.write() as db:
        try:
            label = update_label(db, user, label_id, body.answer, body.reason, body.flags)
        except LabelConflict as e:
            raise HTTPException(e.status, str(e)) from None
        owner = db.get(User, label.annotator_id).username
    return label_out(label, owner)


@router.post("/tasks/{task_id}/skip", status_code=204, summary="Skip an item served to me")
def skip(task_id: int, request: Request, user: User = Depends(current_user)) -> Response:
    with request.app.state.store.write(durable=False) as db:
        try:
            skip_task(db, user, task_id)
        except LabelConflict as e:
            raise HTTPException(e.status, str(e)) from None
    return Response(status_code=204)
