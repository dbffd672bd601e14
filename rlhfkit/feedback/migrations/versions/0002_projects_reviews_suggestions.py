"""Projects, models per response, conversations, suggestions, review bookkeeping.

- ``projects`` (name, title, guidelines, suggestions); a ``default`` project receives every existing task;
- ``tasks``: ``project_id``; the task file's id is unique per project instead of across the database;
  ``messages`` (a conversation prompt), ``models`` (the model of each response), ``suggestion``;
- ``labels``: ``reviewed_by``/``reviewed_at``, the ``suggestion`` shown and whether it was accepted;
  ``flags`` holding JSON null become SQL NULL (the flagged filter is IS NOT NULL);
- ``tasks.n_labels`` now counts only labels not rejected, so a rejected label re-queues its item:
  recounted here for existing databases.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# SQLite cannot drop the unnamed UNIQUE(external_id) of 0001 by name; batch mode reflects the table
# and names unnamed constraints with this convention so they can be dropped (alembic's documented way).
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s", "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _external_id_unique_name(bind) -> str:
    for uc in sa.inspect(bind).get_unique_constraints("tasks"):
        if uc["column_names"] == ["external_id"]:
            return uc["name"] or "uq_tasks_external_id"
    raise RuntimeError("tasks: the UNIQUE(external_id) constraint of revision 0001 is missing")


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(80), nullable=False, unique=True),
        sa.Column("title", sa.String(200)),
        sa.Column("guidelines", sa.Text),
        sa.Column("suggestions", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    projects = sa.table(
        "projects", sa.column("name"), sa.column("title"), sa.column("suggestions"), sa.column("created_at")
    )
    op.execute(
        projects.insert().values(name="default", title="Default project", suggestions=False, created_at=sa.func.now())
    )

    unique_name = _external_id_unique_name(bind)
    op.drop_index("ix_tasks_queue", table_name="tasks")
    with op.batch_alter_table("tasks", naming_convention=NAMING) as batch:
        batch.add_column(sa.Column("project_id", sa.Integer))
        batch.add_column(sa.Column("messages", sa.JSON))
        batch.add_column(sa.Column("models", sa.JSON))
        batch.add_column(sa.Column("suggestion", sa.JSON))
    op.execute("UPDATE tasks SET project_id = (SELECT id FROM projects WHERE name = 'default')")
    with op.batch_alter_table("tasks", naming_convention=NAMING) as batch:
        batch.alter_column("project_id", existing_type=sa.Integer, nullable=False)
        batch.create_foreign_key("fk_tasks_project_id_projects", "projects", ["project_id"], ["id"], ondelete="CASCADE")
        batch.drop_constraint(unique_name, type_="unique")
        batch.create_unique_constraint("uq_tasks_project_external", ["project_id", "external_id"])
    op.create_index("ix_tasks_queue", "tasks", ["project_id", "is_gold", "n_labels"])

    with op.batch_alter_table("labels", naming_convention=NAMING) as batch:
        batch.add_column(sa.Column("reviewed_by", sa.Integer))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime))
        batch.add_column(sa.Column("suggestion", sa.JSON))
        batch.add_column(sa.Column("suggestion_accepted", sa.Boolean))
        batch.create_foreign_key("fk_labels_reviewed_by_users", "users", ["reviewed_by"], ["id"], ondelete="SET NULL")
    op.execute("UPDATE labels SET flags = NULL WHERE CAST(flags AS TEXT) = 'null'")
    op.execute(
        "UPDATE tasks SET n_labels = (SELECT count(*) FROM labels WHERE labels.task_id = tasks.id "
        "AND (labels.review_status IS NULL OR labels.review_status <> 'rejected'))"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE tasks SET n_labels = (SELECT count(*) FROM labels WHERE labels.task_id = tasks.id)"
    )
    with op.batch_alter_table("labels", naming_convention=NAMING) as batch:
        batch.drop_constraint("fk_labels_reviewed_by_users", type_="foreignkey")
        for column in ("suggestion_accepted", "suggestion", "reviewed_at", "reviewed_by"):
            batch.drop_column(column)
    op.drop_index("ix_tasks_queue", table_name="tasks")
    with op.batch_alter_table("tasks", naming_convention=NAMING) as batch:
        batch.drop_constraint("uq_tasks_project_external", type_="unique")
        batch.drop_constraint("fk_tasks_project_id_projects", type_="foreignkey")
        batch.create_unique_constraint("uq_tasks_external_id", ["external_id"])
        for column in ("suggestion", "models", "messages", "project_id"):
            batch.drop_column(column)
    op.create_index("ix_tasks_queue", "tasks", ["is_gold", "n_labels"])
    op.drop_table("projects")
