"""Request and response bodies of the HTTP API (they also make the OpenAPI document at /docs).

Every string a request may carry is ``Clean`` (no NUL, no unpaired surrogate: neither database can
store those) and bounded; every id is a positive 32-bit integer (PostgreSQL's ``integer``), so an
out-of-range value is a 422 here rather than a database error later.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from rlhfkit.feedback.limits import MAX_ID, Clean

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Kind = Literal["pairwise", "ranking", "rating", "thumbs"]
Role = Literal["annotator", "reviewer", "admin"]


class LoginIn(BaseModel):
    username: Clean = Field(max_length=80)
    password: Clean = Field(max_length=1000)


class InviteIn(BaseModel):
    token: Clean = Field(max_length=200)
    password: Clean | None = Field(None, max_length=1000, description="set a password for later logins")


class PasswordIn(BaseModel):
    current_password: Clean = Field(max_length=1000)
    new_password: Clean = Field(min_length=8, max_length=1000)


class UserOut(BaseModel):
    id: int
    username: str
    role: str


class UserAdminOut(UserOut):
    active: bool
    has_password: bool
    sessions: int = Field(description="live sessions")


class UserChange(BaseModel):
    role: Role | None = None
    active: bool | None = Field(None, description="false deactivates the account and ends its sessions")


class SessionOut(BaseModel):
    user: UserOut
    token: str = Field(description="also set as an HttpOnly cookie; scripts send it as 'Authorization: Bearer'")
    expires_at: datetime


class ResponseOut(BaseModel):
    index: int = Field(description="the response's index in the task; answers refer to responses by it")
    text: str


class Message(BaseModel):
    role: str
    content: str


class Progress(BaseModel):
    done: int
    remaining: int


class TaskOut(BaseModel):
    id: int
    kind: Kind
    prompt: str
    messages: list[Message] | None = Field(None, description="the conversation so far, when the prompt is one")
    responses: list[ResponseOut] = Field(description="in the order to show them (shuffled per annotator)")
    scale: int
    suggestion: dict[str, Any] | None = Field(
        None, description="a model's suggested answer, pre-filled where the project shows suggestions"
    )


class NextOut(BaseModel):
    task: TaskOut | None
    progress: Progress


class LabelIn(BaseModel):
    task_id: Id
    answer: dict[str, Any] = Field(
        description='e.g. {"choice": 0}, {"ranking": [2, 0, 1]}, {"ratings": [4, 2]}, {"thumbs": [true, false]}'
    )
    reason: Clean | None = Field(None, max_length=10_000)
    flags: dict[str, list[str]] | None = Field(None, description='by response index: {"1": ["harmful"]}')
    duration_ms: int | None = Field(None, ge=0, le=MAX_ID, description="time the annotator spent on the item")


class LabelUpdate(BaseModel):
    answer: dict[str, Any]
    reason: Clean | None = Field(None, max_length=10_000)
    flags: dict[str, list[str]] | None = None


class LabelOut(BaseModel):
    id: int
    task_id: int
    annotator: str
    answer: dict[str, Any]
    reason: str | None
    flags: dict[str, list[str]] | None
    duration_ms: int | None
    review_status: str | None = Field(description="null while waiting for review (new, or edited since)")
    suggestion_accepted: bool | None = Field(
        None, description="null: no suggestion was shown; else whether the answer kept it"
    )
    created_at: datetime
    updated_at: datetime


class TaskView(BaseModel):
    """An item as reviewers and its own annotator see it afterwards: responses in their stored order."""

    id: int
    kind: Kind
    prompt: str
    messages: list[Message] | None
    responses: list[str]
    scale: int


class OtherLabel(BaseModel):
    id: int
    annotator: str
    answer: dict[str, Any]
    review_status: str | None


class ReviewItem(BaseModel):
    label: LabelOut
    reviewed_by: str | None
    reviewed_at: datetime | None
    task: TaskView
    others: list[OtherLabel] = Field(description="the item's other labels (for context)")


class ReviewPage(BaseModel):
    total: int = Field(description="labels matching the filters")
    limit: int
    offset: int
    items: list[ReviewItem]


class HistoryItem(BaseModel):
    label: LabelOut
    task: TaskView


class HistoryPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[HistoryItem]


class UserCreate(BaseModel):
    username: Clean = Field(max_length=80)
    role: Role = "annotator"
    password: Clean | None = Field(None, max_length=1000, description="leave out to get an invite token instead")


class UserCreated(BaseModel):
    user: UserOut
    invite_token: str | None


class LoadOut(BaseModel):
    added: int
    skipped_existing: int
    task_ids: list[int] = Field(description="ids of the added tasks, in the order given")


class ReviewIn(BaseModel):
    status: Literal["accepted", "rejected"]


class ProjectOut(BaseModel):
    name: str
    title: str | None
    suggestions: bool


class ProjectDetail(ProjectOut):
    guidelines: str | None = Field(description="markdown")


class ProjectIn(BaseModel):
    name: Clean = Field(max_length=80)
    title: Clean | None = Field(None, max_length=200)
    guidelines: Clean | None = Field(None, max_length=200_000)
    suggestions: bool = False


class ProjectChange(BaseModel):
    title: Clean | None = Field(None, max_length=200)
    guidelines: Clean | None = Field(None, max_length=200_000, description="markdown; an empty string clears it")
    suggestions: bool | None = None


class LeaderboardRowOut(BaseModel):
    model: str
    rating: float
    lo: float | None = Field(description="95% bootstrap interval")
    hi: float | None
    wins: int
    losses: int
    ties: int
    battles: int


class LeaderboardOut(BaseModel):
    project: str
    battles: int = Field(description="pairwise votes between two different models")
    n_bootstrap: int
    rows: list[LeaderboardRowOut]
