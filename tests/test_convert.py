"""Ratings to pairs (rlhfkit.data.convert): the documented rule, case by case.

Run: PYTHONPATH=. python -m pytest tests/test_convert.py -q
"""

import pytest

from rlhfkit.data import Rating, ratings_to_comparisons


def rating(completion, stars=None, thumbs=None, prompt="p", annotator="ann", scale=5):
    return Rating(prompt=prompt, completion=completion, rating=stars, label=thumbs, annotator=annotator, scale=scale)


def pairs(comparisons):
    """(chosen, rejected, margin, tie) per comparison, in order."""
    return [(c.chosen, c.rejected, c.margin, c.tie) for c in comparisons]


def test_every_pair_with_different_ratings_higher_chosen_margin_the_difference():
    """A 5, B 3, C 5, D 1 (one annotator, one prompt). Pairs in record order:
    (A, B) -> A, margin 2; (A, C) equal -> dropped; (A, D) -> A, 4; (B, C) -> C, 2; (B, D) -> B, 2; (C, D) -> C, 4."""
    records = [rating("A", 5), rating("B", 3), rating("C", 5), rating("D", 1)]
    out = ratings_to_comparisons(records)
    assert pairs(out) == [
        ("A", "B", 2, False),
        ("A", "D", 4, False),
        ("C", "B", 2, False),
        ("B", "D", 2, False),
        ("C", "D", 4, False),
    ]
    assert all(c.prompt == "p" and c.annotator == "ann" for c in out)


def test_equal_ratings_become_ties_by_option_never_a_preference():
    """ties="tie" keeps (A, C) as a tie (chosen = the one listed first, no margin)."""
    records = [rating("A", 5), rating("B", 3), rating("C", 5)]
    out = ratings_to_comparisons(records, ties="tie")
    assert pairs(out) == [("A", "B", 2, False), ("A", "C", None, True), ("C", "B", 2, False)]
    with pytest.raises(ValueError, match="ties must be one of"):
        ratings_to_comparisons(records, ties="coin")


def test_without_margin():
    out = ratings_to_comparisons([rating("A", 2), rating("B", 4)], with_margin=False)
    assert pairs(out) == [("B", "A", None, False)]


def test_ratings_are_compared_within_an_annotator_unless_pooled():
    """x rates A 5 and B 3; y rates C 4. By annotator: only (A, B). Pooled: (A, B), (A, C) -> A margin 1,
    (B, C) -> C margin 1, and a pair across annotators carries no annotator."""
    records = [rating("A", 5, annotator="x"), rating("B", 3, annotator="x"), rating("C", 4, annotator="y")]
    assert pairs(ratings_to_comparisons(records)) == [("A", "B", 2, False)]
    pooled = ratings_to_comparisons(records, by_annotator=False)
    assert pairs(pooled) == [("A", "B", 2, False), ("A", "C", 1, False), ("C", "B", 1, False)]
    assert [c.annotator for c in pooled] == ["x", None, None]


def test_prompts_are_kept_apart_and_messages_are_grouped_by_content():
    chat = [{"role": "user", "content": "hi"}]
    records = [
        Rating.model_validate({"prompt": chat, "completion": "A", "rating": 1}),
        rating("B", 5, prompt="other", annotator=None),
        Rating.model_validate({"prompt": [{"role": "user", "content": "hi"}], "completion": "C", "rating": 4}),
    ]
    out = ratings_to_comparisons(records)
    assert pairs(out) == [("C", "A", 3, False)]
    assert out[0].prompt[0].content == "hi"


def test_the_same_text_rated_twice_is_not_paired_with_itself():
    """Pooled, x and y both rated A (5 and 2): A is never compared with A; B (3) is compared with each rating."""
    records = [rating("A", 5, annotator="x"), rating("A", 2, annotator="y"), rating("B", 3, annotator="y")]
    out = ratings_to_comparisons(records, by_annotator=False)
    assert pairs(out) == [("A", "B", 2, False), ("B", "A", 1, False)]


def test_thumbs_are_a_two_point_scale():
    """up = 2, down = 1: an up and a down on one prompt give a pair with margin 1; two ups tie."""
    records = [rating("A", thumbs=True), rating("B", thumbs=False), rating("C", thumbs=True)]
    assert pairs(ratings_to_comparisons(records)) == [("A", "B", 1, False), ("C", "B", 1, False)]
    assert pairs(ratings_to_comparisons(records, ties="tie"))[1] == ("A", "C", None, True)


def test_mixed_scales_in_one_group_are_refused_naming_the_prompt():
    records = [rating("A", 4, prompt="how far is the moon?"), rating("B", 4, scale=10, prompt="how far is the moon?")]
    with pytest.raises(ValueError, match=r"'how far is the moon\?', annotator 'ann' use different scales \[5, 10\]"):
        ratings_to_comparisons(records)
    with pytest.raises(ValueError, match="thumbs count as a scale of 2"):
        ratings_to_comparisons([rating("A", 4), rating("B", thumbs=True)])
    # different scales for different annotators are fine: they are never compared
    ok = [rating("A", 4, annotator="x"), rating("B", 4, scale=10, annotator="y")]
    assert ratings_to_comparisons(ok) == []
