"""Simulated feedback: the annotator pool labels sampled responses in the forms people use.

Rows are written in the training formats of ``rlhfkit.data`` (conversational prompt, plain-string
responses) with the annotator's name, so a reward model or DPO reads them like human labels.
"""

from __future__ import annotations

import random

from rlhfkit.toy.annotators import Annotator, consensus
from rlhfkit.toy.world import Prompt


def _chat(prompt: Prompt) -> list[dict]:
    return [{"role": "user", "content": prompt.text}]


def comparisons(
    prompts: list[Prompt], responses: list[list[str]], pool: list[Annotator], seed: int = 0, pairs_per_prompt: int = 2
) -> list[dict]:
    """Pairs with ties: for each prompt up to ``pairs_per_prompt`` distinct pairs of its responses, each
    labelled by an annotator drawn at random. Identical responses make no pair."""
    rng = random.Random(seed)
    rows = []
    for prompt, group in zip(prompts, responses):
        distinct = list(dict.fromkeys(t for t in group if t.strip()))
        pairs = [(a, b) for i, a in enumerate(distinct) for b in distinct[i + 1 :]]
        for a, b in rng.sample(pairs, min(pairs_per_prompt, len(pairs))):
            annotator = rng.choice(pool)
            label = annotator.compare(prompt, a, b)
            chosen, rejected = (b, a) if label == "b" else (a, b)
            rows.append(
                {
                    "prompt": _chat(prompt),
                    "chosen": chosen,
                    "rejected": rejected,
                    "tie": label == "tie",
                    "annotator": annotator.name,
                }
            )
    return rows


def rankings(prompts: list[Prompt], responses: list[list[str]], pool: list[Annotator], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for prompt, group in zip(prompts, responses):
        distinct = list(dict.fromkeys(t for t in group if t.strip()))
        if len(distinct) >= 2:
            annotator = rng.choice(pool)
            rows.append(
                {
                    "prompt": _chat(prompt),
                    "completions": distinct,
                    "ranking": annotator.rank(prompt, distinct),
                    "annotator": annotator.name,
                }
            )
    return rows


def ratings(
    prompts: list[Prompt], responses: list[list[str]], pool: list[Annotator], seed: int = 0, thumbs: bool = False
) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for prompt, group in zip(prompts, responses):
        for text in group:
            if not text.strip():
                continue
            a = rng.choice(pool)
            verdict = {"label": a.thumbs(prompt, text)} if thumbs else {"rating": a.rate(prompt, text), "scale": 5}
            rows.append({"prompt": _chat(prompt), "completion": text, **verdict, "annotator": a.name})
    return rows


def best_of_k_rows(prompts: list[Prompt], responses: list[list[str]], pool: list[Annotator]) -> list[dict]:
    """Sets in RewardBench 2's format (one chosen response among K - 1 rejected): for each prompt whose K responses
    are distinct and include one that the pool's noise-free consensus prefers to every other, that one as chosen and
    the others as rejected. Prompts without such a response are left out."""
    rows = []
    for prompt, group in zip(prompts, responses):
        distinct = list(dict.fromkeys(t for t in group if t.strip()))
        if len(distinct) < len(group):
            continue
        for i, chosen in enumerate(distinct):
            others = distinct[:i] + distinct[i + 1 :]
            if all(consensus(pool, prompt, chosen, other) > 0 for other in others):
                rows.append({"prompt": _chat(prompt), "chosen": [chosen], "rejected": others})
                break
    return rows


def comparisons_by_everyone(prompts: list[Prompt], responses: list[list[str]], pool: list[Annotator]) -> list[dict]:
    """Every distinct pair of each prompt's responses, labelled by every annotator of the pool: held-out labels
    on which each annotator's own accuracy can be measured."""
    rows = []
    for prompt, group in zip(prompts, responses):
        distinct = list(dict.fromkeys(t for t in group if t.strip()))
        for i, a in enumerate(distinct):
            for b in distinct[i + 1 :]:
                for annotator in pool:
                    label = annotator.compare(prompt, a, b)
                    chosen, rejected = (b, a) if label == "b" else (a, b)
                    rows.append(
                        {
                            "prompt": _chat(prompt),
                            "chosen": chosen,
                            "rejected": rejected,
                            "tie": label == "tie",
                            "annotator": annotator.name,
                        }
                    )
    return rows
