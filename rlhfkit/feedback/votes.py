"""Model-vs-model battles from the labels, for the leaderboard (``rlhfkit.evaluate.leaderboard``).

A battle needs two responses by two different, known models (tasks name them: ``responses: [{"text",
"model"}]`` or ``models``). A pairwise label is one battle: the chosen model wins; "tie" and "both bad"
are ties (as Chatbot Arena counts "tie (bothbad)"). A ranking of K responses gives its K(K-1)/2 ordered
pairs, each a win for the higher-ranked model. Ratings and thumbs give no battles. Labels a reviewer
rejected and gold items are left out. Each label counts once: several annotators on one item are
several votes.
"""

from __future__ import annotations

from itertools import combinations

from sqlalchemy import Connection, or_, select

from rlhfkit.feedback.models import Label, Task

_VOTES = (
    select(Task.kind, Task.models, Label.answer)
    .join(Task, Task.id == Label.task_id)
    .where(
        Task.is_gold.is_(False),
        Task.models.is_not(None),
        Task.kind.in_(("pairwise", "ranking")),
        or_(Label.review_status.is_(None), Label.review_status != "rejected"),
    )
    .order_by(Label.id)
)


def battles_from_label(kind: str, models: list, answer: dict) -> list[tuple[str, str, float]]:
    out = []
    if kind == "pairwise":
        choice = answer["choice"]
        out.append((models[0], models[1], 1.0 if choice == 0 else 0.0 if choice == 1 else 0.5))
    else:
        out.extend((models[a], models[b], 1.0) for a, b in combinations(answer["ranking"], 2))
    return [(a, b, o) for a, b, o in out if a is not None and b is not None and a != b]


def model_battles(conn: Connection, project_id: int) -> list[tuple[str, str, float]]:
    battles = []
    for kind, models, answer in conn.execute(_VOTES.where(Task.project_id == project_id)):
        battles.extend(battles_from_label(kind, models, answer))
    return battles
