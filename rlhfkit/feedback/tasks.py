"""Task rows: parsing the task file (and API uploads), scoring them, and storing them in a project.

A row looks like ``{"prompt": ..., "responses": [...], "kind": "pairwise", "scale": 5, "id": ...,
"gold": {...}, "meta": {...}, "suggestion": {...}}``:

- ``prompt`` is a string or a conversation, a list of ``{"role", "content"}`` messages (TRL's
  conversational format); the responses are the candidates for the next assistant turn;
- each response is a string or ``{"text": ..., "model": ...}``; ``models`` (a list beside plain-string
  responses) says the same; ``completions`` is accepted for ``responses``;
- ``suggestion`` is an answer a model or judge suggests (in the answer format of ``questions``); with a
  scorer, the scores give one (see ``suggest_answer``).

Every string is checked for NUL characters (PostgreSQL cannot store them) and every number in ``meta``
for being finite, so anything accepted here can be stored on either database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhfkit.data.io import BLANK, DataError, parse_json_line
from rlhfkit.feedback import active
from rlhfkit.feedback.models import KINDS, Task, storable, utcnow
from rlhfkit.feedback.questions import AnswerError, validate_answer

ROLES = ("system", "user", "assistant", "tool")
MAX_ID, MAX_MODEL = 200, 200  # characters; the columns' sizes
UNSTORABLE = "NUL characters and unpaired surrogates are not allowed"


class TaskError(ValueError):
    """A task row that cannot be loaded; the message names the location and the field."""


def _check_json(location: str, field: str, value: Any) -> None:
    """No NUL in any string and no NaN/infinity anywhere (walked without recursion: input may be deep)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not storable(item):
                raise TaskError(f"{location}: field '{field}': {UNSTORABLE}")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise TaskError(f"{location}: field '{field}': numbers must be finite (no NaN or Infinity)")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _text(location: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TaskError(f"{location}: field '{field}': must be a non-empty string")
    if not storable(value):
        raise TaskError(f"{location}: field '{field}': {UNSTORABLE}")
    return value


def _conversation(location: str, messages: list) -> list[dict]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise TaskError(
                f'{location}: field \'prompt.{i}\': must be {{"role": one of {", ".join(ROLES)}, "content"}}'
            )
        out.append({"role": m["role"], "content": _text(location, f"prompt.{i}.content", m.get("content"))})
    if not any(m["role"] == "user" for m in out):
        raise TaskError(f"{location}: field 'prompt': a conversation needs at least one user message")
    return out


def flatten(messages: list[dict]) -> str:
    """A conversation as plain text, for scorers (which take a string prompt) and for short listings."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _responses(location: str, raw: dict) -> tuple[list[str], list[str | None] | None]:
    responses = raw.get("responses", raw.get("completions"))
    if not isinstance(responses, list) or len(responses) < 2:
        raise TaskError(f"{location}: field 'responses': must be a list of at least 2 responses")
    texts, models = [], []
    for i, r in enumerate(responses):
        if isinstance(r, dict):
            texts.append(_text(location, f"responses.{i}.text", r.get("text")))
            models.append(r.get("model"))
        else:
            texts.append(_text(location, f"responses.{i}", r))
            models.append(None)
    listed = raw.get("models")
    if listed is not None:
        if not isinstance(listed, list) or len(listed) != len(texts):
            raise TaskError(f"{location}: field 'models': must list one model per response ({len(texts)})")
        if any(m is not None for m in models):
            raise TaskError(f"{location}: field 'models': give the models either in 'models' or in each response")
        models = list(listed)
    for i, m in enumerate(models):
        if m is not None and (not isinstance(m, str) or not m.strip() or len(m) > MAX_MODEL or not storable(m)):
            raise TaskError(f"{location}: field 'models.{i}': must be a model name of 1-{MAX_MODEL} characters")
    return texts, (models if any(m is not None for m in models) else None)


def parse_task(location: str, raw: Any) -> Task:
    """One task row -> an unsaved Task (its project is set by ``add_tasks``)."""
    if not isinstance(raw, dict):
        raise TaskError(f"{location}: expected a JSON object, got {type(raw).__name__}")
    prompt = raw.get("prompt")
    if isinstance(prompt, list):
        messages = _conversation(location, prompt)
        prompt = flatten(messages)
    else:
        messages = None
        prompt = _text(location, "prompt", prompt)
    responses, models = _responses(location, raw)
    kind = raw.get("kind", "pairwise" if len(responses) == 2 else "ranking")
    if kind not in KINDS:
        raise TaskError(f"{location}: field 'kind': must be one of {', '.join(KINDS)}")
    if kind == "pairwise" and len(responses) != 2:
        raise TaskError(f"{location}: field 'responses': a pairwise task needs exactly 2, got {len(responses)}")
    scale = raw.get("scale", 5)
    if not isinstance(scale, int) or isinstance(scale, bool) or not 2 <= scale <= 10:
        raise TaskError(f"{location}: field 'scale': must be an integer 2..10")
    answers = {}
    for field in ("gold", "suggestion"):
        if raw.get(field) is not None:
            try:
                answers[field] = validate_answer(kind, raw[field], len(responses), scale)
            except AnswerError as e:
                raise TaskError(f"{location}: field '{field}': {e}") from None
    ext = raw.get("id")
    if ext is not None:
        if isinstance(ext, bool) or not isinstance(ext, (str, int)) or not 1 <= len(str(ext)) <= MAX_ID:
            raise TaskError(f"{location}: field 'id': must be a string or integer of 1-{MAX_ID} characters")
        _check_json(location, "id", str(ext))
    meta = raw.get("meta")
    if meta is not None:
        if not isinstance(meta, dict):
            raise TaskError(f"{location}: field 'meta': must be a JSON object")
        _check_json(location, "meta", meta)
    task = Task(
        external_id=None if ext is None else str(ext),
        kind=kind,
        prompt=prompt,
        messages=messages,
        responses=responses,
        models=models,
        scale=scale,
        is_gold="gold" in answers,
        gold_answer=answers.get("gold"),
        suggestion=answers.get("suggestion"),
        meta=meta,
        n_labels=0,
        created_at=utcnow(),
    )
    task.location = location  # not a column: where later checks (a repeated id) name it
    return task


def read_task_file(path: Path) -> list[Task]:
    tasks = []
    for lineno, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        try:
            raw = parse_json_line(path, lineno, line)
        except DataError as e:
            raise TaskError(str(e)) from None
        if raw is not BLANK:
            tasks.append(parse_task(f"{path}:{lineno}", raw))
    if not tasks:
        raise TaskError(f"{path}: no tasks in the file")
    return tasks


def suggest_answer(kind: str, scores: list[list[float]], scale: int) -> dict | None:
    """The answer the reward model's mean score (over ensemble members) suggests, in the kind's format:
    pairwise, the higher-scored response (none when they score the same); ranking, by score; thumbs, up
    where the score is above 0; rating, the score read as a z-score (reward models are normalised to
    mean 0 and std 1 on reference samples) spread over the scale: z = -2 -> 1, 0 -> the middle, +2 -> scale.
    """
    k = len(scores[0])
    mean = [sum(member[i] for member in scores) / len(scores) for i in range(k)]
    if kind == "pairwise":
        return None if mean[0] == mean[1] else {"choice": 0 if mean[0] > mean[1] else 1}
    if kind == "ranking":
        return {"ranking": sorted(range(k), key=lambda i: (-mean[i], i))}
    if kind == "thumbs":
        return {"thumbs": [m > 0 for m in mean]}
    mid, spread = (scale + 1) / 2, (scale - 1) / 4
    return {"ratings": [min(scale, max(1, round(mid + max(-2.0, min(2.0, m)) * spread))) for m in mean]}


def apply_scores(task: Task, scorer: active.Scorer) -> None:
    """Score a task's responses; store the scores, the two active-learning priorities and a suggestion."""
    scores = active.check_scores(
        scorer(task.prompt, list(task.responses)), len(task.responses), f"task '{task.external_id or task.prompt[:40]}'"
    )
    task.scores = scores
    task.uncertainty = active.uncertainty(scores)
    task.disagreement = active.disagreement(scores)
    task.suggestion = suggest_answer(task.kind, scores, task.scale)


def add_tasks(
    db: Session, project_id: int, tasks: Iterable[Task], scorer: active.Scorer | None = None
) -> tuple[list[Task], int]:
    """Insert tasks into a project, skipping any whose id is already stored there. Returns (added tasks
    with their new ids, number skipped). A task's own ``suggestion`` is kept over the scorer's."""
    tasks = list(tasks)
    ids = [t.external_id for t in tasks if t.external_id is not None]
    first: dict[str, str] = {}
    for n, task in enumerate(tasks, start=1):
        where = getattr(task, "location", None) or f"item {n}"
        if task.external_id is not None:
            if task.external_id in first:  # the second was dropped as "already present", wrongly and unnamed
                raise TaskError(f"{where}: field 'id': the same as {first[task.external_id]}'s (ids are per task)")
            first[task.external_id] = where
    known: set[str] = set()
    for start in range(0, len(ids), 500):  # in chunks: SQLite caps the parameters of one statement
        chunk = ids[start : start + 500]
        known.update(
            db.scalars(select(Task.external_id).where(Task.project_id == project_id, Task.external_id.in_(chunk)))
        )
    added = []
    for task in tasks:
        if task.external_id in known:
            continue
        if task.external_id is not None:
            known.add(task.external_id)
        if scorer is not None:
            given = task.suggestion
            apply_scores(task, scorer)
            task.suggestion = given or task.suggestion
        task.project_id = project_id
        db.add(task)
        added.append(task)
    db.flush()
    return added, len(tasks) - len(added)
