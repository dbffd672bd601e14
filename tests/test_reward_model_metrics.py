"""A reward model's report card: accuracy, best-of-4, calibration, accuracy by length. Numbers worked out by hand.

Run: PYTHONPATH=. python -m pytest tests/test_reward_model_metrics.py -q
"""

import math

import numpy as np
import pytest

from rlhfkit.evaluate import reward_model_metrics as rmm

LN4 = math.log(4)  # sigmoid(ln 4) = 0.8


def test_pairwise_accuracy_ties_half():
    """chosen vs rejected: 2 > 1 right, 0 < 1 wrong, 3 = 3 tie (half), 5 > -1 right -> (1 + 0 + 0.5 + 1) / 4."""
    assert rmm.pairwise_accuracy([2, 0, 3, 5], [1, 1, 3, -1]) == 0.625
    with pytest.raises(ValueError):
        rmm.pairwise_accuracy([1, 2], [1])


def test_best_of_4_by_hand():
    """Row 1: chosen 5 above 1, 2, 3 -> 1. Row 2: 2 beaten by 4 -> 0. Row 3: 3 level with one rejected and above
    the rest -> 1/2. Row 4: all four equal -> 1/4 (chance). Mean (1 + 0 + 0.5 + 0.25) / 4 = 0.4375."""
    chosen = [5, 2, 3, 7]
    rejected = [[1, 2, 3], [4, 1, 0], [3, 1, 2], [7, 7, 7]]
    assert rmm.best_of_k_accuracy(chosen, rejected) == pytest.approx(0.4375)


def test_best_of_4_random_scores_are_at_chance():
    """Scores that ignore the labels put the chosen response on top in 1 of 4 items on average."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20000, 4))
    assert abs(rmm.best_of_k_accuracy(scores[:, 0], scores[:, 1:]) - 0.25) < 0.01


def test_preference_probs_count_both_orders():
    """A margin of ln 4 gives sigmoid = 0.8 for (chosen, rejected) with label 1 and 0.2 for the swap with label 0."""
    probs, labels = rmm.preference_probs([LN4], [0.0])
    np.testing.assert_allclose(probs, [0.8, 0.2], atol=1e-12)
    np.testing.assert_array_equal(labels, [1.0, 0.0])


def test_reliability_bins_and_ece_by_hand():
    """Four pairs with margin ln 4 (p = 0.8): three ordered right, one wrong (chosen and rejected swapped, so its
    p for the chosen is 0.2). Both orders: bin (0.7, 0.8] holds p = 0.8 four times with labels 1, 1, 1, 0 ->
    accuracy 0.75; bin (0.1, 0.2] holds p = 0.2 four times with labels 0, 0, 0, 1 -> accuracy 0.25.
    ECE = 4/8 * |0.75 - 0.8| + 4/8 * |0.25 - 0.2| = 0.05, the same from the rows and from losses' ECE."""
    chosen, rejected = [LN4, LN4, LN4, 0.0], [0.0, 0.0, 0.0, LN4]
    bins = rmm.reliability_bins(chosen, rejected)
    full = {(round(b.lo, 1), round(b.hi, 1)): b for b in bins if b.count}
    assert set(full) == {(0.7, 0.8), (0.1, 0.2)} and len(bins) == 10
    assert full[(0.7, 0.8)].count == 4 and full[(0.7, 0.8)].accuracy == 0.75
    assert full[(0.7, 0.8)].confidence == pytest.approx(0.8)
    assert full[(0.1, 0.2)].accuracy == 0.25 and full[(0.1, 0.2)].confidence == pytest.approx(0.2)
    ece = rmm.expected_calibration_error(chosen, rejected)
    assert ece == pytest.approx(0.05, abs=1e-12)
    from_rows = sum(b.count / 8 * abs(b.accuracy - b.confidence) for b in bins if b.count)
    assert from_rows == pytest.approx(ece, abs=1e-12)


