"""Readers for JSONL, JSON, Parquet and local Hugging Face ``datasets`` folders.

Every problem is reported as ``file:line: field 'x': what is wrong``. With ``skip_invalid`` bad rows are
skipped but returned, so the caller can count them and list them in its run folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from rlhfkit.data.records import RECORD_TYPES, Record

R = TypeVar("R", bound=Record)


class DataError(ValueError):
    """Bad input data; the message names the file, the line (or row) and the field."""


@dataclass(frozen=True)
class InvalidRow:
    location: str  # "file:line"
    error: str


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, raw row) pairs; location is file:line for JSONL, file:row for the others."""
    suffix = path.suffix.lower()
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{path}: a DatasetDict needs a 'train' split, found {list(ds)}")
            ds = ds["train"]
        for i, row in enumerate(ds):
            yield f"{path}:row {i + 1}", row
    elif suffix == ".jsonl":
        with path.open("rb") as f:  # bytes, decoded line by line: a line that is not UTF-8 is one bad row
            for lineno, line in enumerate(f, start=1):
                try:
                    row = parse_json_line(path, lineno, line)
                except DataError as e:
                    yield f"{path}:{lineno}", e
                    continue
                if row is not BLANK:
                    yield f"{path}:{lineno}", row
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f'{path}: a .json file must hold a list of records (or {{"data": [...]}})')
        for i, row in enumerate(data):
            yield f"{path}:item {i + 1}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}:row {i + 1}", row
    else:
        raise DataError(f"{path}: unknown data format '{suffix}'; use .jsonl, .json, .parquet or a datasets folder")


def one_line(error: BaseException) -> str:
    """An exception's message on one line (libraries' messages run over several), for an error that quotes it."""
    return " ".join(str(error).split())


def read_state_json(path: Path, problem: str, remedy: str) -> Any:
    """A JSON file a run wrote for itself (its state, a round's figures); one that is missing, cut short or not
    UTF-8 fails as ``path: problem (why); remedy``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: {problem} ({one_line(e)}); {remedy}") from None


BLANK = object()  # what ``parse_json_line`` gives for an empty line


def decode_line(path: Path, lineno: int, line: bytes) -> str:
    """One line of a text file as UTF-8; bytes that are not are a ``DataError`` naming ``path:lineno``."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{lineno}: not UTF-8 text (byte {line[e.start]:#04x} at column {e.start + 1})"
        ) from None


def parse_json_line(path: Path, lineno: int, line: bytes) -> Any:
    """One JSONL line's value (``BLANK`` for an empty line); a line that is not UTF-8, not JSON, or nested too
    deeply for the parser is a ``DataError`` naming ``path:lineno``."""
    text = decode_line(path, lineno, line)
    if not text.strip():
        return BLANK
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}:{lineno}: malformed JSON (nested too deeply)") from None


_UNION_TAGS = {"str", "list[Message]", "float", "int"}


def _describe(err: ValidationError) -> str:
    """One readable sentence per bad field; union branches (str | messages) are folded into one."""
    by_field: dict[str, list[tuple[int, str]]] = {}
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if str(p) not in _UNION_TAGS]
        field = ".".join(loc)
        msg = "missing" if e["type"] == "missing" else e["msg"].removeprefix("Value error, ")
        by_field.setdefault(field, []).append((len(e["loc"]), msg))
    parts = []
    for field, msgs in by_field.items():
        if any(other.startswith(field + ".") for other in by_field):
            continue  # a deeper error in the same field says more (e.g. 'messages.0.role')
        if len(msgs) > 1:  # every branch of a union failed at the top: say what the union takes
            msgs = [(0, "must be a string or a list of {role, content} messages")]
        msg = msgs[0][1]
        # Errors from whole-record checks already name their field.
        parts.append(msg if not field or msg.startswith("field") else f"field '{field}': {msg}")
    return "; ".join(parts)


def parse_record(location: str, raw: Any, record_type: type[R]) -> R:
    if isinstance(raw, DataError):
        raise raw
    if not isinstance(raw, dict):
        raise DataError(f"{location}: expected a JSON object, got {type(raw).__name__}")
    try:
        return record_type.model_validate(raw)
    except ValidationError as e:
        raise DataError(f"{location}: {_describe(e)}") from None


