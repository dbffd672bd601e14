"""The production tables, kept in the feedback app's database so that model versions and the feedback on them
live side by side: the registry (versions, aliases and every change of an alias, evaluations), A/B experiments,
and what serving records (each response it gave, and the feedback on it).

The schema is created and changed only by the Alembic migrations in ``rlhfkit/feedback/migrations`` (one chain
for the whole database); these tables must match the latest one (``tests/test_registry.py`` checks that they
do). SQLAlchemy Core tables, not ORM classes: the serving hot path inserts a row per response and per feedback,
and Core statements cost a fraction of an ORM flush. Times are naive UTC, as in the feedback app.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

KINDS = ("policy", "reward", "judge", "constitution")

# An immutable version of a model (or a reward model, judge, constitution). Rows are never updated: the
# migration installs a trigger that refuses UPDATE, so what a version id names cannot change under anyone.
versions = Table(
    "model_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False),  # e.g. "policy"; versions of one name count 1, 2, 3...
    Column("number", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("source", Text, nullable=False),  # the run folder (or file) it was made from, as given
    Column("source_kind", String(16), nullable=False),  # run | file | endpoint
    Column("content_hash", String(16)),  # sha256_16 of the model folder (final/) or file; None for an endpoint
    Column("endpoint", Text),  # URL#MODEL of an OpenAI-compatible server that serves it, if not served built-in
    Column("run_id", String(100)),  # the run card's id
    Column("stage", String(40)),
    Column("card", JSON),  # the whole run card: parents by id, data hashes, settings hash, figures
    Column("labels", JSON),  # what it was trained on, by source: {"live": {"n": 412, "sha256_16": ...}, ...}
    Column("note", Text),
    Column("created_by", String(100)),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("name", "number", name="uq_model_versions_name_number"),
)
Index("ix_model_versions_run_id", versions.c.run_id)

# A movable name (champion, challenger, ...) for one version. ``seq`` counts its changes, so that a change can
# be made only against the state it was computed from (a compare-and-set), and the foreign key keeps it from
# ever pointing at nothing.
aliases = Table(
    "model_aliases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("version_id", Integer, ForeignKey("model_versions.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# Every change of every alias, in order; a rollback replays them to find the previous holder.
alias_events = Table(
    "model_alias_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("alias", String(100), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("action", String(16), nullable=False),  # promote | rollback
    Column("version_id", Integer, ForeignKey("model_versions.id"), nullable=False),
    Column("previous_version_id", Integer, ForeignKey("model_versions.id")),
    Column("reason", Text),
    Column("actor", String(100)),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("alias", "seq", name="uq_model_alias_events_alias_seq"),
)

# What a version was measured at, against what (evaluations are added after the fact; versions never change).
evaluations = Table(
    "model_evaluations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version_id", Integer, ForeignKey("model_versions.id"), nullable=False, index=True),
    Column("against_id", Integer, ForeignKey("model_versions.id")),
    Column("passed", Boolean),  # the gate's verdict, or None for a plain measurement
    Column("report", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

# A named A/B experiment: arms [{name, target, weight}] where a target is an alias or a version (name:N).
experiments = Table(
    "experiments",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("arms", JSON, nullable=False),
    Column("control", String(100), nullable=False),
    Column("metric", String(32), nullable=False),  # the primary metric its report tests (decided before it starts)
    Column("salt", String(64), nullable=False),  # users are assigned by hash(salt, user): a new salt, new draws
    Column("status", String(16), nullable=False),  # running | stopped
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# Every response served: what was asked, what answered (the version, and the experiment arm if any), for whom.
responses = Table(
    "served_responses",
    metadata,
    Column("id", String(40), primary_key=True),  # "chatcmpl-" + 24 random hex: unguessable
    Column("user_id", String(200)),
    Column("route", String(200), nullable=False),  # the model name the client asked for
    Column("experiment", String(100)),
    Column("arm", String(100)),
    Column("version_id", Integer, ForeignKey("model_versions.id"), nullable=False),
    Column("messages", JSON, nullable=False),
    Column("text", Text, nullable=False),
    Column("finish_reason", String(16)),
    Column("completion_tokens", Integer),
    Column("ttft_ms", Float),
    Column("latency_ms", Float),
    Column("stream", Boolean, nullable=False),
    Column("refusal", Boolean, nullable=False),
    Column("regenerate_of", String(40)),
    Column("created_at", DateTime, nullable=False),
)
Index("ix_served_responses_experiment", responses.c.experiment, responses.c.arm)
Index("ix_served_responses_version", responses.c.version_id, responses.c.created_at)

FEEDBACK_KINDS = ("thumbs", "rating", "preference", "flag")
FLAGS = ("harmful", "untrue", "unhelpful", "other")

# Feedback on a response; version, experiment, arm and user are copied from the response when it is stored, so
# the monitor reads one table. One row per (response, idempotency key): a retried submission finds its row.
feedback = Table(
    "served_feedback",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("response_id", String(40), ForeignKey("served_responses.id"), nullable=False),
    Column("idempotency_key", String(100), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("value", JSON),  # thumbs: true/false; rating: {"rating", "scale"}; flag: the flag's name
    Column("other_response_id", String(40), ForeignKey("served_responses.id")),  # preference: preferred over this
    Column("comment", Text),
    Column("user_id", String(200)),
    Column("version_id", Integer, ForeignKey("model_versions.id"), nullable=False),
    Column("experiment", String(100)),
    Column("arm", String(100)),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("response_id", "idempotency_key", name="uq_served_feedback_idempotency"),
)
Index("ix_served_feedback_experiment", feedback.c.experiment, feedback.c.arm)
