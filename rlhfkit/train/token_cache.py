"""Token ids of a data set, cached, so a stage rerun on the same data (a resume, a sweep over the learning
rate or beta) does not tokenise it again.

    $RLHFKIT_CACHE/tokens/<key>.json

The key is a hash of everything the ids depend on: the records themselves (so a changed file, another
held-out split or seed gives another key), the tokenizer (its vocabulary and merges, special tokens, chat
template), the stage's settings that shape the ids (``max_length``), and the source of the code that
tokenises (``rlhfkit/data/chat.py``, ``rlhfkit/data/pairs.py``, ``rlhfkit/models/reward.py``, the stage's
own module and any it names), so edited tokenisation code never reads ids it did not make. The newest ``KEEP`` files are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhfkit.models.hub import cache_dir

FORMAT = 1
KEEP = 64
SOURCES = ("rlhfkit.data.chat", "rlhfkit.data.pairs", "rlhfkit.models.reward", "rlhfkit.models.reward_scoring")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the tokenizer's ids, computed once per tokenizer object."""
    known = getattr(tokenizer, "_rlhfkit_fingerprint", None)
    if known:
        return known
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    special = [getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "pad_token", "add_bos_token")]
    h.update(repr((special, getattr(tokenizer, "chat_template", None))).encode())
    fingerprint = h.hexdigest()[:16]
    with contextlib.suppress(AttributeError):  # a tokenizer that refuses new attributes is hashed each time
        tokenizer._rlhfkit_fingerprint = fingerprint
    return fingerprint


def _source_hash(modules: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in modules:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        h.update(Path(path).read_bytes() if path else name.encode())
    return h.hexdigest()[:16]


def _encode(item: Any) -> Any:
    if dataclasses.is_dataclass(item):
        return {"__dataclass__": dataclasses.asdict(item)}
    return list(item) if isinstance(item, tuple) else item


def cached_tokens(
    tokenize: Callable[[list], list],
    records: list,
    tokenizer,
    *settings,
    item_type: type | None = None,
    sources: tuple[str, ...] = (),
) -> list:
    """``tokenize(records)``, from the cache when the same records were tokenised the same way before.

    ``item_type``: the dataclass each item is (``Group``), rebuilt from its fields on a read; items that are
    tuples of lists (SFT's ``(ids, labels)``) come back as tuples. ``sources``: further modules whose code
    shapes the ids (beyond ``SOURCES`` and the module that defines ``tokenize``)."""
    if not records:
        return tokenize(records)
    h = hashlib.sha256(repr((FORMAT, settings, tokenizer_fingerprint(tokenizer))).encode())
    h.update(_source_hash((*SOURCES, *sources, tokenize.__module__)).encode())
    for r in records:
        h.update(r.model_dump_json().encode() if hasattr(r, "model_dump_json") else repr(r).encode())
    folder = cache_dir() / "tokens"
    path = folder / f"{h.hexdigest()[:24]}.json"
    if path.exists():
        try:
            items = json.loads(path.read_text())
            path.touch()  # recently used: kept longer
            if item_type is not None:
                return [item_type(**x["__dataclass__"]) for x in items]
            return [tuple(x) if isinstance(x, list) else x for x in items]
        except (OSError, ValueError, TypeError, KeyError):  # unreadable or from other code: tokenise again
            pass
    items = tokenize(records)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.partial")
    tmp.write_text(json.dumps([_encode(x) for x in items]))
    tmp.replace(path)  # a reader never sees half a file
    prune(folder.glob("*.json"))
    return items


def prune(paths, keep: int = KEEP) -> None:
    """Delete all but the ``keep`` most recently used files. Every process of a multi-process run prunes the
    same folder at once, so a file another process has just deleted is skipped, not an error."""
    used = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            used.append((path.stat().st_mtime, path))
    for _, path in sorted(used, reverse=True)[keep:]:
        path.unlink(missing_ok=True)
