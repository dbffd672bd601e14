"""The production tables: model registry (versions, aliases, alias events, evaluations), A/B experiments, served
responses and the feedback on them (``rlhfkit/registry/tables.py`` describes each).

Self-contained: it touches no table of the annotation app, so it can sit anywhere in the chain.
Model versions are immutable: a trigger refuses UPDATE on ``model_versions`` (SQLite and PostgreSQL).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_kind", sa.String(16), nullable=False),
        sa.Column("content_hash", sa.String(16)),
        sa.Column("endpoint", sa.Text),
        sa.Column("run_id", sa.String(100)),
        sa.Column("stage", sa.String(40)),
        sa.Column("card", sa.JSON),
        sa.Column("labels", sa.JSON),
        sa.Column("note", sa.Text),
        sa.Column("created_by", sa.String(100)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", "number", name="uq_model_versions_name_number"),
    )
    op.create_index("ix_model_versions_run_id", "model_versions", ["run_id"])
    op.create_table(
        "model_aliases",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "model_alias_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("alias", sa.String(100), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("previous_version_id", sa.Integer, sa.ForeignKey("model_versions.id")),
        sa.Column("reason", sa.Text),
        sa.Column("actor", sa.String(100)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("alias", "seq", name="uq_model_alias_events_alias_seq"),
    )
    op.create_table(
        "model_evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("against_id", sa.Integer, sa.ForeignKey("model_versions.id")),
        sa.Column("passed", sa.Boolean),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_model_evaluations_version_id", "model_evaluations", ["version_id"])
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("arms", sa.JSON, nullable=False),
        sa.Column("control", sa.String(100), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "served_responses",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(200)),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("experiment", sa.String(100)),
        sa.Column("arm", sa.String(100)),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("messages", sa.JSON, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("finish_reason", sa.String(16)),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("latency_ms", sa.Float),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("refusal", sa.Boolean, nullable=False),
        sa.Column("regenerate_of", sa.String(40)),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_served_responses_experiment", "served_responses", ["experiment", "arm"])
    op.create_index("ix_served_responses_version", "served_responses", ["version_id", "created_at"])
    op.create_table(
        "served_feedback",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("response_id", sa.String(40), sa.ForeignKey("served_responses.id"), nullable=False),
        sa.Column("idempotency_key", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.JSON),
        sa.Column("other_response_id", sa.String(40), sa.ForeignKey("served_responses.id")),
        sa.Column("comment", sa.Text),
        sa.Column("user_id", sa.String(200)),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("experiment", sa.String(100)),
        sa.Column("arm", sa.String(100)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("response_id", "idempotency_key", name="uq_served_feedback_idempotency"),
    )
    op.create_index("ix_served_feedback_experiment", "served_feedback", ["experiment", "arm"])
    # Versions are immutable: what a version id names must never change under a server or a rollback.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER model_versions_immutable BEFORE UPDATE ON model_versions "
            "BEGIN SELECT RAISE(ABORT, 'model versions are immutable'); END"
        )
    else:
        op.execute(
            "CREATE FUNCTION model_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'model versions are immutable'; END $$"
        )
        op.execute(
            "CREATE TRIGGER model_versions_immutable BEFORE UPDATE ON model_versions "
            "FOR EACH ROW EXECUTE FUNCTION model_versions_immutable()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS model_versions_immutable")
    else:
        op.execute("DROP TRIGGER IF EXISTS model_versions_immutable ON model_versions")
        op.execute("DROP FUNCTION IF EXISTS model_versions_immutable()")
    for table in (
        "served_feedback",
        "served_responses",
        "experiments",
        "model_evaluations",
        "model_alias_events",
        "model_aliases",
        "model_versions",
    ):
        op.drop_table(table)
