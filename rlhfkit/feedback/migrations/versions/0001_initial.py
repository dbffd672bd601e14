"""Initial schema: users, invites, sessions, tasks, labels, assignments.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(80), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(200)),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "invites",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("used_at", sa.DateTime),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("external_id", sa.String(200), unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("responses", sa.JSON, nullable=False),
        sa.Column("scale", sa.Integer, nullable=False),
        sa.Column("is_gold", sa.Boolean, nullable=False),
        sa.Column("gold_answer", sa.JSON),
        sa.Column("meta", sa.JSON),
        sa.Column("scores", sa.JSON),
        sa.Column("uncertainty", sa.Float),
        sa.Column("disagreement", sa.Float),
        sa.Column("n_labels", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_tasks_queue", "tasks", ["is_gold", "n_labels"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("idempotency_key", sa.String(100), nullable=False),
        sa.Column("answer", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("flags", sa.JSON),
        sa.Column("duration_ms", sa.Integer),
        sa.Column("review_status", sa.String(16)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("annotator_id", "idempotency_key", name="uq_labels_idempotency"),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_labels_task_annotator"),
    )
    op.create_table(
        "assignments",
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("skipped", sa.Boolean, nullable=False),
    )
    op.create_index("ix_assignments_user", "assignments", ["user_id"])


def downgrade() -> None:
    for table in ("assignments", "labels", "tasks", "sessions", "invites", "users"):
        op.drop_table(table)
