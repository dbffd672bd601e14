"""The model registry: immutable versions made from run folders, movable aliases, promotion and rollback.

    registry = Registry.open("annotations.db")                    # the feedback app's database (or postgresql://)
    v = registry.register("runs/dpo-1", name="policy")            # policy:1, with the run card and a content hash
    registry.promote("champion", "policy:1")                      # an alias now names it
    registry.rollback("champion")                                 # the previous holder back
    registry.resolve("champion")                                  # -> Version; "policy:1", "policy:latest" too

A version is made once and never changed (the database refuses UPDATE on it): it records where it came from
(the run folder and a hash of its model files), the run card (parents by id, data hashes, settings hash,
figures) and the labels it was trained on; evaluations are added beside it (``add_evaluation``). An alias is a
name for one version that moves; every move is an event, and a rollback replays them as a stack (a promotion
pushes, a rollback pops), so rolling back twice goes back two holders.

Every change is one transaction: on SQLite under the write lock (BEGIN IMMEDIATE), on PostgreSQL with the alias
row locked (SELECT ... FOR UPDATE) and the event's (alias, seq) unique, so two processes promoting at once are
serialised (or one retries) and an alias never points at nothing (a NOT NULL foreign key).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from rlhfkit.feedback.db import Store, migrate
from rlhfkit.feedback.models import utcnow
from rlhfkit.registry.tables import KINDS, alias_events, aliases, evaluations, experiments, versions
from rlhfkit.runs import RunCard, file_hash

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
POLICY_STAGES = {"sft", "dpo", "ppo", "rejection", "kto"}
REWARD_STAGES = {"rm"}


class RegistryError(ValueError):
    """A request the registry cannot do; the message says what and why."""


class AliasConflict(RegistryError):
    """The alias moved since the caller looked (``expect`` did not hold)."""


class _LostRace(Exception):
    """A concurrent writer changed the row this transaction was about to change: run it again."""


@dataclass(frozen=True)
class Version:
    id: int
    name: str
    number: int
    kind: str
    source: str
    source_kind: str
    content_hash: str | None
    endpoint: str | None
    run_id: str | None
    stage: str | None
    card: dict | None
    labels: dict | None
    note: str | None
    created_by: str | None
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.number}"

    @property
    def model_path(self) -> Path | None:
        """The model folder to load (a run's ``final/``), or None for a version served by an endpoint."""
        if self.source_kind == "run":
            return Path(self.source) / "final"
        if self.source_kind in ("folder", "file"):
            return Path(self.source)
        return None

    def verify(self) -> None:
        """Refuse a version whose files changed since it was registered (finished runs are never rewritten, so a
        changed hash means someone edited or replaced them)."""
        path = self.model_path
        if path is None or self.content_hash is None:
            return
        now = file_hash(path)
        if now != self.content_hash:
            raise RegistryError(
                f"{self.ref}: {path} changed since it was registered (hash {self.content_hash} -> {now}); "
                "register the new files as a new version"
            )


@dataclass(frozen=True)
class AliasChange:
    alias: str
    action: str
    seq: int
    previous: Version | None
    current: Version


def _version(row) -> Version:
    return Version(**{f.name: row._mapping[f.name] for f in fields(Version)})


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise RegistryError(
            f"{what} {value!r}: use 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return value


def _retrying(store: Store, fn, *args, attempts: int = 8):
    """Run ``fn(conn, *args)`` in one write transaction; on PostgreSQL a lost race (a unique key taken by a
    concurrent writer, a serialisation failure, a deadlock) rolls back and runs it again from the start."""
    for attempt in range(attempts):
        try:
            with store.write_conn() as conn:
                result = fn(conn, *args)
                conn.commit()
                return result
        except (_LostRace, IntegrityError, DBAPIError) as e:
            retryable = not isinstance(e, DBAPIError) or isinstance(e, IntegrityError)
            retryable = retryable or getattr(e.orig, "pgcode", None) in ("40001", "40P01")
            if not retryable or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


class Registry:
    def __init__(self, store: Store):
        self.store = store

    @classmethod
    def open(cls, db: str) -> Registry:
        """The registry in ``db`` (a SQLite file or a database URL), its schema brought up to date."""
        store = Store(db)
        migrate(store)
        return cls(store)

    def close(self) -> None:
        self.store.dispose()

    # ---------------------------------------------------------------- versions

    def register(
        self,
        source: str,
        *,
        name: str | None = None,
        kind: str | None = None,
        endpoint: str | None = None,
        labels: dict[str, Any] | None = None,
        note: str | None = None,
        actor: str | None = None,
    ) -> Version:
        """A new version of ``name`` from a run folder (finished), a model folder, a file (a constitution) or,
        with ``endpoint`` alone, a model an OpenAI-compatible server serves. Registering the same run (same id,
        same files) under the same name again returns the version it already is."""
        described = describe_source(source, kind, endpoint)
        kind = described["kind"]
        name = check_name(name or kind, "version name")
        row = {
            **described,
            "name": name,
            "labels": labels,
            "note": note,
            "created_by": actor,
        }

        def insert_version(conn: Connection) -> int:
            same = conn.execute(
                select(versions.c.id).where(
                    versions.c.name == name,
                    versions.c.source == row["source"],
                    versions.c.content_hash.is_(None)
                    if row["content_hash"] is None
                    else versions.c.content_hash == row["content_hash"],
                    versions.c.run_id.is_(None) if row["run_id"] is None else versions.c.run_id == row["run_id"],
                    # another endpoint for the same name and source is another version, not this one
                    versions.c.endpoint.is_(None)
                    if row.get("endpoint") is None
                    else versions.c.endpoint == row["endpoint"],
                )
            ).scalar()
            if same is not None:
                return same
            number = (
                conn.execute(select(func.max(versions.c.number)).where(versions.c.name == name)).scalar() or 0
            ) + 1
            return conn.execute(
                insert(versions).values(**row, number=number, created_at=utcnow())
            ).inserted_primary_key[0]

        return self.get_id(_retrying(self.store, insert_version))

    def get_id(self, version_id: int) -> Version:
        with self.store.read_conn() as conn:
            row = conn.execute(select(versions).where(versions.c.id == version_id)).first()
        if row is None:
            raise RegistryError(f"no version with id {version_id}")
        return _version(row)

    def versions(self, name: str | None = None) -> list[Version]:
        query = select(versions).order_by(versions.c.name, versions.c.number)
        if name is not None:
            query = query.where(versions.c.name == name)
        with self.store.read_conn() as conn:
            return [_version(r) for r in conn.execute(query)]

    def find_run(self, run_id: str) -> Version | None:
        """The latest version made from the run with this card id, if any."""
        with self.store.read_conn() as conn:
            row = conn.execute(
                select(versions).where(versions.c.run_id == run_id).order_by(versions.c.id.desc())
            ).first()
        return _version(row) if row else None

    def find_source(self, path: str) -> Version | None:
        """The latest version made from this folder or file (a parent named by path rather than run id)."""
        where = str(Path(path).expanduser().resolve()) if not str(path).startswith(("http://", "https://")) else path
        with self.store.read_conn() as conn:
            row = conn.execute(
                select(versions).where(versions.c.source == where).order_by(versions.c.id.desc())
            ).first()
        return _version(row) if row else None

    def resolve(self, ref: str) -> Version:
        """``name:N`` (a version), ``name:latest``, or an alias."""
        ref = str(ref).strip()
        name, colon, number = ref.partition(":")
        with self.store.read_conn() as conn:
            if colon:
                query = select(versions).where(versions.c.name == name)
                if number == "latest":
                    query = query.order_by(versions.c.number.desc()).limit(1)
                elif number.isascii() and number.isdigit() and len(number) <= 9:  # not "²", nor past an INTEGER
                    query = query.where(versions.c.number == int(number))
                else:
                    raise RegistryError(f"{ref!r}: a version is NAME:NUMBER or NAME:latest")
                row = conn.execute(query).first()
                if row is None:
                    raise RegistryError(f"{ref!r}: no such version{self._known(conn, name)}")
                return _version(row)
            row = conn.execute(
                select(versions).join(aliases, aliases.c.version_id == versions.c.id).where(aliases.c.name == ref)
            ).first()
            if row is None:
                known = sorted(conn.execute(select(aliases.c.name)).scalars())
                raise RegistryError(
                    f"{ref!r}: no such alias (aliases: {', '.join(known) or 'none yet'}; a version is NAME:NUMBER)"
                )
            return _version(row)

    def _known(self, conn: Connection, name: str) -> str:
        numbers = sorted(conn.execute(select(versions.c.number).where(versions.c.name == name)).scalars())
        return f" ({name} has versions {', '.join(map(str, numbers))})" if numbers else f" (no versions named {name!r})"

    # ---------------------------------------------------------------- evaluations

    def add_evaluation(self, ref: str, report: dict, passed: bool | None = None, against: str | None = None) -> int:
        version = self.resolve(ref)
        against_id = self.resolve(against).id if against else None

        def add(conn: Connection) -> int:
            values = dict(
                version_id=version.id, against_id=against_id, passed=passed, report=report, created_at=utcnow()
            )
            return conn.execute(insert(evaluations).values(**values)).inserted_primary_key[0]

        return _retrying(self.store, add)

    def evaluations(self, ref: str) -> list[dict]:
        version = self.resolve(ref)
        with self.store.read_conn() as conn:
            rows = conn.execute(
                select(evaluations).where(evaluations.c.version_id == version.id).order_by(evaluations.c.id)
            )
            return [dict(r._mapping) for r in rows]

    # ---------------------------------------------------------------- aliases

    def aliases(self) -> dict[str, Version]:
        with self.store.read_conn() as conn:
            rows = conn.execute(
                select(aliases.c.name.label("alias"), versions)
                .join(versions, versions.c.id == aliases.c.version_id)
                .order_by(aliases.c.name)
            )
            return {r.alias: _version(r) for r in rows}

    def promote(
        self, alias: str, ref: str, *, expect: str | None = None, reason: str | None = None, actor: str | None = None
    ) -> AliasChange:
        """Point ``alias`` at ``ref`` (creating the alias on first use). With ``expect`` (a version ref, or "" for
        an alias that must not exist yet) the change is made only if the alias still names that version."""
        check_name(alias, "alias")
        target = self.resolve(ref)
        expect_id = None if expect is None else (0 if expect == "" else self.resolve(expect).id)
        return self._change(alias, "promote", lambda stack: target.id, expect_id, reason, actor)

    def rollback(
        self, alias: str, *, expect: str | None = None, reason: str | None = None, actor: str | None = None
    ) -> AliasChange:
        """Give ``alias`` back to the version that held it before the current one."""
        check_name(alias, "alias")
        expect_id = None if expect is None else self.resolve(expect).id

        def previous(stack: list[int]) -> int:
            if len(stack) < 2:
                raise RegistryError(f"alias {alias!r} has no earlier holder to roll back to")
            return stack[-2]

        return self._change(alias, "rollback", previous, expect_id, reason, actor)

    def _change(self, alias, action, pick, expect_id, reason, actor) -> AliasChange:
        def change(conn: Connection) -> tuple[int, int | None, int]:
            query = select(aliases.c.version_id, aliases.c.seq).where(aliases.c.name == alias)
            if conn.dialect.name != "sqlite":
                query = query.with_for_update()  # SQLite: the whole database is already locked (BEGIN IMMEDIATE)
            current = conn.execute(query).first()
            if action == "rollback" and current is None:
                raise RegistryError(f"{alias!r}: no such alias")
            if current is None and conn.execute(select(experiments.c.name).where(experiments.c.name == alias)).first():
                raise RegistryError(
                    f"{alias!r} is an experiment; an alias needs a name of its own (requests name either)"
                )
            if expect_id is not None and (current.version_id if current else 0) != expect_id:
                raise AliasConflict(f"alias {alias!r} moved meanwhile; nothing changed (look again and retry)")
            stack = holders(conn, alias)
            target = pick(stack)
            seq = (current.seq if current else 0) + 1
            now = utcnow()
            if current is None:
                conn.execute(insert(aliases).values(name=alias, version_id=target, seq=seq, updated_at=now))
            else:
                done = conn.execute(
                    update(aliases)
                    .where(aliases.c.name == alias, aliases.c.seq == current.seq)
                    .values(version_id=target, seq=seq, updated_at=now)
                )
                if done.rowcount != 1:  # a concurrent change got in between: let the caller retry
                    raise _LostRace()
            conn.execute(
                insert(alias_events).values(
                    alias=alias,
                    seq=seq,
                    action=action,
                    version_id=target,
                    previous_version_id=current.version_id if current else None,
                    reason=reason,
                    actor=actor,
                    created_at=now,
                )
            )
            return target, current.version_id if current else None, seq

        target, previous, seq = _retrying(self.store, change)
        return AliasChange(alias, action, seq, self.get_id(previous) if previous else None, self.get_id(target))

    def history(self, alias: str) -> list[dict]:
        """Every change of ``alias``, oldest first: seq, action, version, previous, reason, actor, time."""
        with self.store.read_conn() as conn:
            rows = conn.execute(select(alias_events).where(alias_events.c.alias == alias).order_by(alias_events.c.seq))
            events = [dict(r._mapping) for r in rows]
        refs = {v.id: v.ref for v in self.versions()}
        for e in events:
            e["version"] = refs.get(e["version_id"])
            e["previous"] = refs.get(e["previous_version_id"])
        return events


def holders(conn: Connection, alias: str) -> list[int]:
    """The stack of versions that held ``alias``: a promotion pushes, a rollback pops; the top is the holder."""
    stack: list[int] = []
    rows = conn.execute(
        select(alias_events.c.action, alias_events.c.version_id)
        .where(alias_events.c.alias == alias)
        .order_by(alias_events.c.seq)
    )
    for action, version_id in rows:
        if action == "rollback":
            stack.pop()
        elif not stack or stack[-1] != version_id:  # promoting the holder again (a retry) changes nothing
            stack.append(version_id)
    return stack


def describe_source(source: str, kind: str | None, endpoint: str | None) -> dict[str, Any]:
    """The columns a version takes from what it is made of; refuses an unfinished run, a missing path, a kind
    the source cannot be."""
    if kind is not None and kind not in KINDS:
        raise RegistryError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    if endpoint is not None:
        from rlhfkit.openai_api import ChatServer

        ChatServer.parse(endpoint)  # refuses a URL without a host
    out: dict[str, Any] = dict(endpoint=endpoint, run_id=None, stage=None, card=None, content_hash=None)
    path = Path(source).expanduser()
    if not path.exists():
        if endpoint is None:
            raise RegistryError(f"{source}: no such run folder or file (or give --endpoint for a served model)")
        return {**out, "source": source, "source_kind": "endpoint", "kind": kind or "policy"}
    if path.is_dir() and (path / "card.json").exists():
        card = RunCard.read(path)
        if not card.finished:
            raise RegistryError(f"{path}: the run has not finished; register it once it has")
        inferred = "policy" if card.stage in POLICY_STAGES else "reward" if card.stage in REWARD_STAGES else None
        if kind is None and inferred is None:
            raise RegistryError(f"{path}: a {card.stage} run; say what it is with --kind ({', '.join(KINDS)})")
        model = path / "final"
        return {
            **out,
            "source": str(path.resolve()),
            "source_kind": "run",
            "kind": kind or inferred,
            "run_id": card.id,
            "stage": card.stage,
            "card": card.model_dump(mode="json"),
            "content_hash": file_hash(model) if model.exists() else file_hash(path / "card.json"),
        }
    if kind is None:
        raise RegistryError(f"{path}: not a run folder; say what it is with --kind ({', '.join(KINDS)})")
    if kind in ("policy", "reward"):
        _check_model_source(path, kind)
    return {**out, "source": str(path.resolve()), "source_kind": "folder" if path.is_dir() else "file", "kind": kind,
            "content_hash": file_hash(path)}  # fmt: skip


def _check_model_source(path: Path, kind: str) -> None:
    """A model folder or file is what it says, read without loading it (this module imports no torch): a policy is
    a .gguf file or a folder with a JSON config.json; a reward model a folder with reward.json or config.json."""
    if path.is_file():
        with path.open("rb") as f:
            if kind == "policy" and path.suffix == ".gguf" and f.read(4) == b"GGUF":
                return
        raise RegistryError(f"{path}: a {kind} is a model folder{' or a .gguf file' if kind == 'policy' else ''}")
    names = ("config.json",) if kind == "policy" else ("reward.json", "config.json")
    config = next((path / n for n in names if (path / n).exists()), None)
    if config is None:
        raise RegistryError(f"{path}: no {' or '.join(names)}: not a {kind} model folder")
    try:
        ok = isinstance(json.loads(config.read_text(encoding="utf-8")), dict)
    except ValueError:  # malformed JSON, not UTF-8
        ok = False
    if not ok:
        raise RegistryError(f"{config}: not a JSON object, so not a {kind} model's settings")
    weights = [p for p in sorted(path.iterdir()) if p.name.endswith(WEIGHT_SUFFIXES)]
    if config.name == "config.json" and not weights:
        raise RegistryError(
            f"{path}: no weights (model.safetensors, pytorch_model.bin, ...): not a {kind} model folder"
        )
    for file in weights:
        if file.suffix == ".safetensors":
            _check_safetensors(file)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def _check_safetensors(path: Path) -> None:
    """A safetensors file is whole: safetensors reads its header and checks that it covers the file (no torch is
    loaded to do it). A copy cut short fails here, not when a server first loads it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError):
        raise RegistryError(f"{path}: not a whole safetensors file (cut short, or not safetensors)") from None
