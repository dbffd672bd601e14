"""Labelling API: projects, the next item, submitting, reading and changing one's own labels, skipping."""

from __future__ import annotations

from contextlib import nullcontext
from datetime import timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from rlhfkit.feedback.auth import RANK, current_user
from rlhfkit.feedback.limits import MAX_ID, Clean
from rlhfkit.feedback.models import Label, Project, Task, User
from rlhfkit.feedback.projects import ProjectError, get_project
from rlhfkit.feedback.review import history
from rlhfkit.feedback.schemas import (
    HistoryPage,
    LabelIn,
    LabelOut,
    LabelUpdate,
    NextOut,
    Progress,
    ProjectDetail,
    ProjectOut,
    ResponseOut,
    TaskOut,
)
from rlhfkit.feedback.store import (
    LabelConflict,
    display_order,
    lease_next,
    progress,
    skip_task,
    store_label,
    stored_after_conflict,
    update_label,
)

router = APIRouter(prefix="/api", tags=["labelling"])
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
ProjectName = Annotated[Clean | None, Query(max_length=80, description="project name (default: 'default')")]
Key = r"^[\x21-\x7e]{1,100}$"  # printable ASCII: a UUID or similar


def label_out(label, username: str) -> LabelOut:
    get = label.get if isinstance(label, dict) else label.__getattribute__
    # Stored as naive UTC; say so in the output.
    return LabelOut(
        id=get("id"),
        task_id=get("task_id"),
        annotator=username,
        answer=get("answer"),
        reason=get("reason"),
        flags=get("flags"),
        duration_ms=get("duration_ms"),
        review_status=get("review_status"),
        suggestion_accepted=get("suggestion_accepted"),
        created_at=get("created_at").replace(tzinfo=timezone.utc),
        updated_at=get("updated_at").replace(tzinfo=timezone.utc),
    )


def task_out(task, user: User, suggestions: bool) -> TaskOut:
    order = display_order(task.id, user.id, len(task.responses))
    return TaskOut(
        id=task.id,
        kind=task.kind,
        prompt=task.prompt,
        messages=task.messages,
        scale=task.scale,
        responses=[ResponseOut(index=i, text=task.responses[i]) for i in order],
        suggestion=task.suggestion if suggestions else None,
    )


def project_of(request: Request, name: str | None):
    try:
        return request.app.state.projects.get(name)
    except ProjectError as e:
        raise HTTPException(e.status, str(e)) from None


def _json(model, status_code: int = 200, headers: dict | None = None) -> Response:
    # The model is built and checked already: returning a Response skips FastAPI's second validation
    # of it against response_model (which stays declared for the OpenAPI document).
    return Response(model.model_dump_json(), status_code=status_code, headers=headers, media_type="application/json")


@router.get("/projects", response_model=list[ProjectOut], summary="The projects one can label in")
def list_projects(request: Request, user: User = Depends(current_user)) -> list[ProjectOut]:
    with request.app.state.store.read() as db:
        rows = db.scalars(select(Project).order_by(Project.name))
        return [ProjectOut(name=p.name, title=p.title, suggestions=p.suggestions) for p in rows]


@router.get("/projects/{name}", response_model=ProjectDetail, summary="A project with its guidelines")
def project_detail(
    name: Annotated[str, Path(max_length=80)], request: Request, user: User = Depends(current_user)
) -> ProjectDetail:
    with request.app.state.store.read() as db:
        try:
            info = get_project(db, name)
        except ProjectError as e:
            raise HTTPException(e.status, str(e)) from None
        project = db.get(Project, info.id)
        return ProjectDetail(
            name=project.name, title=project.title, suggestions=project.suggestions, guidelines=project.guidelines
        )


# The two endpoints every label goes through are async: reads run through Store.run (inline on
# SQLite), writes through Store.transact (group commit on SQLite): no threadpool hand-off per request
# and no fsync on the event loop.


def _progress(store, user: User, project_id: int, settings) -> dict:
    with store.read_conn() as conn:
        return progress(conn, user, project_id, settings)


@router.get("/next", response_model=NextOut, summary="The next item for me (leased to me for a while)")
async def get_next(request: Request, project: ProjectName = None, user: User = Depends(current_user)):
    store, settings = request.app.state.store, request.app.state.settings
    info = project_of(request, project)
    counts = await store.run(_progress, store, user, info.id, settings)
    # Only a lease is written: not durable (losing it in an OS crash just serves the item again).
    row = await store.transact(lease_next, user.id, info.id, settings, durable=False)
    task = task_out(row, user, info.suggestions) if row else None
    return _json(NextOut(task=task, progress=Progress(**counts)))


def _submit(conn, user_id: int, key: str, body: LabelIn) -> tuple[dict, bool]:
    args = (user_id, key, body.task_id)
    # On PostgreSQL a failed INSERT aborts the transaction, so it runs in a savepoint; on SQLite a
    # failed statement undoes only itself (and writers are serialised, so the race hardly arises).
    try:
        with nullcontext() if conn.dialect.name == "sqlite" else conn.begin_nested():
            return store_label(conn, *args, body.answer, body.reason, body.flags, body.duration_ms)
    except IntegrityError:  # a concurrent twin won the race; its row is the answer
        return stored_after_conflict(conn, *args)


