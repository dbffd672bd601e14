"""The four question types and what a valid answer to each looks like.

Answers refer to responses by their index in the task's ``responses`` list (the order they were
loaded in), never by the shuffled position an annotator saw, so labels from different annotators
compare directly.

- pairwise (K = 2): ``{"choice": 0 | 1 | "tie" | "both_bad"}``
- ranking:          ``{"ranking": [best, ..., worst]}``, a permutation of 0..K-1
- rating (Likert):  ``{"ratings": [r_0, ..., r_K-1]}``, integers 1..scale
- thumbs:           ``{"thumbs": [up_0, ..., up_K-1]}``, booleans (true = thumbs up)

Every kind may also carry a free-text ``reason`` and ``flags`` per response
(``{"1": ["harmful", "untrue"]}``), which are stored beside the answer.
Error messages say what is expected and never repeat the value received: they travel back in HTTP
answers, which must not reflect their input.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from rlhfkit.feedback.models import FLAGS, KINDS

PAIRWISE_SPECIAL = ("tie", "both_bad")


class AnswerError(ValueError):
    pass


def validate_answer(kind: str, answer: Any, k: int, scale: int) -> dict:
    """Return the answer in canonical form or raise AnswerError naming the field that is wrong."""
    if kind not in KINDS:
        raise AnswerError(f"kind: must be one of {', '.join(KINDS)}")
    if not isinstance(answer, dict):
        raise AnswerError(f"answer: must be an object, got {type(answer).__name__}")
    if kind == "pairwise":
        choice = answer.get("choice")
        # type() rather than isinstance: True and 0.0 compare equal to 1 and 0 but are not indices
        if not ((type(choice) is int and choice in (0, 1)) or (type(choice) is str and choice in PAIRWISE_SPECIAL)):
            raise AnswerError("answer.choice: must be 0, 1, 'tie' or 'both_bad'")
        return {"choice": choice}
    if kind == "ranking":
        ranking = answer.get("ranking")
        # every item an index (type(): True is not 1 here), each once: anything else beside them ("x", null, a
        # list) used to pass, and broke the project's export and leaderboard for every label after it
        if (
            not isinstance(ranking, list)
            or any(type(x) is not int for x in ranking)
            or sorted(ranking) != list(range(k))
        ):
            raise AnswerError(f"answer.ranking: must list each response index 0..{k - 1} once, best first")
        return {"ranking": list(ranking)}
    if kind == "rating":
        ratings = answer.get("ratings")
        if not isinstance(ratings, list) or len(ratings) != k:
            raise AnswerError(f"answer.ratings: must be a list of {k} ratings (one per response)")
        for i, r in enumerate(ratings):
            if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= scale:
                raise AnswerError(f"answer.ratings.{i}: must be an integer 1..{scale}")
        return {"ratings": list(ratings)}
    thumbs = answer.get("thumbs")
    if not isinstance(thumbs, list) or len(thumbs) != k or not all(isinstance(t, bool) for t in thumbs):
        raise AnswerError(f"answer.thumbs: must be a list of {k} booleans (true = up)")
    return {"thumbs": list(thumbs)}


def validate_flags(flags: Any, k: int) -> dict[str, list[str]] | None:
    if flags in (None, {}):
        return None
    if not isinstance(flags, dict):
        raise AnswerError("flags: must be an object mapping a response index to a list of flags")
    out: dict[str, list[str]] = {}
    for key, names in flags.items():
        # Only a response index written as such ("1", not "01", which would overwrite "1"'s flags) is a key;
        # anything else is named by position only.
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and key == str(int(key)) and int(key) < k):
            raise AnswerError(f"flags: every key must be a response index 0..{k - 1}")
        if not isinstance(names, list) or any(n not in FLAGS for n in names):
            raise AnswerError(f"flags.{int(key)}: must be a list drawn from {', '.join(FLAGS)}")
        if names:
            out[str(int(key))] = sorted(set(names))
    return out or None


def gold_correct(kind: str, answer: dict, gold: dict) -> bool:
    """Whether a label matches a gold item's known answer.

    Pairwise and thumbs must match exactly; a ranking counts as correct when its best response is the
    gold best (full orders of K > 2 rarely match exactly even among experts); Likert ratings when each
    is within one point of the gold rating.
    """
    if kind == "pairwise":
        return answer["choice"] == gold["choice"]
    if kind == "ranking":
        return answer["ranking"][0] == gold["ranking"][0]
    if kind == "rating":
        return all(abs(a - g) <= 1 for a, g in zip(answer["ratings"], gold["ratings"]))
    return answer["thumbs"] == gold["thumbs"]


def agreement_units(kind: str, task_id: int, answer: dict) -> list[tuple[Hashable, Hashable]]:
    """Split one label into (unit, category) pairs for agreement statistics.

    Pairwise and ranking labels are one unit per task (the choice, or the best response); ratings and
    thumbs are one unit per response, since each response is judged on its own.
    """
    if kind == "pairwise":
        return [((task_id,), answer["choice"])]
    if kind == "ranking":
        return [((task_id,), answer["ranking"][0])]
    values = answer["ratings"] if kind == "rating" else answer["thumbs"]
    return [((task_id, i), v) for i, v in enumerate(values)]
