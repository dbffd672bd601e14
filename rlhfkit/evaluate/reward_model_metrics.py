"""A reward model's report card from its scores on labelled data: pairwise accuracy, best-of-4 accuracy in
RewardBench 2's format, calibration (ECE, reliability bins and plot) and accuracy by length-difference bucket.

Inputs are plain score lists (the reward model already ran); nothing here loads a model.

    from rlhfkit.evaluate import reward_model_metrics as rmm
    rmm.pairwise_accuracy(chosen_scores, rejected_scores)
    rmm.best_of_k_accuracy(chosen_scores, [[r1, r2, r3], ...])           # RewardBench 2: chance 25%
    rmm.reliability_bins(chosen_scores, rejected_scores)                  # rows for a reliability diagram
    rmm.accuracy_by_length(chosen_scores, rejected_scores, chosen_len, rejected_len)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _pair_arrays(chosen_scores, rejected_scores) -> tuple[np.ndarray, np.ndarray]:
    chosen, rejected = np.asarray(chosen_scores, dtype=float), np.asarray(rejected_scores, dtype=float)
    if chosen.shape != rejected.shape or chosen.ndim != 1 or chosen.size == 0:
        raise ValueError("chosen and rejected scores need the same non-zero number of pairs, one score each")
    return chosen, rejected


def pairwise_outcomes(chosen_scores, rejected_scores) -> np.ndarray:
    """Per pair: 1 when the chosen response scores higher, 0 when lower, 0.5 on an exact tie (a reward model
    that cannot tell the two apart is at chance, not wrong; RewardBench counts a tie as wrong)."""
    chosen, rejected = _pair_arrays(chosen_scores, rejected_scores)
    return np.where(chosen > rejected, 1.0, np.where(chosen < rejected, 0.0, 0.5))


def pairwise_accuracy(chosen_scores, rejected_scores) -> float:
    """Share of pairs the reward model orders as the labels do (ties half), the standard reward-model
    accuracy (Stiennon et al. 2020; RewardBench, Lambert et al. 2024)."""
    return float(pairwise_outcomes(chosen_scores, rejected_scores).mean())


def best_of_k_accuracy(chosen_scores, rejected_scores) -> float:
    """Share of items on which the one chosen response scores above all of its rejected ones.

    RewardBench 2 (Malik et al. 2025) scores reward models this way with one chosen among three rejected
    (best-of-4, chance 25%). chosen_scores (n,), rejected_scores (n, k - 1). A tie at the top earns 1 / (number
    tied), so an uninformative reward model gets chance (1 / k), where a strict ``>`` would give it 0.
    """
    chosen = np.asarray(chosen_scores, dtype=float)
    rejected = np.asarray(rejected_scores, dtype=float)
    if chosen.ndim != 1 or rejected.ndim != 2 or rejected.shape[0] != chosen.size or chosen.size == 0:
        raise ValueError("best_of_k_accuracy needs chosen (n,) and rejected (n, k - 1) scores")
    above = (rejected > chosen[:, None]).any(axis=1)  # (n,) a rejected response beats the chosen one
    tied = (rejected == chosen[:, None]).sum(axis=1)  # (n,) rejected responses level with it
    return float(np.where(above, 0.0, 1.0 / (1 + tied)).mean())


# --- calibration -------------------------------------------------------------------------------------------


def preference_probs(chosen_scores, rejected_scores) -> tuple[np.ndarray, np.ndarray]:
    """Bradley-Terry probabilities sigma(r_a - r_b) with labels, each pair counted in both orders: (chosen,
    rejected) with label 1 and (rejected, chosen) with label 0. Calibration of P(label = 1) over both orders
    equals the usual top-label calibration of max(p, 1 - p) (Guo et al. 2017) with mirrored bins, and the
    reliability diagram comes out symmetric about 0.5."""
    chosen, rejected = _pair_arrays(chosen_scores, rejected_scores)
    p = 1.0 / (1.0 + np.exp(-(chosen - rejected)))
    return np.concatenate([p, 1.0 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])


def expected_calibration_error(chosen_scores, rejected_scores, n_bins: int = 10) -> float:
    """ECE of the reward model's Bradley-Terry probabilities (``preference_probs``) over n_bins equal-width bins
    (Naeini et al. 2015; Guo et al. 2017), via ``rlhfkit.losses.expected_calibration_error``."""
    import torch  # here, not at import time: the CLI imports evaluation modules without torch

    from rlhfkit.losses import expected_calibration_error as ece

    probs, labels = preference_probs(chosen_scores, rejected_scores)
    return float(ece(torch.from_numpy(probs), torch.from_numpy(labels), n_bins=n_bins))


@dataclass(frozen=True)
class ReliabilityBin:
    lo: float  # the bin is (lo, hi]; the first bin also holds 0
    hi: float
    count: int
    confidence: float | None  # mean predicted P(label = 1) in the bin (None when empty)
    accuracy: float | None  # share with label 1 in the bin


def reliability_bins(chosen_scores, rejected_scores, n_bins: int = 10) -> list[ReliabilityBin]:
    """The rows of a reliability diagram: per equal-width bin of predicted probability, the count, the mean
    probability and the observed share of label 1 (both orders of each pair, see ``preference_probs``). Bins are
    right-closed as in ``rlhfkit.losses.expected_calibration_error``, so sum_b count_b / N * |accuracy_b -
    confidence_b| is that ECE."""
    probs, labels = preference_probs(chosen_scores, rejected_scores)
    edges = np.arange(n_bins + 1) / n_bins  # k / n exactly as the ECE's edges (linspace's 0.6000000000000001 is not)
    index = np.clip(np.searchsorted(edges[1:-1], probs, side="left"), 0, n_bins - 1)  # (0, .1] -> 0, (.1, .2] -> 1
    rows = []
    for b in range(n_bins):
        member = index == b
        count = int(member.sum())
        conf = float(probs[member].mean()) if count else None
        acc = float(labels[member].mean()) if count else None
        rows.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), count, conf, acc))
    return rows


def plot_reliability(bins: list[ReliabilityBin], path: Path, title: str = "reward model calibration") -> Path:
    """Reliability diagram as a PNG: observed share against mean predicted probability per bin, the diagonal for
    perfect calibration, and the bin counts as bars underneath."""
    import matplotlib  # lazily: plotting is the only user

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [b for b in bins if b.count]
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(4.8, 5.4), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    ax.plot([b.confidence for b in full], [b.accuracy for b in full], "o-", label="reward model")
    ax.set_ylabel("observed P(preferred)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_count.bar([(b.lo + b.hi) / 2 for b in bins], [b.count for b in bins], width=bins[0].hi - bins[0].lo)
    ax_count.set_xlabel("predicted P(preferred) = sigmoid(r_a - r_b)")
    ax_count.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# --- length ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthBucket:
    lo: float  # length difference chosen - rejected, bucket [lo, hi] (the first is closed below)
    hi: float
    count: int
    accuracy: float | None


def accuracy_by_length(
    chosen_scores, rejected_scores, chosen_lengths, rejected_lengths, n_buckets: int = 4
) -> list[LengthBucket]:
    """Pairwise accuracy per bucket of the length difference (chosen minus rejected), buckets at its quantiles.

    The difference, not the chosen response's length, because it exposes a length bias: a reward model that
    prefers the longer answer is right where the chosen is longer and wrong where it is shorter, while buckets of
    chosen length would mix both (Singhal et al. 2023, "A Long Way to Go"). Quantile edges give buckets of equal
    size; tied edges merge buckets, so fewer than n_buckets may come back.
    """
    outcomes = pairwise_outcomes(chosen_scores, rejected_scores)
    delta = np.asarray(chosen_lengths, dtype=float) - np.asarray(rejected_lengths, dtype=float)
    if delta.shape != outcomes.shape:
        raise ValueError("accuracy_by_length needs one chosen and one rejected length per pair")
    edges = np.unique(np.quantile(delta, np.linspace(0.0, 1.0, n_buckets + 1)))
    if edges.size == 1:  # every difference equal: one bucket
        return [LengthBucket(float(edges[0]), float(edges[0]), int(delta.size), float(outcomes.mean()))]
    index = np.clip(np.searchsorted(edges, delta, side="left") - 1, 0, edges.size - 2)  # (lo, hi], first [lo, hi]
    buckets = []
    for b in range(edges.size - 1):
        member = index == b
        count = int(member.sum())
        buckets.append(
            LengthBucket(float(edges[b]), float(edges[b + 1]), count, float(outcomes[member].mean()) if count else None)
        )
    return buckets
