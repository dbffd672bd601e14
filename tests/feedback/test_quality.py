"""Agreement statistics against published worked examples."""

import pytest

from rlhfkit.feedback.quality import agreement, cohen_kappa, fleiss_kappa, krippendorff_alpha_nominal


def test_cohen_kappa_wikipedia_example():
    """Wikipedia "Cohen's kappa", 50 proposals: both yes 20, A yes/B no 5, A no/B yes 10, both no 15.

    p_o = (20 + 15) / 50 = 0.7; A says yes 25/50, B 30/50, so p_e = 0.5*0.6 + 0.5*0.4 = 0.5;
    kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    """
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)


def test_cohen_kappa_perfect_and_undefined():
    assert cohen_kappa([1, 2, 1, 2], [1, 2, 1, 2]) == pytest.approx(1.0)
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) is None  # p_e = 1: chance explains everything
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa([1, 2], [1])


FLEISS_WIKIPEDIA = [  # 10 subjects, 14 raters each, 5 categories
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_wikipedia_example():
    """Wikipedia "Fleiss' kappa": mean P_i = 0.378, P_e = 0.213, kappa = 0.210."""
    assert fleiss_kappa(FLEISS_WIKIPEDIA) == pytest.approx(0.2099, abs=5e-4)


def test_fleiss_equals_cohen_style_perfect_agreement():
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == pytest.approx(1.0)


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: 4 observers, 12 units,
# values 1..5, '.' missing. Published nominal alpha = 0.743.
KRIPP = """
A: 1 2 3 3 2 1 4 1 2 . . .
B: 1 2 3 3 2 2 4 1 2 5 . 3
C: . 3 3 3 2 3 4 2 2 5 1 .
D: 1 2 3 3 2 4 4 1 2 5 1 .
"""


def _kripp_units():
    rows = [line.split(":")[1].split() for line in KRIPP.strip().splitlines()]
    return [[int(r[u]) for r in rows if r[u] != "."] for u in range(12)]


def test_krippendorff_alpha_canonical_example():
    assert krippendorff_alpha_nominal(_kripp_units()) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_matches_fleiss_scale_when_complete():
    """With every rater on every unit alpha differs from Fleiss' kappa only by the small-sample
    correction: alpha = 1 - (1 - kappa) (nm - 1) / nm with nm = 140 labels in all."""
    units = [[c for c, n in enumerate(row) for _ in range(n)] for row in FLEISS_WIKIPEDIA]
    alpha = krippendorff_alpha_nominal(units)
    kappa = fleiss_kappa(FLEISS_WIKIPEDIA)
    nm = 140
    assert alpha == pytest.approx(1 - (1 - kappa) * (nm - 1) / nm, abs=1e-9)


def test_agreement_from_label_triples():
    triples = []
    for unit in range(10):
        for rater in ("a", "b", "c"):
            category = unit % 2 if not (rater == "c" and unit < 3) else 1 - unit % 2
            triples.append((unit, rater, category))
    triples.append((99, "a", 0))  # a single label carries no agreement information
    stats = agreement(triples, min_shared=5)
    assert stats["units"] == 10 and stats["labels"] == 30
    assert stats["cohen_pairs"] == 3
    # a and b agree perfectly; c disagrees on 3 of 10 balanced items.
    assert -1 <= stats["fleiss_kappa"] < 1 and stats["krippendorff_alpha"] < 1
    assert stats["cohen_kappa_mean"] == pytest.approx(
        (1 + 2 * cohen_kappa([0, 1] * 5, [1, 0, 1] + [1, 0] * 3 + [1])) / 3
    )
