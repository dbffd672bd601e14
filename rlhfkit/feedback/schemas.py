"""Request and response bodies of the HTTP API (they also make the OpenAPI document at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class LoginIn(BaseModel):
    username: str = Field(max_length=80)
    password: str = Field(max_length=1000)


class InviteIn(BaseModel):
    token: str = Field(max_length=200)
    password: str | None = Field(None, max_length=1000, description="set a password for later logins")


class UserOut(BaseModel):
    id: int
    username: str
    role: str


class SessionOut(BaseModel):
    user: UserOut
    token: str = Field(description="also set as an HttpOnly cookie; scripts send it as 'Authorization: Bearer'")
    expires_at: datetime


class ResponseOut(BaseModel):
    index: int = Field(description="the response's index in the task; answers refer to responses by it")
    text: str


class Progress(BaseModel):
    done: int
    remaining: int


class TaskOut(BaseModel):
    id: int
    kind: Literal["pairwise", "ranking", "rating", "thumbs"]
    prompt: str
    responses: list[ResponseOut] = Field(description="in the order to show them (shuffled per annotator)")
    scale: int


class NextOut(BaseModel):
    task: TaskOut | None
    progress: Progress


class LabelIn(BaseModel):
    task_id: int
    answer: dict[str, Any] = Field(
        description='e.g. {"choice": 0}, {"ranking": [2, 0, 1]}, {"ratings": [4, 2]}, {"thumbs": [true, false]}'
    )
    reason: str | None = Field(None, max_length=10_000)
    flags: dict[str, list[str]] | None = Field(None, description='by response index: {"1": ["harmful"]}')
    duration_ms: int | None = Field(None, ge=0, description="time the annotator spent on the item")


class LabelUpdate(BaseModel):
    answer: dict[str, Any]
    reason: str | None = Field(None, max_length=10_000)
    flags: dict[str, list[str]] | None = None


class LabelOut(BaseModel):
    id: int
    task_id: int
    annotator: str
    answer: dict[str, Any]
    reason: str | None
    flags: dict[str, list[str]] | None
    duration_ms: int | None
    review_status: str | None
    created_at: datetime
    updated_at: datetime


class UserCreate(BaseModel):
    username: str = Field(max_length=80)
    role: Literal["annotator", "reviewer", "admin"] = "annotator"
    password: str | None = Field(None, max_length=1000, description="leave out to get an invite token instead")


class UserCreated(BaseModel):
    user: UserOut
    invite_token: str | None


class LoadOut(BaseModel):
    added: int
    skipped_existing: int
    task_ids: list[int] = Field(description="ids of the added tasks, in the order given")


class ReviewIn(BaseModel):
    status: Literal["accepted", "rejected"]
