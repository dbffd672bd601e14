"""Labels -> the comparison / ranking / rating files the trainers read (``rlhfkit.data``).

Which labels feed which file:
- ``comparison``: pairwise labels (a choice of 0/1 gives chosen/rejected; "tie" gives tie=true;
  "both_bad" states no preference and is left out) and ranking labels, each expanded into its
  K(K-1)/2 ordered pairs as in InstructGPT (Ouyang et al. 2022, section 3.5);
- ``ranking``: ranking labels;
- ``rating``: Likert labels (``rating``/``scale``) and thumbs labels (``label``), one row per response.

``aggregate="none"`` keeps one row per annotator label (with ``annotator``, ``created_at`` and ids);
``"majority"`` keeps one row per item: the plurality choice (no row when the vote is split evenly),
the Borda count order for rankings, the modal rating (ties go to the one nearest the median) and the
majority thumb. Labels a reviewer rejected and gold items are left out unless asked for.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhfkit.data import write_jsonl
from rlhfkit.feedback.models import Label, Task, User

EXPORT_KINDS = ("comparison", "ranking", "rating")
AGGREGATES = ("none", "majority")


def label_rows(db: Session, include_gold: bool = False) -> list[dict]:
    query = (
        select(Label, Task, User.username)
        .join(Task, Task.id == Label.task_id)
        .join(User, User.id == Label.annotator_id)
        .order_by(Label.id)
    )
    rows = []
    for label, task, username in db.execute(query):
        if label.review_status == "rejected" or (task.is_gold and not include_gold):
            continue
        rows.append(
            {
                "label_id": label.id,
                "task_id": task.id,
                "external_id": task.external_id,
                "kind": task.kind,
                "prompt": task.prompt,
                "responses": list(task.responses),
                "scale": task.scale,
                "answer": label.answer,
                "reason": label.reason,
                "flags": label.flags or {},
                "annotator": username,
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
        "annotator": row["annotator"],
        "created_at": row["created_at"],
        "reason": row["reason"],
    }


def _comparisons(row: dict, drop_ties: bool) -> list[dict]:
    r = row["responses"]
    pairs: list[tuple[int, int, bool]] = []
    if row["kind"] == "pairwise":
        choice = row["answer"]["choice"]
        if choice in (0, 1):
            pairs = [(choice, 1 - choice, False)]
        elif choice == "tie" and not drop_ties:
            pairs = [(0, 1, True)]
    elif row["kind"] == "ranking":
        pairs = [(a, b, False) for a, b in combinations(row["answer"]["ranking"], 2)]
    out = []
    for a, b, tie in pairs:
        if r[a] == r[b]:
            continue  # identical responses say nothing (and the reader refuses them)
        suffix = f"-{a}-{b}" if row["kind"] == "ranking" else ""
        out.append(
            {
                "prompt": row["prompt"],
                "chosen": r[a],
                "rejected": r[b],
                "tie": tie,
                **_base(row, suffix),
                "chosen_flags": _flags(row, a),
                "rejected_flags": _flags(row, b),
            }
        )
    return out


def _rankings(row: dict) -> list[dict]:
    if row["kind"] != "ranking":
        return []
    k = len(row["responses"])
    return [
        {
            "prompt": row["prompt"],
            "completions": row["responses"],
            "ranking": row["answer"]["ranking"],
            **_base(row),
            "flags": [f"{i}:{f}" for i in range(k) for f in _flags(row, i)],
        }
    ]


def _ratings(row: dict) -> list[dict]:
    if row["kind"] not in ("rating", "thumbs"):
        return []
    out = []
    for i, completion in enumerate(row["responses"]):
        likert = row["kind"] == "rating"
        out.append(
            {
                "prompt": row["prompt"],
                "completion": completion,
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
    median = sorted(ratings)[(len(ratings) - 1) // 2]
    return min((r for r, n in counts.items() if n == top), key=lambda r: (abs(r - median), r))


def _aggregate(kind: str, group: list[dict]) -> dict | None:
    """Several annotators' rows for one item -> one synthetic row with the combined answer."""
    first = group[0]
    answers = [g["answer"] for g in group]
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
        "n_labels": len(group),
        "created_at": max(g["created_at"] for g in group),
        "reason": "\n".join(g["reason"] for g in group if g["reason"]) or None,
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
    out: list[dict] = []
    for row in rows:
        if kind == "comparison":
            records = _comparisons(row, drop_ties)
        elif kind == "ranking":
            records = _rankings(row)
        else:
            records = [r for r in _ratings(row) if not (r["label"] is None and r["rating"] is None)]
        for record in records:
            if "annotators" in row:
                record.update(annotators=row["annotators"], n_labels=row["n_labels"])
        out.extend(records)
    return out


def write_records(records: list[dict], out: Path, fmt: str = "jsonl") -> None:
    if not records:
        raise ValueError(f"{out}: nothing to export (no labels of that kind yet)")
    if fmt == "jsonl":
        write_jsonl(out, records)
    elif fmt == "datasets":
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(str(out))
    else:
        raise ValueError(f"format '{fmt}': must be 'jsonl' or 'datasets'")
