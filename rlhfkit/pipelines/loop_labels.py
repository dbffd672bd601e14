"""Where the production loop's labels come from, each source writing ordinary comparison rows with a ``source``:

- ``live``: feedback from serving (``rlhfkit.serve.records``): a preference after "regenerate" is a comparison;
  thumbs and ratings are paired per prompt by ``rlhfkit.data.convert.ratings_to_comparisons`` (pooled over users,
  who rarely rate two answers to one prompt themselves), at most ``MAX_PAIRS_PER_PROMPT`` per prompt;
- ``queue``: the annotation app's human queue (its ``default`` project): pairs the reward model is least sure of
  are added as pairwise tasks (the app's ``uncertainty`` strategy serves them first), and the labels people gave
  them are read back in later rounds;
- a labeller, which scores every sampled response: a reward model (retrained each round on the human labels),
  or any reward or judge setting; the best and the worst response of each prompt make a pair ("RLHF Workflow",
  Dong et al. 2024).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from rlhfkit.data.io import read_jsonl as jsonl_rows
from rlhfkit.data.records import Rating, from_json, to_json

MAX_PAIRS_PER_PROMPT = 8


def live_labels(store, after: int, until: int, thumbs: bool, seed: int) -> list[dict]:
    from rlhfkit.data.convert import rating_points, ratings_to_comparisons
    from rlhfkit.serve.records import live_comparisons, live_ratings

    rows = [{**r, "source": "live"} for r in live_comparisons(store, after, until)]
    if thumbs:
        ratings = [Rating.model_validate({**r, "annotator": None}) for r in live_ratings(store, after, until)]
        # pooled over users, one prompt may have thumbs from some and stars from others: pairs within a scale only
        # (mixed, ratings_to_comparisons refuses the prompt, and every rerun of the round failed the same way)
        by_scale: dict[int, list[Rating]] = {}
        for r in ratings:
            by_scale.setdefault(rating_points(r)[1], []).append(r)
        pairs = [c for scale in sorted(by_scale) for c in ratings_to_comparisons(by_scale[scale], by_annotator=False)]
        rng = random.Random(seed)
        by_prompt: dict[str, list] = {}
        for c in pairs:
            by_prompt.setdefault(json.dumps(to_json(c.prompt)), []).append(c)
        for group in by_prompt.values():
            for c in rng.sample(group, min(MAX_PAIRS_PER_PROMPT, len(group))):
                rows.append({"prompt": to_json(c.prompt), "chosen": to_json(c.chosen), "rejected": to_json(c.rejected),
                             "source": "live-thumbs"})  # fmt: skip
    return rows


# ---------------------------------------------------------------- the annotation app's queue


def queue_push(store, loop_id: str, round_: int, candidates: list[dict], n: int, scorer) -> list[dict]:
    """Add the ``n`` pairs the reward model is least sure of (P(a > b) nearest one half) as pairwise tasks, with their
    scores so the app's uncertainty strategy serves them first. Idempotent: tasks are keyed by loop, round, index."""
    from rlhfkit.data.records import flat_text
    from rlhfkit.feedback import active
    from rlhfkit.feedback.projects import get_project
    from rlhfkit.feedback.tasks import add_tasks, parse_task

    ranked = sorted(candidates, key=lambda c: abs(c["margin"]))[:n]
    rows = []
    for i, c in enumerate(ranked):
        rows.append({"id": f"loop:{loop_id}:r{round_}:{i}", "prompt": flat_text(from_json(c["prompt"])),
                     "responses": [c["a"], c["b"]], "kind": "pairwise", "chat": c["prompt"]})  # fmt: skip
    with store.write() as db:
        tasks = [parse_task(f"loop round {round_} pair {i}", r) for i, r in enumerate(rows)]
        for task, c in zip(tasks, ranked):
            task.scores = [[c["score_a"], c["score_b"]]]  # one member's scores, as `annotate load --scorer` stores them
            task.uncertainty, task.disagreement = active.uncertainty(task.scores), active.disagreement(task.scores)
        add_tasks(db, get_project(db, None).id, tasks)  # the ``default`` project: the one `annotate` serves unasked
        db.commit()
    return rows


def queue_pull(store, loop_id: str, pushed: dict[str, list]) -> list[dict]:
    """Comparisons from the labels people gave the loop's tasks (``pushed``: task id -> the chat prompt)."""
    from rlhfkit.feedback.export import build_records, label_rows
    from rlhfkit.feedback.projects import get_project

    with store.read() as db:
        rows = label_rows(db, get_project(db, None).id)
    rows = [r for r in rows if (r["external_id"] or "").startswith(f"loop:{loop_id}:")]
    out = []
    for record in build_records("comparison", rows, drop_ties=True):
        external = next(r["external_id"] for r in rows if r["task_id"] == record["task_id"])
        out.append({"prompt": pushed.get(external, record["prompt"]), "chosen": record["chosen"],
                    "rejected": record["rejected"], "annotator": record.get("annotator"), "source": "queue"})  # fmt: skip
    return out


# ---------------------------------------------------------------- the labeller


@torch.no_grad()
def score_groups(labeller, prompts: list, groups: list[list[str]]) -> torch.Tensor:
    """(P, K) scores of each prompt's K responses. A reward scores each response; a pairwise judge compares each
    response with the next one (in both orders where it asks in both), and a response's score is its mean
    probability of winning its two comparisons."""
    P, K = len(groups), len(groups[0])
    flat_prompts = [p for p in prompts for _ in range(K)]
    flat = [t for g in groups for t in g]
    if hasattr(labeller, "score") or callable(labeller) and not hasattr(labeller, "compare"):
        score = labeller.score if hasattr(labeller, "score") else labeller
        return torch.as_tensor(score(flat_prompts, flat), dtype=torch.float32).view(P, K)
    nxt = [g[(i + 1) % K] for g in groups for i in range(K)]
    wins = labeller.compare(flat_prompts, flat, nxt).prob_a.view(P, K)  # response i against i + 1
    return (wins + (1 - wins.roll(1, dims=1))) / 2  # i's win against i + 1 and against i - 1


def best_against_worst(
    prompts: list, groups: list[list[str]], scores: torch.Tensor, min_margin: float
) -> tuple[list, list]:
    """(pairs, candidates): per prompt the best response chosen over the worst, when they differ in text and score
    by more than ``min_margin``; candidates are every prompt's two middle-scored responses with the gap between them
    (for the human queue: where the labeller is least sure)."""
    pairs, candidates = [], []
    for prompt, group, row in zip(prompts, groups, scores.tolist()):
        order = sorted(range(len(group)), key=lambda i: -row[i])
        best, worst = order[0], order[-1]
        if (
            group[best].strip()
            and group[worst].strip()
            and group[best] != group[worst]
            and row[best] - row[worst] > min_margin
        ):
            pairs.append({"prompt": to_json(prompt), "chosen": group[best], "rejected": group[worst],
                          "margin": row[best] - row[worst], "source": "labeller"})  # fmt: skip
        a, b = order[len(order) // 2 - 1], order[len(order) // 2]
        if group[a] != group[b] and group[a].strip() and group[b].strip():
            candidates.append({"prompt": to_json(prompt), "a": group[a], "b": group[b], "score_a": row[a],
                               "score_b": row[b], "margin": float(torch.sigmoid(torch.tensor(row[a] - row[b]))) - 0.5})  # fmt: skip
    return pairs, candidates


def read_jsonl(path: Path) -> list[dict]:
    return jsonl_rows(path) if path.exists() else []  # a malformed line names its file:line
