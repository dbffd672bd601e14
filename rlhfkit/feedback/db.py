"""Opening the store: engine settings for SQLite and PostgreSQL, and schema migrations.

SQLite is opened for durability and concurrency: WAL (readers never block the writer),
``synchronous=FULL`` (a commit is on disk before we acknowledge a label, so ``kill -9`` loses
nothing acknowledged), a busy timeout (writers queue instead of failing) and ``BEGIN IMMEDIATE`` for
write transactions: a deferred transaction that reads first and then writes can fail at once with
SQLITE_BUSY when another writer committed in between, which a busy timeout does not cure.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def database_url(db: str) -> str:
    """Accept a SQLAlchemy URL or a plain file path (taken as a SQLite file)."""
    if "://" in db:
        if db.startswith("postgres://"):  # the form Heroku-style tools print; SQLAlchemy wants postgresql
            db = "postgresql://" + db.removeprefix("postgres://")
        if db.startswith("postgresql://"):
            # SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql:// URL; use psycopg2 (a dependency)
            # unless psycopg 3 is installed.
            import importlib.util

            if importlib.util.find_spec("psycopg") is None:
                db = "postgresql+psycopg2://" + db.removeprefix("postgresql://")
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def make_engine(db: str, synchronous: str = "FULL") -> Engine:
    url = database_url(db)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)
    if url in ("sqlite://", "sqlite:///:memory:"):
        raise ValueError(f"--db {db}: an in-memory SQLite database would vanish with the server; give a file")
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                           pool_size=20, max_overflow=20)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Store:
    """The engine plus two session factories: ``read()`` and ``write()`` (a write transaction that
    takes SQLite's write lock up front; on PostgreSQL the two are the same)."""

    def __init__(self, db: str):
        self.url = database_url(db)
        self.engine = make_engine(db)
        self.dialect = self.engine.dialect.name
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        writer = self.engine.execution_options(sqlite_immediate=True) if self.dialect == "sqlite" else self.engine
        self._write = sessionmaker(writer, expire_on_commit=False)
        # SQLite has one writer at a time. Queueing this process's writers on a lock is much faster
        # than letting them poll SQLite's busy handler, which sleeps up to 100 ms between tries.
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        # Leases and skips may be lost in a power cut without harm (the item is simply served again),
        # so on SQLite they commit without an fsync: WAL with synchronous=NORMAL survives a killed
        # process, just not a lost OS. Labels always go through the fully synchronous engine.
        self._lazy, self._lazy_engine = None, None
        if self.dialect == "sqlite":
            self._lazy_engine = make_engine(db, synchronous="NORMAL")
            self._lazy = sessionmaker(self._lazy_engine.execution_options(sqlite_immediate=True),
                                      expire_on_commit=False)

    def read(self) -> Session:
        return self._read()

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[Session]:
        """``with store.write() as db:`` a session for one write transaction (commit it yourself).
        ``durable=False`` is for data whose loss in an OS crash is harmless (leases)."""
        factory = self._write if durable or self._lazy is None else self._lazy
        if self._write_lock is None:
            with factory() as session:
                yield session
        else:
            with self._write_lock, factory() as session:
                yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if self._lazy_engine is not None:
            self._lazy_engine.dispose()


def alembic_config() -> Config:
    """The alembic.ini equivalent, in code, so migrations run from an installed package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(store: Store, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (creating it on an empty database)."""
    with store.engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def has_schema(store: Store) -> bool:
    return inspect(store.engine).has_table("alembic_version")
