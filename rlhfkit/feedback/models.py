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


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


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
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    prompt: Mapped[str] = mapped_column(Text)
    responses: Mapped[list] = mapped_column(JSON)
    scale: Mapped[int] = mapped_column(Integer, default=5)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_answer: Mapped[dict | None] = mapped_column(JSON)
    meta: Mapped[dict | None] = mapped_column(JSON)
    # Reward-model scores (members x K) and the two active-learning priorities derived from them,
    # computed once at load time so choosing the next item is a plain indexed query.
    scores: Mapped[list | None] = mapped_column(JSON)
    uncertainty: Mapped[float | None] = mapped_column(Float)
    disagreement: Mapped[float | None] = mapped_column(Float)
    # Labels stored so far; kept in the same transaction as each insert so "fewer than k" is cheap.
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
    flags: Mapped[dict | None] = mapped_column(JSON)  # {"0": ["harmful"], ...} by response index
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    review_status: Mapped[str | None] = mapped_column(String(16))  # None, "accepted" or "rejected"
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


Index("ix_tasks_queue", Task.is_gold, Task.n_labels)
Index("ix_assignments_user", Assignment.user_id)