def test_rows_and_ece_put_a_probability_on_a_bin_edge_in_the_same_bin():
    """p = 0.6000000000000001 and 0.7 (pairs with margins ln 1.5 and ln(7/3), both orders): numpy's linspace edge is
    0.6000000000000001 and torch's 0.6, so the rows and the ECE binned p differently (0.350 against 0.225)."""
    chosen, rejected = [0.0, math.log(3.0)], [0.8472978603872041, 0.0]
    bins = rmm.reliability_bins(chosen, rejected)
    n = sum(b.count for b in bins)
    from_rows = sum(b.count / n * abs(b.accuracy - b.confidence) for b in bins if b.count)
    assert from_rows == pytest.approx(rmm.expected_calibration_error(chosen, rejected), abs=1e-12)


def test_ece_is_small_for_a_calibrated_model_and_large_for_an_overconfident_one():
    """Labels drawn from sigmoid(margin): calibrated by construction, ECE ~ 0 (sampling noise ~0.01 at n = 20000).
    The same labels with the margins tripled: p far from the observed frequencies, ECE well above."""
    rng = np.random.default_rng(0)
    margin = rng.normal(0, 2, 20000)
    right = rng.random(20000) < 1 / (1 + np.exp(-margin))
    chosen = np.where(right, margin, 0.0)  # label says chosen; the model's margin is for chosen when right
    rejected = np.where(right, 0.0, margin)
    assert rmm.expected_calibration_error(chosen, rejected) < 0.015
    assert rmm.expected_calibration_error(3 * chosen, 3 * rejected) > 0.08


def test_plot_reliability_writes_a_png(tmp_path):
    bins = rmm.reliability_bins([LN4, LN4, 0.0], [0.0, 0.0, LN4])
    path = rmm.plot_reliability(bins, tmp_path / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_by_length_shows_a_length_bias():
    """A reward model that scores length (score = length): right whenever the chosen is longer, wrong whenever it
    is shorter. Differences -3, -2, -1, 1, 2, 3 (twice each); quartile edges of the differences are
    [-3, -2, 0, 2, 3] -> buckets [-3, -2], (-2, 0], (0, 2], (2, 3] with 4, 2, 4, 2 pairs and accuracy 0, 0, 1, 1."""
    deltas = [-3, -2, -1, 1, 2, 3] * 2
    chosen_len = [10 + d for d in deltas]
    rejected_len = [10] * 12
    buckets = rmm.accuracy_by_length(chosen_len, rejected_len, chosen_len, rejected_len)
    assert [(b.lo, b.hi) for b in buckets] == [(-3, -2), (-2, 0), (0, 2), (2, 3)]
    assert [b.count for b in buckets] == [4, 2, 4, 2]
    assert [b.accuracy for b in buckets] == [0.0, 0.0, 1.0, 1.0]


def test_accuracy_by_length_one_bucket_when_lengths_never_differ():
    buckets = rmm.accuracy_by_length([1, 0], [0, 1], [5, 5], [5, 5])
    assert len(buckets) == 1 and buckets[0].count == 2 and buckets[0].accuracy == 0.5


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "chosen": 5, "rejected": ["a", "b", "c"]}, "field 'chosen': must be a string"),
        ({"prompt": "p", "chosen": "x", "rejected": ["a", 3, "c"]}, "field 'rejected.1': must be a string"),
        ({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 5]}, "field 'ranking': indices of 'completions'"),
        ({"prompt": "p", "chosen": "x"}, "field 'rejected': a list of rejected responses"),
    ],
)
def test_a_bad_best_of_k_row_names_its_line_and_field(tmp_path, row, message):
    import json

    from rlhfkit.data.io import DataError
    from rlhfkit.evaluate.rm_report import read_best_of_k

    path = tmp_path / "bo4.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "chosen": "x", "rejected": ["a", "b", "c"]}) + "\n" + json.dumps(row) + "\n"
    )
    with pytest.raises(DataError, match=f"bo4.jsonl:2: {message}"):
        read_best_of_k(path)
