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

import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import func

from rlhfkit.feedback.models import Task

Scorer = Callable[[str, list[str]], list[list[float]]]

STRATEGIES = {
    "uncertainty": lambda: (Task.uncertainty.desc().nulls_last(), Task.n_labels, Task.id),
    "disagreement": lambda: (Task.disagreement.desc().nulls_last(), Task.n_labels, Task.id),
    "random": lambda: (func.random(),),
    "round-robin": lambda: (Task.n_labels, Task.id),
}


def order_for(strategy: str):
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy '{strategy}': must be one of {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy]()


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
    return [[float(x) for x in m] for m in scores]


def load_scorer(spec: str) -> Scorer:
    """``module:function`` imports a scorer; ``rm:PATH`` scores with Hugging Face reward model(s)."""
    if spec.startswith("rm:"):
        return HFRewardScorer(Path(spec[3:]))
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--scorer '{spec}': use 'module:function' or 'rm:PATH'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--scorer '{spec}': cannot load it ({e})") from None
    if not callable(fn):
        raise ValueError(f"--scorer '{spec}': {attr} is not callable")
    return fn


class HFRewardScorer:
    """Scores with an ``AutoModelForSequenceClassification`` folder (one logit = the reward), or with
    every such folder inside PATH as the members of an ensemble."""

    def __init__(self, path: Path):
        if (path / "config.json").exists():
            folders = [path]
        else:
            folders = sorted(p for p in path.iterdir() if (p / "config.json").exists()) if path.is_dir() else []
        if not folders:
            raise ValueError(
                f"--scorer rm:{path}: no Hugging Face model folder (with config.json) here or in its sub-folders"
            )
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.members = []
        for folder in folders:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id or 0
            self.members.append((tokenizer, model))

    def __call__(self, prompt: str, responses: list[str]) -> list[list[float]]:
        out = []
        with self.torch.no_grad():
            for tokenizer, model in self.members:
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
                texts = [f"{prompt}\n{r}" for r in responses]
                batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=1024)
                logits = model(**batch).logits  # (K, num_labels); the reward is the first logit
                out.append(logits[:, 0].float().tolist())
        return out
