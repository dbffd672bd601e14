"""Opening the store: engine settings for SQLite and PostgreSQL, and schema migrations.

SQLite is opened for durability and concurrency: WAL (readers never block the writer),
``synchronous=FULL`` (a commit is on disk before we acknowledge a label, so ``kill -9`` loses
nothing acknowledged), a busy timeout (writers queue instead of failing) and ``BEGIN IMMEDIATE`` for
write transactions: a deferred transaction that reads first and then writes can fail at once with
SQLITE_BUSY when another writer committed in between, which a busy timeout does not cure.

The request hot paths write through ``Store.transact``: on SQLite, concurrent writes are grouped
into one transaction and one fsync (group commit); nobody is answered before that COMMIT returns.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from anyio import to_thread
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")


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
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20)

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
        options = conn.get_execution_options()
        if options.get("sqlite_autocommit", False):
            return  # a single-statement read: SQLite reads one consistent snapshot per statement anyway
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_immediate", False) else "BEGIN")

    return engine


class _GroupCommit:
    """Collects ``Store.transact`` calls made while a batch is being written, and writes them as the
    next batch: one thread, one transaction, one fsync per batch."""

    MAX_BATCH = 100

    def __init__(self, store: Store):
        self.store = store
        self.pending: list = []
        self.drainer: asyncio.Task | None = None

    async def submit(self, fn, args, durable: bool):
        waiter = asyncio.get_running_loop().create_future()
        self.pending.append((fn, args, durable, waiter))
        if self.drainer is None or self.drainer.done():
            self.drainer = asyncio.get_running_loop().create_task(self._drain())
        return await waiter

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[: self.MAX_BATCH], self.pending[self.MAX_BATCH :]
            try:
                results = await to_thread.run_sync(self.store._run_batch, [job[:3] for job in batch])
            except BaseException as e:  # the COMMIT (or BEGIN) failed: nothing in the batch is stored
                results = [Future() for _ in batch]
                for r in results:
                    r.set_exception(e)
                if not isinstance(e, Exception):
                    raise
            for (*_, waiter), result in zip(batch, results):
                if waiter.done():  # the request was cancelled (client gone); its retry will find the label
                    continue
                if result.exception() is not None:
                    waiter.set_exception(result.exception())
                else:
                    waiter.set_result(result.result())


class Store:
    """The engine plus two session factories: ``read()`` and ``write()`` (a write transaction that
    takes SQLite's write lock up front; on PostgreSQL the two are the same)."""

    def __init__(self, db: str):
        self.url = database_url(db)
        with _opening(db):  # a driver that is not installed fails here
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
        self._writer, self._lazy_writer = writer, writer
        self._reader = (
            self.engine.execution_options(sqlite_autocommit=True) if self.dialect == "sqlite" else self.engine
        )
        self._group = _GroupCommit(self) if self.dialect == "sqlite" else None
        if self.dialect == "sqlite":
            self._lazy_engine = make_engine(db, synchronous="NORMAL")
            self._lazy_writer = self._lazy_engine.execution_options(sqlite_immediate=True)
            self._lazy = sessionmaker(self._lazy_writer, expire_on_commit=False)

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

    # The hot request paths (auth, next item, submit) use Core connections rather than ORM sessions:
    # an ORM session costs several times the CPU of the queries it runs here.

    @contextmanager
    def read_conn(self) -> Iterator[Connection]:
        """A connection for ONE read statement (on SQLite it runs outside BEGIN, as its own snapshot)."""
        with self._reader.connect() as conn:
            yield conn

    @contextmanager
    def write_conn(self, durable: bool = True) -> Iterator[Connection]:
        """Like ``write()`` but a Core connection (commit it yourself)."""
        engine = self._writer if durable else self._lazy_writer
        if self._write_lock is None:
            with engine.connect() as conn:
                yield conn
        else:
            with self._write_lock, engine.connect() as conn:
                yield conn

    async def transact(self, fn: Callable[..., T], *args, durable: bool = True) -> T:
        """Run ``fn(conn, *args)`` in a write transaction from async code and return its result once
        committed (on disk, when ``durable``). A failing ``fn`` is rolled back alone and raises here.

        On SQLite, calls that arrive together share one transaction and one fsync (group commit), run
        by one thread at a time: SQLite has a single writer anyway, and an fsync per label, on the
        event loop or with writers queueing on the lock, was what limited throughput. Nothing is
        acknowledged before the shared COMMIT returns. A network database gets one transaction per call,
        in a thread."""
        if self._group is not None:
            return await self._group.submit(fn, args, durable)
        return (await to_thread.run_sync(self._run_batch, [(fn, args, durable)]))[0].result()

    def _run_batch(self, jobs: list) -> list:
        """One write transaction for ``jobs`` [(fn, args, durable)]; returns a settled Future per job.
        Each job runs inside a SAVEPOINT, so a failing one undoes only itself."""
        durable = any(d for _, _, d in jobs)
        results = []
        with self.write_conn(durable) as conn:
            for fn, args, _ in jobs:
                result = Future()
                try:
                    with conn.begin_nested():
                        value = fn(conn, *args)
                    result.set_result(value)
                except Exception as e:  # noqa: BLE001 - handed to the caller
                    result.set_exception(e)
                results.append(result)
            conn.commit()
        return results

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run a short database call from async code. On SQLite it runs right here on the event loop:
        its statements take microseconds (and an fsync on commit, under a millisecond), far less than
        the thread hand-off that a threadpool costs under load. A network database goes to a thread."""
        if self.dialect == "sqlite":
            return fn(*args)
        return await to_thread.run_sync(fn, *args)

    def dispose(self) -> None:
        self.engine.dispose()
        if self._lazy_engine is not None:
            self._lazy_engine.dispose()


def alembic_config() -> Config:
    """The alembic.ini equivalent, in code, so migrations run from an installed package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


class DatabaseOpenError(ValueError):
    """A ``--db`` that is not a database rlhfkit can use; the message names it (without its password)."""


@contextmanager
def _opening(db: str) -> Iterator[None]:
    """A database that cannot be opened (a folder, a text file, another application's SQLite file, a server that
    refuses, a driver not installed) as one ``DatabaseOpenError`` naming it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from rlhfkit.data.io import one_line

    try:
        yield
    except (SQLAlchemyError, ModuleNotFoundError) as e:
        try:
            url = make_url(database_url(db))
            where = url.database if url.drivername.startswith("sqlite") else url.render_as_string(hide_password=True)
        except SQLAlchemyError:  # not even a URL
            where = "the --db setting"
        reason = one_line(getattr(e, "orig", None) or e)
        raise DatabaseOpenError(f"{where}: cannot use it as rlhfkit's database ({reason})") from None


def migrate(store: Store, revision: str = "head") -> None:
    """Bring the schema up (or down) to ``revision`` (creating it on an empty database)."""
    with _opening(store.url):
        _run_migrations(store, lambda cfg: command.upgrade(cfg, revision))


def downgrade(store: Store, revision: str) -> None:
    with _opening(store.url):
        _run_migrations(store, lambda cfg: command.downgrade(cfg, revision))


def _pragma(conn: Connection, sql: str) -> list:
    """Run a PRAGMA outside any transaction (where foreign_keys takes effect) and return its rows."""
    conn.execution_options(sqlite_autocommit=True)  # in place: our "begin" hook then issues no BEGIN
    try:
        result = conn.exec_driver_sql(sql)
        rows = result.all() if result.returns_rows else []
        conn.commit()
    finally:
        conn.execution_options(sqlite_autocommit=False)
    return rows


def _run_migrations(store: Store, run: Callable[[Config], None]) -> None:
    sqlite = store.dialect == "sqlite"
    with store.engine.connect() as conn:
        if sqlite:
            # SQLite changes a table by copying it, dropping the old one and renaming the copy; with
            # foreign keys on, dropping ``tasks`` would cascade-delete every label. The pragma only
            # takes effect outside a transaction, so it is set before BEGIN and checked after COMMIT.
            _pragma(conn, "PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                cfg = alembic_config()
                cfg.attributes["connection"] = conn
                run(cfg)
            if sqlite and _pragma(conn, "PRAGMA foreign_key_check"):
                raise RuntimeError("the migration left rows whose foreign keys point nowhere")
        finally:
            if sqlite:
                _pragma(conn, "PRAGMA foreign_keys=ON")
