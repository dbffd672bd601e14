"""Labels -> the comparison / ranking / rating files the trainers read (``rlhfkit.data``).

Which labels feed which file:
- ``comparison``: pairwise labels (a choice of 0/1 gives chosen/rejected; "tie" gives tie=true;
  "both_bad" states no preference and is left out) and ranking labels, each expanded into its
  K(K-1)/2 ordered pairs as in InstructGPT (Ouyang et al. 2022, section 3.5);
- ``ranking``: ranking labels;
- ``rating``: Likert labels (``rating``/``scale``) and thumbs labels (``label``), one row per response.

``aggregate="none"`` keeps one row per annotator label (with ``annotator``, ``created_at`` and ids);
``"majority"`` keeps one row per item: the plurality choice (no row when the vote is split evenly),
the Borda count order for rankings (responses with equal counts are a tie in the comparison export and leave the
item out of the ranking export), the modal rating (ties go to the one nearest the median) and the majority thumb. Labels a reviewer rejected are never exported; gold items only when asked for.

Every row keeps where it came from: ``task_id`` (the database's), ``task_external_id`` (the task
file's ``id``), ``project``, the task's ``meta``, and the model of each response (``chosen_model`` /
``rejected_model``, ``models``, ``model``). A tie is ``tie: true``; which response of a tied pair sits
in ``chosen`` is arbitrary, balanced by a hash of the task id so that a reader ignoring ``tie`` learns
no preference for the first response. When any prompt in an export is a conversation, every row is
written in TRL's conversational form (prompt and completions as message lists), so a column never mixes
text and lists.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from rlhfkit.data import write_jsonl
from rlhfkit.feedback.models import Label, Project, Task, User

EXPORT_KINDS = ("comparison", "ranking", "rating")
AGGREGATES = ("none", "majority")
FORMATS = ("jsonl", "datasets", "hub")


def label_rows(db: Session, project_id: int, include_gold: bool = False) -> list[dict]:
    """The project's labels that stand (not rejected), with their items, in label order."""
    query = (
        select(Label, Task, User.username, Project.name)
        .join(Task, Task.id == Label.task_id)
        .join(User, User.id == Label.annotator_id)
        .join(Project, Project.id == Task.project_id)
        .where(Task.project_id == project_id, or_(Label.review_status.is_(None), Label.review_status != "rejected"))
        .order_by(Label.id)
    )
    if not include_gold:
        query = query.where(Task.is_gold.is_(False))
    rows = []
    for label, task, username, project in db.execute(query):
        k = len(task.responses)
        rows.append(
            {
                "label_id": label.id,
                "task_id": task.id,
                "external_id": task.external_id,
                "project": project,
                "meta": task.meta,
                "kind": task.kind,
                "prompt": task.prompt,
                "messages": task.messages,
                "responses": list(task.responses),
                "models": list(task.models) if task.models else [None] * k,
                "scale": task.scale,
                "answer": label.answer,
                "reason": label.reason,
                "flags": label.flags or {},
                "annotator": username,
                "suggestion_accepted": label.suggestion_accepted,
                "created_at": label.created_at.isoformat() + "Z",
            }
        )
    return rows


def _flags(row: dict, i: int) -> list[str]:
    return list(row["flags"].get(str(i), []))


def _base(row: dict, suffix: str = "") -> dict:
    return {
        "id": f"label-{row['label_id']}{suffix}",
        "task_id": row["task_id"],
        "task_external_id": row["external_id"],
        "project": row["project"],
        "annotator": row["annotator"],
        "created_at": row["created_at"],
        "reason": row["reason"],
        "suggestion_accepted": row["suggestion_accepted"],
        "meta": row["meta"],
    }


def _prompt(row: dict, chat: bool):
    if not chat:
        return row["prompt"]
    return row["messages"] or [{"role": "user", "content": row["prompt"]}]


def _completion(text: str, chat: bool):
    return [{"role": "assistant", "content": text}] if chat else text


def tie_order(task_id: int) -> tuple[int, int]:
    """Which response of a tied pair goes in ``chosen``: fixed per task, first or second equally often."""
    return (0, 1) if hashlib.sha256(f"tie:{task_id}".encode()).digest()[0] % 2 == 0 else (1, 0)


def _comparisons(row: dict, drop_ties: bool, chat: bool) -> list[dict]:
    r, models = row["responses"], row["models"]
    pairs: list[tuple[int, int, bool]] = []
    if row["kind"] == "pairwise":
        choice = row["answer"]["choice"]
        if choice in (0, 1):
            pairs = [(choice, 1 - choice, False)]
        elif choice == "tie" and not drop_ties:
            pairs = [(*tie_order(row["task_id"]), True)]
    elif row["kind"] == "ranking":
        tied = {frozenset(pair) for pair in row.get("tied_pairs", [])}
        pairs = [(a, b, frozenset((a, b)) in tied) for a, b in combinations(row["answer"]["ranking"], 2)]
        pairs = [p for p in pairs if not (p[2] and drop_ties)]
    out = []
    for a, b, tie in pairs:
        if r[a] == r[b]:
            continue  # identical responses say nothing (and the reader refuses them)
        suffix = f"-{a}-{b}" if row["kind"] == "ranking" else ""
        out.append(
            {
                "prompt": _prompt(row, chat),
                "chosen": _completion(r[a], chat),
                "rejected": _completion(r[b], chat),
                "tie": tie,
                "chosen_model": models[a],
                "rejected_model": models[b],
                **_base(row, suffix),
                "chosen_flags": _flags(row, a),
                "rejected_flags": _flags(row, b),
            }
        )
    return out


