"""Active-learning priorities (pure functions) and loading scorers."""

from __future__ import annotations

import math

import pytest

from rlhfkit.feedback.active import check_scores, disagreement, load_scorer, order_for, uncertainty


def test_uncertainty_is_highest_at_even_odds():
    """K = 2: p = sigmoid(s0 - s1); normalised binary entropy is 1 at p = 0.5."""
    assert uncertainty([[0.3, 0.3]]) == pytest.approx(1.0)
    p = 1 / (1 + math.exp(-2.0))
    assert uncertainty([[2.0, 0.0]]) == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2))
    assert uncertainty([[20.0, -20.0]]) < 1e-6
    assert uncertainty([[1.0, 1.0, 1.0]]) == pytest.approx(1.0)  # K = 3, uniform
    # The mean over members is used: two confident members that cancel out leave the mean unsure.
    assert uncertainty([[5.0, -5.0], [-5.0, 5.0]]) == pytest.approx(1.0)


def test_disagreement_is_the_spread_of_score_differences_across_members():
    """Members' differences s0 - s1 are 1 and -1: sample std = sqrt(((1)^2 + (-1)^2) / (2 - 1)) = sqrt 2."""
    assert disagreement([[1.0, 0.0], [0.0, 1.0]]) == pytest.approx(math.sqrt(2))
    assert disagreement([[3.0, 1.0], [5.0, 3.0]]) == pytest.approx(0.0)  # same difference, different offsets
    assert disagreement([[1.0, 0.0]]) == 0.0  # one member: no committee to disagree
    # K = 3: mean over the three pairs (0,1), (0,2), (1,2) of their stds.
    scores = [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    assert disagreement(scores) == pytest.approx((math.sqrt(2) + math.sqrt(2) + 0.0) / 3)


def constant_scorer(prompts, responses):
    """A reward as every stage takes one: N scores for N (prompt, response) pairs."""
    return [float(len(r)) for r in responses]


def test_load_scorer_from_module_function():
    fn = load_scorer("tests.feedback.test_active:constant_scorer")
    assert fn("p", ["a", "bbb"]) == [[1.0, 3.0]]  # one member, K scores
    for bad, msg in [
        ("nocolon", "setting 'scorer': 'nocolon' is not a reward"),
        ("tests.feedback.test_active:missing", "cannot import"),
        ("rm:/nonexistent/folder", "is not a reward: no such folder"),
    ]:
        with pytest.raises(ValueError, match=msg):
            load_scorer(bad)


def test_scores_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="one list of 2 scores per ensemble member"):
        check_scores([1.0, 2.0], 2, "task 'x'")
    with pytest.raises(ValueError, match="task 'x'"):
        check_scores([[1.0]], 2, "task 'x'")
    assert check_scores([(1, 2)], 2, "t") == [[1.0, 2.0]]


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="strategy 'smart'.*uncertainty"):
        order_for("smart")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_score_that_is_not_finite_is_refused_naming_it(bad):
    """NaN scores were taken: the item's uncertainty became 0 (pushed down the queue) and its suggestion made up."""
    from rlhfkit.feedback.active import check_scores

    with pytest.raises(ValueError, match=r"tasks.jsonl:3: member 0, response 0: the score .* is not a finite number"):
        check_scores([[bad, 0.0]], 2, "tasks.jsonl:3")