@router.post(
    "/labels",
    response_model=LabelOut,
    status_code=201,
    summary="Submit a label (idempotent)",
    responses={200: {"description": "a retry: the label already stored under this Idempotency-Key"}},
)
async def post_label(
    body: LabelIn,
    request: Request,
    user: User = Depends(current_user),
    idempotency_key: str = Header(
        description="a fresh random key per submission (printable ASCII, up to 100 characters); "
        "a retry with the same key returns the stored label",
        pattern=Key,
    ),
):
    store = request.app.state.store
    try:
        # Returns once committed with synchronous=FULL (on disk), possibly together with other labels.
        label, replayed = await store.transact(_submit, user.id, idempotency_key, body)
    except LabelConflict as e:
        raise HTTPException(e.status, str(e)) from None
    if replayed:
        return _json(label_out(label, user.username), 200, {"Idempotent-Replayed": "true"})
    return _json(label_out(label, user.username), 201)


@router.get("/labels", response_model=list[LabelOut], summary="My labels (reviewers and admins: anyone's)")
def list_labels(
    request: Request,
    user: User = Depends(current_user),
    annotator: Annotated[Clean | None, Query(max_length=80)] = None,
    task_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[LabelOut]:
    query = select(Label, User.username).join(User, User.id == Label.annotator_id)
    if RANK[user.role] < RANK["reviewer"]:
        if annotator not in (None, user.username):
            raise HTTPException(403, "an annotator may list only their own labels")
        query = query.where(Label.annotator_id == user.id)
    elif annotator is not None:
        query = query.where(User.username == annotator)
    if task_id is not None:
        query = query.where(Label.task_id == task_id)
    query = query.order_by(Label.id).limit(limit).offset(offset)
    with request.app.state.store.read() as db:
        return [label_out(label, name) for label, name in db.execute(query)]


@router.get("/labels/{label_id}", response_model=LabelOut, summary="One label (yours, or any for reviewers)")
def get_label(label_id: IdPath, request: Request, user: User = Depends(current_user)) -> LabelOut:
    with request.app.state.store.read() as db:
        row = db.execute(
            select(Label, User.username).join(User, User.id == Label.annotator_id).where(Label.id == label_id)
        ).first()
    # Another annotator's label answers like a missing one, so ids reveal nothing.
    if row is None or (row.Label.annotator_id != user.id and RANK[user.role] < RANK["reviewer"]):
        raise HTTPException(404, f"label {label_id}: no such label among yours")
    return label_out(row.Label, row.username)


@router.put(
    "/labels/{label_id}", response_model=LabelOut, summary="Change one of my labels (it goes back to the review queue)"
)
def put_label(label_id: IdPath, body: LabelUpdate, request: Request, user: User = Depends(current_user)) -> LabelOut:
    with request.app.state.store.write() as db:
        try:
            label = update_label(db, user, label_id, body.answer, body.reason, body.flags)
        except LabelConflict as e:
            raise HTTPException(e.status, str(e)) from None
        owner = db.get(User, label.annotator_id).username
    return label_out(label, owner)


@router.get(
    "/tasks/{task_id}", response_model=TaskOut, summary="An item I labelled (to change my label); reviewers: any item"
)
def get_task(task_id: IdPath, request: Request, user: User = Depends(current_user)) -> TaskOut:
    with request.app.state.store.read() as db:
        task = db.get(Task, task_id)
        mine = db.scalar(select(Label.id).where(Label.task_id == task_id, Label.annotator_id == user.id))
        if task is None or (mine is None and RANK[user.role] < RANK["reviewer"]):
            raise HTTPException(404, f"task {task_id}: no such task among those you labelled")
        shows = db.get(Project, task.project_id).suggestions
        return task_out(task, user, shows)


@router.get("/history", response_model=HistoryPage, summary="My labels in a project, newest first, with their items")
def my_history(
    request: Request,
    project: ProjectName = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    user: User = Depends(current_user),
) -> HistoryPage:
    info = project_of(request, project)
    with request.app.state.store.read_conn() as conn:
        page = history(conn, user.id, info.id, limit, offset)
    items = [{"label": label_out(i["label"], user.username), "task": i["task"]} for i in page["items"]]
    return HistoryPage(total=page["total"], limit=limit, offset=offset, items=items)


@router.post("/tasks/{task_id}/skip", status_code=204, summary="Skip an item served to me")
def skip(task_id: IdPath, request: Request, user: User = Depends(current_user)) -> Response:
    with request.app.state.store.write(durable=False) as db:
        try:
            skip_task(db, user, task_id)
        except LabelConflict as e:
            raise HTTPException(e.status, str(e)) from None
    return Response(status_code=204)
