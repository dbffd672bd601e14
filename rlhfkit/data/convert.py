"""Conversions between forms of feedback, as pure functions over the record types of ``records.py``.

Ratings to pairs (``ratings_to_comparisons``), the rule:
1. Groups. Ratings are grouped by prompt and, with ``by_annotator`` (the default), by annotator too: people use
   a scale differently, so one person's 4 is compared only with that person's other ratings of the same
   prompt. Ratings without an annotator form one group per prompt. ``by_annotator=False`` pools everyone's
   ratings of a prompt.
2. Pairs. Within a group, every two responses with different ratings give a comparison: chosen = the higher
   rated, margin = the difference of the two ratings in rating points (``with_margin=False`` leaves it None),
   annotator = theirs (None when a pooled pair mixes annotators).
3. Equal ratings. ``ties="drop"`` (the default) drops the pair; ``ties="tie"`` keeps it as a comparison with
   ``tie=True`` (chosen = the one listed first), for the Davidson reward model or a tie-aware DPO loss. Never a
   false preference.
4. Thumbs. A ``label`` record counts as a rating on a 2-point scale: down = 1, up = 2 (so an up and a down on the
   same prompt give a pair with margin 1).
5. Refusals. A group that mixes scales (a 4 of 5 next to a 4 of 10, or thumbs next to stars) is refused with
   the prompt and annotator named: such ratings cannot be compared. The same response text twice in a group is
   never paired with itself.
Order: groups in order of first appearance, and within a group pairs (i, j), i < j, in record order.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

from rlhfkit.data.records import Comparison, Rating, Text

TIE_RULES = ("drop", "tie")


def _text_key(text: Text):
    """A hashable stand-in for a prompt or completion (a string, or a list of messages)."""
    return text if isinstance(text, str) else tuple((m.role, m.content) for m in text)


def rating_points(record: Rating) -> tuple[float, int]:
    """(rating, scale) of a record; thumbs are 1 (down) or 2 (up) on a scale of 2."""
    if record.rating is not None:
        return record.rating, record.scale
    return (2 if record.label else 1), 2


def _preview(text: Text, width: int = 40) -> str:
    flat = text if isinstance(text, str) else " / ".join(m.content for m in text)
    return repr(flat if len(flat) <= width else flat[: width - 3] + "...")


def ratings_to_comparisons(
    ratings: Iterable[Rating], ties: str = "drop", by_annotator: bool = True, with_margin: bool = True
) -> list[Comparison]:
    """Pairs from ratings by the rule in this module's docstring. ratings: Rating records (Likert or thumbs)."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    groups: dict[tuple, list[Rating]] = {}
    for record in ratings:
        key = (_text_key(record.prompt), record.annotator if by_annotator else None)
        groups.setdefault(key, []).append(record)

    comparisons = []
    for group in groups.values():
        scales = {rating_points(r)[1] for r in group}
        if len(scales) > 1:
            who = f", annotator {group[0].annotator!r}" if by_annotator and group[0].annotator else ""
            raise ValueError(
                f"ratings of prompt {_preview(group[0].prompt)}{who} use different scales {sorted(scales)} "
                "(thumbs count as a scale of 2); rate one prompt on one scale, or split the file"
            )
        for first, second in combinations(group, 2):
            if _text_key(first.completion) == _text_key(second.completion):
                continue
            (rating_1, _), (rating_2, _) = rating_points(first), rating_points(second)
            if rating_1 == rating_2 and ties == "drop":
                continue
            chosen, rejected = (second, first) if rating_2 > rating_1 else (first, second)
            annotator = first.annotator if first.annotator == second.annotator else None
            comparisons.append(
                Comparison(
                    prompt=first.prompt,
                    chosen=chosen.completion,
                    rejected=rejected.completion,
                    tie=rating_1 == rating_2,
                    annotator=annotator,
                    margin=abs(rating_1 - rating_2) if with_margin and rating_1 != rating_2 else None,
                )
            )
    return comparisons
