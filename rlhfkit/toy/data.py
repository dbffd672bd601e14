"""The toy world's data as ordinary files, for the stages and their tests.

``rlhfkit sft --data toy`` (and every stage that takes ``--data``) is resolved by the command line to the file
``data_file(kind, seed)`` writes here: the stages themselves only ever read files.
"""

from __future__ import annotations

import random
from pathlib import Path

from rlhfkit.data.io import write_jsonl
from rlhfkit.models.hub import cache_dir
from rlhfkit.toy.world import CAPITALS, NUMBER_WORDS, demonstrations, good_response, poor_response, sample_prompt

SIZE = 2000  # records (or prompts) in each built-in set


def records(kind: str, seed: int = 0) -> list[dict]:
    if kind == "demonstration":
        return demonstrations(SIZE, seed=seed)
    if kind == "comparison":
        return comparisons(SIZE, seed=seed)
    if kind == "rating":
        return thumbs(SIZE, seed=seed)
    if kind == "prompt":
        return [{"prompt": p} for p in prompts(SIZE, seed)]
    raise ValueError(f"the toy world has no built-in '{kind}' data; give a data file")


def prompts(n: int, seed: int = 0) -> list[list[dict]]:
    """``n`` toy-world prompts as one-message chats."""
    rng = random.Random(seed)
    return [[{"role": "user", "content": sample_prompt(rng).text}] for _ in range(n)]


def data_file(kind: str, seed: int = 0) -> Path:
    """The built-in ``kind`` records (demonstration, comparison, rating (thumbs), prompt) as a JSONL file in the cache, so a stage
    reads them as it reads a user's data (and its card hashes them). Written afresh each time (milliseconds), so
    it always holds what the toy world's code makes."""
    path = cache_dir() / "toy" / f"{kind}-seed{seed}.jsonl"
    write_jsonl(path, records(kind, seed))
    return path


def comparisons(n: int, seed: int = 0) -> list[dict]:
    """``n`` conversational comparisons of the toy world: the good response is chosen over a poor one
    (wrong answer, harmful compliance, made-up certainty or an unhelpful refusal)."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        p = sample_prompt(rng)
        good, poor = good_response(p), poor_response(p, rng)
        if good != poor:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": p.text}],
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": [{"role": "assistant", "content": poor}],
                }
            )
    return rows


def thumbs(n: int, seed: int = 0) -> list[dict]:
    """``n`` conversational thumbs (TRL's unpaired format, for KTO): each prompt's good response up or a poor one
    down, half and half."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        p = sample_prompt(rng)
        up = rng.random() < 0.5
        text = good_response(p) if up else poor_response(p, rng)
        if up or text != good_response(p):
            rows.append({"prompt": [{"role": "user", "content": p.text}], "completion": text, "label": up})
    return rows


def rule_comparisons(n: int, seed: int = 0, word: str = "sorry", length: int = 4) -> list[dict]:
    """A synthetic preference set with a known rule, for learning tests: prompts are toy questions,
    responses are ``length`` random toy words, and the chosen response contains ``word`` while the
    rejected one does not."""
    vocab = sorted(set(CAPITALS.values()) | set(NUMBER_WORDS) | {"the", "answer", "is", "maybe", "yes", "no"})
    vocab = [w for w in vocab if w != word]
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        p = sample_prompt(rng).text
        rejected = [rng.choice(vocab) for _ in range(length)]
        chosen = [rng.choice(vocab) for _ in range(length)]
        chosen[rng.randrange(length)] = word
        rows.append({"prompt": p, "chosen": " " + " ".join(chosen), "rejected": " " + " ".join(rejected)})
    return rows
