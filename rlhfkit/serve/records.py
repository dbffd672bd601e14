"""What serving writes and reads back: each response it gave, the feedback on it, and that feedback as the data
files the trainers read (comparisons from "preferred after regenerate", ratings from thumbs and stars).

Feedback is stored once per (response, Idempotency-Key): a retry after a lost answer finds the row already there
and gets it back, so a client may retry until it hears an answer. Version, experiment arm and user are copied
from the response, so feedback cannot be attributed to a version other than the one that answered.
"""

from __future__ import annotations

import secrets
from contextlib import nullcontext
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from rlhfkit.feedback.db import Store
from rlhfkit.feedback.models import utcnow
from rlhfkit.registry.tables import feedback, responses
from rlhfkit.serve.schemas import FeedbackIn


class FeedbackError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def new_response_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def insert_response(conn: Connection, row: dict[str, Any]) -> None:
    # A model may sample a NUL character (tiny byte-level models do), which PostgreSQL cannot store in a text
    # column: it is kept as U+FFFD, so the answer the client was sent is stored rather than lost with an error.
    text = row["text"].replace("\x00", "\ufffd")
    conn.execute(insert(responses).values(**{**row, "text": text}, created_at=utcnow()))


def _feedback_out(row) -> dict:
    m = dict(row._mapping)
    return {k: m[k] for k in ("id", "response_id", "kind", "value", "other_response_id", "comment", "created_at")}


def submit_feedback(conn: Connection, body: FeedbackIn, key: str) -> tuple[dict, bool]:
    """Store ``body`` under ``key``; returns (the stored row, whether it was there already)."""
    stored = conn.execute(
        select(feedback).where(feedback.c.response_id == body.response_id, feedback.c.idempotency_key == key)
    ).first()
    if stored is not None and stored.user_id == body.user:
        return _feedback_out(stored), True
    if stored is not None:  # a replay is its sender's alone: anyone else is answered as about a missing response
        raise FeedbackError(404, "response_id: no such response for this user")
    answer = conn.execute(
        select(responses.c.user_id, responses.c.version_id, responses.c.experiment, responses.c.arm,
               responses.c.messages).where(responses.c.id == body.response_id)
    ).first()  # fmt: skip
    # Someone else's response answers as a missing one, so response ids reveal nothing.
    if answer is None or answer.user_id != body.user:
        raise FeedbackError(404, "response_id: no such response for this user")
    if body.kind == "preference":
        other = conn.execute(
            select(responses.c.user_id, responses.c.messages).where(responses.c.id == body.other_response_id)
        ).first()
        if other is None or other.user_id != body.user:
            raise FeedbackError(404, "other_response_id: no such response for this user")
        if other.messages != answer.messages:
            raise FeedbackError(422, "other_response_id: must answer the same messages (a regenerated response)")
    row = dict(
        response_id=body.response_id,
        idempotency_key=key,
        kind=body.kind,
        value=body.stored_value(),
        other_response_id=body.other_response_id,
        comment=body.comment,
        user_id=body.user,
        version_id=answer.version_id,
        experiment=answer.experiment,
        arm=answer.arm,
        created_at=utcnow(),
    )
    # On PostgreSQL a failed INSERT aborts the transaction, so it runs in a savepoint; on SQLite writers are
    # serialised and a failed statement undoes only itself.
    try:
        with nullcontext() if conn.dialect.name == "sqlite" else conn.begin_nested():
            conn.execute(insert(feedback).values(**row))
    except IntegrityError:  # a concurrent twin with the same key won the race: its row is the answer
        pass
    stored = conn.execute(
        select(feedback).where(feedback.c.response_id == body.response_id, feedback.c.idempotency_key == key)
    ).first()
    return _feedback_out(stored), False


# ---------------------------------------------------------------- feedback as training data


def _latest_feedback(store: Store, kinds: tuple[str, ...], after: int, until: int | None, version_ids) -> list:
    """Feedback rows of ``kinds`` with after < id <= until, joined to their responses; a user who changed their
    mind (two thumbs on one response) counts once, with the last word."""
    query = (
        select(feedback, responses.c.messages, responses.c.text)
        .join(responses, responses.c.id == feedback.c.response_id)
        .where(feedback.c.kind.in_(kinds), feedback.c.id > after)
        .order_by(feedback.c.id)
    )
    if until is not None:
        query = query.where(feedback.c.id <= until)
    if version_ids is not None:
        query = query.where(feedback.c.version_id.in_(list(version_ids)))
    with store.read_conn() as conn:
        rows = list(conn.execute(query))
    last: dict[tuple, Any] = {}
    for r in rows:
        last[(r.response_id, r.kind, r.other_response_id if r.kind == "preference" else None)] = r
    if "preference" in kinds:  # one preference per regenerated pair: A over B and then B over A is one answer
        pairs: dict[tuple, Any] = {}
        for r in sorted(last.values(), key=lambda r: r.id):  # the latest word last (a dict keeps first places)
            if r.kind == "preference":
                pairs[tuple(sorted((r.response_id, r.other_response_id)))] = r
        last = {k: r for k, r in last.items() if r.kind != "preference"}
        last.update({("pair",) + k: r for k, r in pairs.items()})
    return sorted(last.values(), key=lambda r: r.id)


def max_feedback_id(store: Store) -> int:
    from sqlalchemy import func

    with store.read_conn() as conn:
        return conn.execute(select(func.max(feedback.c.id))).scalar() or 0


def live_comparisons(store: Store, after: int = 0, until: int | None = None, version_ids=None) -> list[dict]:
    """Preferences ("this one, not the other", after a regenerate) as comparison rows for the trainers."""
    rows = _latest_feedback(store, ("preference",), after, until, version_ids)
    ids = {r.other_response_id for r in rows}
    with store.read_conn() as conn:
        texts = dict(conn.execute(select(responses.c.id, responses.c.text).where(responses.c.id.in_(ids))).all())
    out = []
    for r in rows:
        chosen, rejected = r.text, texts.get(r.other_response_id, "")
        if chosen.strip() and rejected.strip() and chosen != rejected:
            out.append({"prompt": r.messages, "chosen": chosen, "rejected": rejected, "annotator": r.user_id,
                        "source": "live", "feedback_id": r.id})  # fmt: skip
    return out


def live_ratings(store: Store, after: int = 0, until: int | None = None, version_ids=None) -> list[dict]:
    """Thumbs (``label``) and star ratings (``rating``, ``scale``) as rating rows for the trainers."""
    out = []
    for r in _latest_feedback(store, ("thumbs", "rating"), after, until, version_ids):
        if not r.text.strip():
            continue
        verdict = {"label": bool(r.value)} if r.kind == "thumbs" else dict(r.value)
        out.append({"prompt": r.messages, "completion": r.text, **verdict, "annotator": r.user_id, "source": "live",
                    "feedback_id": r.id})  # fmt: skip
    return out
