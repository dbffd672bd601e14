"""Figures for the admin dashboard, per project: totals, agreement per question type, and per annotator
their throughput, time per item, accuracy on gold items and how often they kept a model's suggestion
(an annotator who keeps nearly all of them may be rubber-stamping)."""

from __future__ import annotations

from collections import defaultdict
from statistics import median

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.models import KINDS, Label, Task, User
from rlhfkit.feedback.quality import agreement
from rlhfkit.feedback.questions import agreement_units, gold_correct

BREAK_SECONDS = 600  # a gap longer than this between two labels is a break, not working time


def active_hours(times: list, durations: list[int | None]) -> float:
    """Working time: gaps between consecutive labels, with breaks cut to nothing, plus the time spent
    on the first item (the earliest label's duration: ``times`` and ``durations`` come in any order, paired)."""
    durations = [d for _, d in sorted(zip(times, durations), key=lambda pair: pair[0])]
    times = sorted(times)
    seconds = (durations[0] or 0) / 1000 if durations else 0.0
    for a, b in zip(times, times[1:]):
        gap = (b - a).total_seconds()
        seconds += gap if gap <= BREAK_SECONDS else 0
    return max(seconds, 1.0) / 3600


def stats(db: Session, project_id: int, overlap: int) -> dict:
    rows = db.execute(
        select(
            Label.annotator_id,
            Label.task_id,
            Label.answer,
            Label.duration_ms,
            Label.created_at,
            Label.review_status,
            Label.suggestion_accepted,
            Task.kind,
            Task.is_gold,
            Task.gold_answer,
        )
        .join(Task, Task.id == Label.task_id)
        .where(Task.project_id == project_id)
    ).all()
    users = {u.id: u for u in db.scalars(select(User))}
    per_user: dict[int, dict] = defaultdict(
        lambda: {"times": [], "durations": [], "gold_seen": 0, "gold_ok": 0, "suggested": 0, "kept": 0}
    )
    triples: dict[str, list] = defaultdict(list)
    for r in rows:
        u = per_user[r.annotator_id]
        u["times"].append(r.created_at)
        u["durations"].append(r.duration_ms)
        if r.suggestion_accepted is not None:
            u["suggested"] += 1
            u["kept"] += r.suggestion_accepted
        if r.is_gold:
            u["gold_seen"] += 1
            u["gold_ok"] += gold_correct(r.kind, r.answer, r.gold_answer)
        elif r.review_status != "rejected":
            for unit, category in agreement_units(r.kind, r.task_id, r.answer):
                triples[r.kind].append((unit, r.annotator_id, category))

    annotators = []
    for user_id, u in sorted(per_user.items()):
        known = [d for d in u["durations"] if d is not None]
        annotators.append(
            {
                "user": users[user_id].username,
                "role": users[user_id].role,
                "labels": len(u["times"]),
                "labels_per_hour": len(u["times"]) / active_hours(u["times"], u["durations"]),
                "median_seconds": median(known) / 1000 if known else None,
                "gold_seen": u["gold_seen"],
                "gold_accuracy": u["gold_ok"] / u["gold_seen"] if u["gold_seen"] else None,
                "suggestions_shown": u["suggested"],
                "suggestions_kept": u["kept"] / u["suggested"] if u["suggested"] else None,
                "last_label_at": max(u["times"]).isoformat() + "Z",
            }
        )
    in_project = Task.project_id == project_id
    total_tasks = db.scalar(select(func.count()).select_from(Task).where(in_project, Task.is_gold.is_(False)))
    complete = db.scalar(
        select(func.count()).select_from(Task).where(in_project, Task.is_gold.is_(False), Task.n_labels >= overlap)
    )
    return {
        "totals": {
            "tasks": total_tasks,
            "gold_tasks": db.scalar(select(func.count()).select_from(Task).where(in_project, Task.is_gold.is_(True))),
            "labels": len(rows),
            "complete_tasks": complete,
            "overlap": overlap,
            "users": len(users),
        },
        "agreement": {kind: agreement(triples[kind]) for kind in KINDS if triples[kind]},
        "annotators": annotators,
    }
