"""Active learning: which item an annotator gets next, so labels go where the reward model is unsure.

A *scorer* is any callable ``score(prompt: str, responses: list[str]) -> list[list[float]]`` that
returns one list of K scores per ensemble member (a single reward model is an ensemble of one).
Scores are computed when tasks are loaded and stored with them, together with two priorities:

- ``uncertainty``: entropy of softmax(mean score over members) across the K responses, divided by
  log K so it lies in [0, 1]. For K = 2 it is the binary entropy of the Bradley-Terry preference
  p = sigmoid(s_0 - s_1), highest when p is closest to 0.5.
- ``disagreement``: for each pair of responses, the standard deviation across members of the score
  difference s_i - s_j, averaged over pairs (0 for a single model). High where the members disagree,
  the query-by-committee criterion (Seung et al. 1992).

Strategies (``--strategy``): ``uncertainty`` and ``disagreement`` serve the highest first;
``random`` any eligible item; ``round-robin`` the item with fewest labels, in load order, so every
item gets its first label before any gets its second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Scorer = Callable[[str, list[str]], list[list[float]]]

STRATEGIES = ("uncertainty", "disagreement", "random", "round-robin")


def order_for(strategy: str):
    """The SQL ORDER BY of ``strategy`` (SQLAlchemy is imported here, so the command line starts without it)."""
    from sqlalchemy import func

    from rlhfkit.feedback.models import Task

    orders = {
        "uncertainty": (Task.uncertainty.desc().nulls_last(), Task.n_labels, Task.id),
        "disagreement": (Task.disagreement.desc().nulls_last(), Task.n_labels, Task.id),
        "random": (func.random(),),
        "round-robin": (Task.n_labels, Task.id),
    }
    if strategy not in orders:
        raise ValueError(f"strategy '{strategy}': must be one of {', '.join(STRATEGIES)}")
    return orders[strategy]


def uncertainty(scores: Sequence[Sequence[float]]) -> float:
    k = len(scores[0])
    mean = [sum(member[i] for member in scores) / len(scores) for i in range(k)]
    top = max(mean)
    exp = [math.exp(s - top) for s in mean]  # shift by the max for numerical safety
    probs = [e / sum(exp) for e in exp]
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    return entropy / math.log(k)


def disagreement(scores: Sequence[Sequence[float]]) -> float:
    members, k = len(scores), len(scores[0])
    if members < 2:
        return 0.0
    stds = []
    for i in range(k):
        for j in range(i + 1, k):
            diffs = [m[i] - m[j] for m in scores]
            mu = sum(diffs) / members
            stds.append(math.sqrt(sum((d - mu) ** 2 for d in diffs) / (members - 1)))
    return sum(stds) / len(stds)


def check_scores(scores, k: int, where: str) -> list[list[float]]:
    if (
        not isinstance(scores, (list, tuple))
        or not scores
        or not all(isinstance(m, (list, tuple)) and len(m) == k for m in scores)
    ):
        raise ValueError(
            f"{where}: the scorer must return one list of {k} scores per ensemble member "
            f"(a list of lists), got {scores!r:.200}"
        )
    out = [[float(x) for x in m] for m in scores]
    for m, member in enumerate(out):
        for i, x in enumerate(member):
            if not math.isfinite(x):  # NaN ordered the queue and made up suggestions shown to annotators
                raise ValueError(f"{where}: member {m}, response {i}: the score {x} is not a finite number")
    return out


def load_scorer(spec: str) -> Scorer:
    """Any reward setting (``rlhfkit.specs``: a reward-model run folder, a sequence-classification folder,
    ``module:function``, an endpoint, an ensemble) as the app's scorer: one list of K scores per member, the
    very scores ``rlhfkit rm score`` gives for the same texts. Loads torch only here, when a scorer is asked for."""
    from rlhfkit.rewards import load_reward

    reward = load_reward(spec, setting="scorer")

    def score(prompt: str, responses: list[str]) -> list[list[float]]:
        return reward.members([prompt] * len(responses), list(responses)).tolist()

    return score
