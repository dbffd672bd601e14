"""Admin API: people (create, invite, role, deactivate, end sessions), projects, task upload, dashboard
figures, export."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Request, Response

from rlhfkit.feedback.auth import AuthError, create_invite, create_user, require
from rlhfkit.feedback.dashboard import stats
from rlhfkit.feedback.export import build_records, label_rows
from rlhfkit.feedback.projects import ProjectError, create_project, update_project
from rlhfkit.feedback.routes_label import ProjectName, project_of
from rlhfkit.feedback.schemas import (
    LoadOut,
    ProjectChange,
    ProjectDetail,
    ProjectIn,
    UserAdminOut,
    UserChange,
    UserCreate,
    UserCreated,
    UserOut,
)
from rlhfkit.feedback.tasks import TaskError, add_tasks, parse_task
from rlhfkit.feedback.users import UserError, change_user, end_sessions, find_user, list_users

admin = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require("admin"))])
Username = Annotated[str, Path(max_length=80)]


def _user_error(e: UserError | ProjectError) -> HTTPException:
    return HTTPException(e.status, str(e))


@admin.get("/users", response_model=list[UserAdminOut])
def get_users(request: Request) -> list[UserAdminOut]:
    with request.app.state.store.read() as db:
        return [UserAdminOut(**u) for u in list_users(db)]


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


@admin.patch(
    "/users/{username}",
    response_model=UserAdminOut,
    summary="Change a role or deactivate / reactivate (deactivating ends the account's sessions)",
)
def patch_user(username: Username, body: UserChange, request: Request) -> UserAdminOut:
    with request.app.state.store.write() as db:
        try:
            change_user(db, username, body.role, body.active)
        except UserError as e:
            raise _user_error(e) from None
        db.commit()
        return UserAdminOut(**next(u for u in list_users(db) if u["username"] == username))


@admin.post("/users/{username}/revoke", summary="End every session of a user (they must log in again)")
def revoke(username: Username, request: Request) -> dict:
    with request.app.state.store.write() as db:
        try:
            ended = end_sessions(db, username)
        except UserError as e:
            raise _user_error(e) from None
        db.commit()
    return {"username": username, "sessions_ended": ended}


@admin.post(
    "/users/{username}/invite",
    summary="A new invite token for an existing user; their older invites and sessions end",
)
def new_invite(username: Username, request: Request) -> dict:
    with request.app.state.store.write() as db:
        try:
            user = find_user(db, username)
        except UserError as e:
            raise _user_error(e) from None
        token = create_invite(db, user)
        db.commit()
    return {"username": username, "invite_token": token}


@admin.post("/projects", response_model=ProjectDetail, status_code=201, summary="Create a project")
def add_project(body: ProjectIn, request: Request) -> ProjectDetail:
    with request.app.state.store.write() as db:
        try:
            p = create_project(db, body.name, body.title, body.guidelines, body.suggestions)
        except ProjectError as e:
            raise _user_error(e) from None
        db.commit()
        return ProjectDetail(name=p.name, title=p.title, suggestions=p.suggestions, guidelines=p.guidelines)


@admin.patch("/projects/{name}", response_model=ProjectDetail, summary="Change a project's title, guidelines, settings")
def patch_project(name: Annotated[str, Path(max_length=80)], body: ProjectChange, request: Request) -> ProjectDetail:
    with request.app.state.store.write() as db:
        try:
            p = update_project(db, name, body.title, body.guidelines, body.suggestions)
        except ProjectError as e:
            raise _user_error(e) from None
        db.commit()
        request.app.state.projects.forget(name)
        return ProjectDetail(name=p.name, title=p.title, suggestions=p.suggestions, guidelines=p.guidelines)


@admin.post(
    "/tasks", response_model=LoadOut, status_code=201, summary="Load tasks into a project (rows as in the JSONL file)"
)
def load_tasks(request: Request, rows: list[dict] = Body(...), project: ProjectName = None) -> LoadOut:
    info = project_of(request, project)
    try:
        tasks = [parse_task(f"request body item {i + 1}", row) for i, row in enumerate(rows)]
    except TaskError as e:
        raise HTTPException(422, str(e)) from None
    with request.app.state.store.write() as db:
        try:
            added, skipped = add_tasks(db, info.id, tasks, request.app.state.scorer)
        except ValueError as e:  # the scorer returned something unusable
            raise HTTPException(422, f"scorer: {e}") from None
        db.commit()
        return LoadOut(added=len(added), skipped_existing=skipped, task_ids=[t.id for t in added])


@admin.get("/stats", summary="Dashboard figures: totals, agreement, per-annotator throughput and gold accuracy")
def get_stats(request: Request, project: ProjectName = None) -> dict:
    info = project_of(request, project)
    with request.app.state.store.read() as db:
        return stats(db, info.id, request.app.state.settings.overlap)


@admin.get(
    "/export",
    summary="A project's labels as JSONL in a trainer's format",
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def export(
    request: Request,
    project: ProjectName = None,
    kind: Literal["comparison", "ranking", "rating"] = "comparison",
    aggregate: Literal["none", "majority"] = "none",
    drop_ties: bool = False,
    include_gold: bool = False,
) -> Response:
    info = project_of(request, project)
    with request.app.state.store.read() as db:
        records = build_records(kind, label_rows(db, info.id, include_gold), aggregate, drop_ties)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    filename = f"{info.name}-{kind}.jsonl"  # both parts checked against fixed patterns
    return Response(
        body, media_type="application/x-ndjson", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
