"""Alembic environment for the annotation store.

``rlhfkit.feedback.db.migrate`` runs this with an open connection in ``config.attributes``, so no
alembic.ini or database URL (with its password) has to live in a file. Running ``alembic`` by hand
works too: ``alembic -x url=sqlite:///labels.db upgrade head`` with script_location pointing here.
"""

from alembic import context
from sqlalchemy import create_engine

from rlhfkit.feedback.models import Base
from rlhfkit.registry.tables import metadata as production_metadata

config = context.config
# One database, one chain of migrations: the annotation app's tables and the production tables (registry,
# experiments, served responses and their feedback).
TARGETS = [Base.metadata, production_metadata]


def _run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    context.configure(
        connection=connection, target_metadata=TARGETS, render_as_batch=connection.dialect.name == "sqlite"
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).connect() as conn:
        _run(conn)