def _rankings(row: dict, chat: bool) -> list[dict]:
    if row["kind"] != "ranking" or row.get("tied_pairs"):  # a majority ranking with a split vote has no one order
        return []
    k = len(row["responses"])
    return [
        {
            "prompt": _prompt(row, chat),
            "completions": [_completion(text, chat) for text in row["responses"]],
            "ranking": row["answer"]["ranking"],
            "models": row["models"],
            **_base(row),
            "flags": [f"{i}:{f}" for i in range(k) for f in _flags(row, i)],
        }
    ]


def _ratings(row: dict, chat: bool) -> list[dict]:
    if row["kind"] not in ("rating", "thumbs"):
        return []
    out = []
    for i, completion in enumerate(row["responses"]):
        likert = row["kind"] == "rating"
        out.append(
            {
                "prompt": _prompt(row, chat),
                "completion": _completion(completion, chat),
                "model": row["models"][i],
                "rating": row["answer"]["ratings"][i] if likert else None,
                "scale": row["scale"],
                "label": None if likert else row["answer"]["thumbs"][i],
                **_base(row, f"-{i}"),
                "flags": _flags(row, i),
            }
        )
    return out


def _plurality(votes: list) -> object | None:
    counts = Counter(votes).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def _modal_rating(ratings: list[int]) -> int:
    counts = Counter(ratings)
    top = max(counts.values())
    ordered = sorted(ratings)
    median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2  # of an even count, the middle two
    return min((r for r, n in counts.items() if n == top), key=lambda r: (abs(r - median), r))


def _aggregate(kind: str, group: list[dict]) -> dict | None:
    """Several annotators' rows for one item -> one synthetic row with the combined answer."""
    first = group[0]
    answers = [g["answer"] for g in group]
    tied: list[list[int]] = []
    if first["kind"] == "pairwise":
        choice = _plurality([a["choice"] for a in answers])
        if choice is None:
            return None
        answer = {"choice": choice}
    elif first["kind"] == "ranking":
        k = len(first["responses"])
        borda = [0] * k
        for a in answers:
            for position, i in enumerate(a["ranking"]):
                borda[i] += k - position
        answer = {"ranking": sorted(range(k), key=lambda i: (-borda[i], i))}
        # equal Borda counts are a split vote, as an even pairwise split is: ties, not an order by index
        tied = [[a, b] for a, b in combinations(range(k), 2) if borda[a] == borda[b]]
    elif first["kind"] == "rating":
        answer = {
            "ratings": [_modal_rating([a["ratings"][i] for a in answers]) for i in range(len(first["responses"]))]
        }
    else:
        answer = {"thumbs": [_plurality([a["thumbs"][i] for a in answers]) for i in range(len(first["responses"]))]}
    flags: dict[str, list[str]] = defaultdict(list)
    for g in group:
        for i, names in g["flags"].items():
            flags[i] = sorted(set(flags[i]) | set(names))
    return {
        **first,
        "label_id": f"task{first['task_id']}-majority",
        "answer": answer,
        "flags": dict(flags),
        "annotator": "majority",
        "annotators": sorted({g["annotator"] for g in group}),
        "tied_pairs": tied,
        "n_labels": len(group),
        "created_at": max(g["created_at"] for g in group),
        "reason": "\n".join(g["reason"] for g in group if g["reason"]) or None,
        "suggestion_accepted": None,  # a per-annotator fact; the aggregate has none
    }


def build_records(kind: str, rows: list[dict], aggregate: str = "none", drop_ties: bool = False) -> list[dict]:
    if kind not in EXPORT_KINDS:
        raise ValueError(f"kind '{kind}': must be one of {', '.join(EXPORT_KINDS)}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate '{aggregate}': must be one of {', '.join(AGGREGATES)}")
    if aggregate == "majority":
        by_task: dict[int, list[dict]] = defaultdict(list)
        for row in rows:
            by_task[row["task_id"]].append(row)
        rows = [agg for group in by_task.values() if (agg := _aggregate(kind, group)) is not None]
    chat = any(row["messages"] for row in rows)
    out: list[dict] = []
    for row in rows:
        if kind == "comparison":
            records = _comparisons(row, drop_ties, chat)
        elif kind == "ranking":
            records = _rankings(row, chat)
        else:
            records = [r for r in _ratings(row, chat) if not (r["label"] is None and r["rating"] is None)]
        for record in records:
            if "annotators" in row:
                record.update(annotators=row["annotators"], n_labels=row["n_labels"])
        out.extend(records)
    return out


def columnar(records: list[dict]) -> list[dict]:
    """Records for a column store (Arrow, Parquet): ``meta`` (free-form per task, so its keys and
    types differ between rows) becomes a JSON string."""
    return [
        {**r, "meta": None if r.get("meta") is None else json.dumps(r["meta"], ensure_ascii=False)} for r in records
    ]


def write_records(records: list[dict], out: Path, fmt: str = "jsonl") -> None:
    """Write records as JSONL, a ``datasets.save_to_disk`` folder, or a Hugging Face Hub dataset folder
    (``publish.write_hub_folder``, which needs the kind and a card: call it directly)."""
    if not records:
        raise ValueError(f"{out}: nothing to export (no labels of that kind yet)")
    if fmt == "jsonl":
        write_jsonl(out, records)
    elif fmt == "datasets":
        import datasets

        datasets.Dataset.from_list(columnar(records)).save_to_disk(str(out))
    else:
        raise ValueError(f"format '{fmt}': must be 'jsonl' or 'datasets'")
