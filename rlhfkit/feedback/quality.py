"""Inter-annotator agreement: Cohen's kappa, Fleiss' kappa, Krippendorff's alpha (nominal).

Pure functions over plain Python values; no database. Each returns ``None`` where the statistic is
undefined (for instance when every label falls in one category, so chance agreement is 1).

References:
- J. Cohen (1960), "A coefficient of agreement for nominal scales".
- J. L. Fleiss (1971), "Measuring nominal scale agreement among many raters".
- K. Krippendorff (2011), "Computing Krippendorff's alpha-reliability", Annenberg School papers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from itertools import combinations


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """kappa = (p_o - p_e) / (1 - p_e) for two raters who labelled the same items in the same order.

    p_o is the share of items they agree on, p_e = sum_c p_a(c) p_b(c) the agreement expected if each
    labelled at random with their own category frequencies.
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: the raters labelled {len(a)} and {len(b)} items; need the same items")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    count_a, count_b = Counter(a), Counter(b)
    p_e = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    return None if p_e == 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from an items x categories table; ``counts[i][j]`` raters put item i in category j.

    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)) is the agreement on item i, p_j the share of all
    labels in category j, and kappa = (mean P_i - sum_j p_j^2) / (1 - sum_j p_j^2). Fleiss assumes the
    same number of raters per item; with differing n_i this is the usual generalisation (each P_i
    uses its own n_i), which equals Fleiss' formula when they are equal. Items with fewer than two
    labels carry no agreement information and are left out.
    """
    rows = [list(r) for r in counts if sum(r) >= 2]
    if not rows:
        return None
    n_items_per = [sum(r) for r in rows]
    p_item = [(sum(x * x for x in r) - n) / (n * (n - 1)) for r, n in zip(rows, n_items_per)]
    total = sum(n_items_per)
    p_cat = [sum(r[j] for r in rows) / total for j in range(len(rows[0]))]
    p_bar = sum(p_item) / len(rows)
    p_e = sum(p * p for p in p_cat)
    return None if p_e == 1 else (p_bar - p_e) / (1 - p_e)


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha for nominal data; ``units`` holds the values given to each unit (missing
    values simply left out, so raters need not label every unit).

    Builds the coincidence matrix o_ck = sum_u (pairs of values c, k in u) / (m_u - 1) over units with
    m_u >= 2 values, then alpha = 1 - D_o / D_e = 1 - (n - 1) sum_{c != k} o_ck / sum_{c != k} n_c n_k.
    """
    o: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue  # a unit with one value cannot be paired
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            o[values[i], values[j]] += 1 / (m - 1)
    n_c: dict[Hashable, float] = defaultdict(float)
    for (c, _k), v in o.items():
        n_c[c] += v
    n = sum(n_c.values())
    if n < 2:
        return None
    disagree_observed = sum(v for (c, k), v in o.items() if c != k)
    disagree_expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    if disagree_expected == 0:
        return None
    return 1 - (n - 1) * disagree_observed / disagree_expected


def agreement(labels: Iterable[tuple[Hashable, Hashable, Hashable]], min_shared: int = 5) -> dict:
    """All three statistics from (unit, rater, category) triples.

    Cohen's kappa is for two raters, so it is averaged over every pair of raters who share at least
    ``min_shared`` units. Returns the unit and label counts too, so a reader can judge the figures.
    """
    by_unit: dict[Hashable, dict[Hashable, Hashable]] = defaultdict(dict)
    for unit, rater, category in labels:
        by_unit[unit][rater] = category
    multi = {u: r for u, r in by_unit.items() if len(r) >= 2}
    categories = sorted({c for r in multi.values() for c in r.values()}, key=repr)
    table = [[Counter(r.values())[c] for c in categories] for r in multi.values()]

    by_rater: dict[Hashable, dict[Hashable, Hashable]] = defaultdict(dict)
    for unit, raters in multi.items():
        for rater, category in raters.items():
            by_rater[rater][unit] = category
    kappas = []
    for r1, r2 in combinations(sorted(by_rater, key=repr), 2):
        shared = sorted(by_rater[r1].keys() & by_rater[r2].keys(), key=repr)
        if len(shared) >= min_shared:
            k = cohen_kappa([by_rater[r1][u] for u in shared], [by_rater[r2][u] for u in shared])
            if k is not None:
                kappas.append(k)
    return {
        "units": len(multi),
        "labels": sum(len(r) for r in multi.values()),
        "cohen_kappa_mean": sum(kappas) / len(kappas) if kappas else None,
        "cohen_pairs": len(kappas),
        "fleiss_kappa": fleiss_kappa(table) if table else None,
        "krippendorff_alpha": krippendorff_alpha_nominal(list(r.values()) for r in multi.values()),
    }