def read_records(
    path: str | Path, kind: str | type[R], *, skip_invalid: bool = False
) -> tuple[list[R], list[InvalidRow]]:
    """Read and validate every record of ``path``.

    ``kind`` is a record class or one of ``demonstration``, ``comparison``, ``ranking``, ``rating``.
    Returns (records, invalid rows); invalid rows are only ever non-empty with ``skip_invalid``.
    """
    path = Path(path)
    record_type = RECORD_TYPES[kind] if isinstance(kind, str) else kind
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    records: list[R] = []
    invalid: list[InvalidRow] = []
    for location, raw in _rows(path):
        try:
            records.append(parse_record(location, raw, record_type))
        except DataError as e:
            if not skip_invalid:
                raise
            invalid.append(InvalidRow(location, str(e)))
    if not records:
        reason = f" ({len(invalid)} invalid rows skipped)" if invalid else ""
        raise DataError(f"{path}: no valid records{reason}")
    return records, invalid


def write_jsonl(path: str | Path, rows: list[dict] | list[Record]) -> None:
    """Write rows as JSONL through a temporary file, so an interrupted write never leaves half a file. The
    temporary file is this process's own: the ranks of a multi-process run may write the same file at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                if isinstance(row, Record):
                    row = row.model_dump(exclude_none=True)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
    except BaseException:  # a path that is a folder, a full disk, an interrupt: no half-written file left beside it
        tmp.unlink(missing_ok=True)
        raise


def read_jsonl(path: str | Path) -> list[dict]:
    """Plain rows of a JSONL file (no validation: for files rlhfkit wrote itself); a bad line names its place."""
    path = Path(path)
    rows = [parse_json_line(path, lineno, line) for lineno, line in enumerate(path.read_bytes().splitlines(), start=1)]
    return [row for row in rows if row is not BLANK]


def read_resume_rows(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """The rows a stage wrote to ``path`` before it was interrupted, to go on from: a last line cut short by the
    interruption is dropped (its work is done again); any other line that is not JSON, or a row without
    ``fields``, fails naming ``path:line``."""
    lines = path.read_bytes().splitlines()
    rows = []
    for lineno, line in enumerate(lines, start=1):
        try:
            row = parse_json_line(path, lineno, line)
        except DataError:
            if lineno == len(lines):
                break
            raise
        if row is BLANK:
            continue
        if not isinstance(row, dict) or any(f not in row for f in fields):
            raise DataError(
                f"{path}:{lineno}: not a row this run wrote (it needs {', '.join(fields)}); move the file aside to "
                "start over"
            )
        rows.append(row)
    return rows


def resume_writer(path: Path, kept: list[dict]):
    """``path`` open for appending after exactly the ``kept`` rows (those ``read_resume_rows`` returned): the file is
    rewritten from them, so a line cut short by the interruption does not stay in front of the rows appended next.
    The rewrite goes to a temporary file that replaces ``path`` whole: cut in the middle, it loses none of the rows
    saved before."""
    write_jsonl(path, kept)
    return path.open("a", encoding="utf-8")


def n_training(n_records: int, eval_fraction: float) -> int:
    """How many of ``n_records`` ``load_train_eval`` keeps for training when it holds ``eval_fraction`` out (the
    held-out count rounds down); callers size a batch by it."""
    return n_records - int(n_records * eval_fraction)


def load_train_eval(
    data: str, eval_data: str | None, eval_fraction: float, kind: str, *, skip_invalid: bool = False, seed: int = 0
) -> tuple[list, list, list[InvalidRow]]:
    """Training and held-out records; without ``eval_data`` a seeded ``eval_fraction`` of the training records
    is held out."""
    import random

    train, invalid = read_records(data, kind, skip_invalid=skip_invalid)
    if eval_data:
        held_out, more_invalid = read_records(eval_data, kind, skip_invalid=skip_invalid)
        return train, held_out, invalid + more_invalid
    n_eval = len(train) - n_training(len(train), eval_fraction)
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(train) if i not in held], [train[i] for i in sorted(held)], invalid
