"""One chain of migrations for the annotation app and the production tables, on SQLite and PostgreSQL: a single
head, ``upgrade head`` from an empty database, and from a database the annotation app made at 0001 (its rows kept,
the registry usable afterwards)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from rlhfkit.feedback.db import Store, alembic_config, migrate
from rlhfkit.feedback.models import Base
from rlhfkit.registry.store import Registry
from rlhfkit.registry.tables import metadata as production_metadata
from tests.production.conftest import fake_run

PRODUCTION_TABLES = {"model_versions", "model_aliases", "experiments", "served_responses", "served_feedback"}


def test_the_chain_has_one_head():
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"several heads {heads}: point the newest migration's down_revision at the other"


def _current(store: Store) -> str:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _check_schema(store: Store) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert _current(store) == head
    assert set(inspect(store.engine).get_table_names()) >= PRODUCTION_TABLES
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), [Base.metadata, production_metadata]) == []


def test_upgrade_head_from_an_empty_database(db, tmp_path):
    store = Store(db)
    migrate(store)
    _check_schema(store)
    store.dispose()
    registry = Registry.open(db)  # a second upgrade is a no-op
    version = registry.register(str(fake_run(tmp_path, "a")), name="policy")
    registry.promote("champion", version.ref)
    assert registry.resolve("champion").id == version.id
    registry.close()


def test_upgrade_head_from_an_annotation_database_at_0001(db, tmp_path):
    store = Store(db)
    migrate(store, "0001")
    assert _current(store) == "0001"
    assert "model_versions" not in inspect(store.engine).get_table_names()
    with store.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (username, role, active, created_at) VALUES ('ann', 'annotator', true, :t)"),
            {"t": "2026-12-01 10:00:00"},
        )
    migrate(store)
    _check_schema(store)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT username FROM users")).scalars().all() == ["ann"]
    store.dispose()
    registry = Registry.open(db)
    version = registry.register(str(fake_run(tmp_path, "a")), name="policy")
    assert registry.resolve("policy:1").id == version.id
    registry.close()


@pytest.mark.parametrize("bad", ["nonexistent_revision"])
def test_an_unknown_revision_is_named(tmp_path, bad):
    with pytest.raises(Exception, match=bad):
        migrate(Store(str(tmp_path / "x.db")), bad)
