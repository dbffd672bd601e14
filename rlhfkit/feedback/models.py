"""Database tables of the annotation service (SQLAlchemy 2 declarative).

The schema itself is created and changed only by the Alembic migrations in ``migrations/``; these
classes must match the latest migration (``tests/feedback/test_store.py`` checks that they do).

Times are stored as naive UTC datetimes so SQLite and PostgreSQL round-trip them the same way.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("annotator", "reviewer", "admin")
KINDS = ("pairwise", "ranking", "rating", "thumbs")
FLAGS = ("harmful", "untrue", "unhelpful")


def storable(text: str) -> bool:
    """Whether a string can be stored in (and compared by) both databases: PostgreSQL refuses NUL
    characters, and neither driver can encode a lone UTF-16 surrogate (JSON allows "\\udc80")."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Project(Base):
    """A labelling project: its own tasks, guidelines and settings; users and roles are shared."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    title: Mapped[str | None] = mapped_column(String(200))
    guidelines: Mapped[str | None] = mapped_column(Text)  # markdown, shown on the guidelines page
    # Whether a model's suggested answer (tasks.suggestion) is pre-filled for annotators. Off by default:
    # a pre-filled answer anchors people, so a project turns it on knowingly.
    suggestions: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


DEFAULT_PROJECT = "default"  # created by migration 0002; where tasks go when no project is named


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    # Null until the user sets one: invited users log in with their invite token first.
    password_hash: Mapped[str | None] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Invite(Base):
    __tablename__ = "invites"
    # Only a hash of the token is kept, so a leaked database does not leak usable invites.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime)


class AuthSession(Base):
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Task(Base):
    """A prompt with K candidate responses and the question asked about them."""

    __tablename__ = "tasks"
    # The task file's own id is unique within a project, so one file can be loaded into two projects.
    __table_args__ = (UniqueConstraint("project_id", "external_id", name="uq_tasks_project_external"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    external_id: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    # The prompt as text; for a conversation, a plain rendering of it ("user: ...") that scorers and
    # lists use, while ``messages`` keeps the turns themselves.
    prompt: Mapped[str] = mapped_column(Text)
    messages: Mapped[list | None] = mapped_column(JSON(none_as_null=True))  # [{"role", "content"}, ...]
    responses: Mapped[list] = mapped_column(JSON)  # K response texts
    models: Mapped[list | None] = mapped_column(JSON(none_as_null=True))  # the model of each response, or null
    scale: Mapped[int] = mapped_column(Integer, default=5)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_answer: Mapped[dict | None] = mapped_column(JSON)
    meta: Mapped[dict | None] = mapped_column(JSON)
    # Reward-model scores (members x K) and the two active-learning priorities derived from them,
    # computed once at load time so choosing the next item is a plain indexed query.
    scores: Mapped[list | None] = mapped_column(JSON)
    uncertainty: Mapped[float | None] = mapped_column(Float)
    disagreement: Mapped[float | None] = mapped_column(Float)
    # An answer a model suggests (derived from the scores, or given in the task file), pre-filled for
    # annotators where the project shows suggestions.
    suggestion: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))
    # Labels that count towards the overlap: stored and not rejected by a reviewer. Kept in the same
    # transaction as each insert and review so "fewer than k" is cheap, and a rejection re-queues.
    n_labels: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        # A retried submission (same key from the same annotator) finds the stored label instead of
        # inserting a second one: this constraint is what makes retries safe after a crash.
        UniqueConstraint("annotator_id", "idempotency_key", name="uq_labels_idempotency"),
        UniqueConstraint("task_id", "annotator_id", name="uq_labels_task_annotator"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(100))
    answer: Mapped[dict] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)
    # {"0": ["harmful"], ...} by response index; SQL NULL when there are none, so "flagged" is IS NOT NULL
    flags: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    # None = waiting for review (new or edited since), "accepted" or "rejected"
    review_status: Mapped[str | None] = mapped_column(String(16))
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime)
    # The suggested answer the annotator was shown (null: none), and whether they kept it.
    suggestion: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))
    suggestion_accepted: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Assignment(Base):
    """An item handed to an annotator: a short lease (so k annotators are not all sent the same item
    at once) or a skip (so it is not offered to them again)."""

    __tablename__ = "assignments"
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)


Index("ix_tasks_queue", Task.project_id, Task.is_gold, Task.n_labels)
Index("ix_assignments_user", Assignment.user_id)
