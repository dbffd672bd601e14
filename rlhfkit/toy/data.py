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
EVAL_SEED = 987_654  # the seed of every held-out evaluation set; never used for training data
EVAL_SIZE = 500  # items in each built-in evaluation set


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


def eval_records(kind: str, n: int = EVAL_SIZE, seed: int = EVAL_SEED) -> list[dict]:
    """The toy world's held-out evaluation sets for `rlhfkit eval`: ``reference-text`` (good demonstrations, for
    held-out perplexity), ``task`` (questions with their right answer, for exact match), ``redteam`` (harmful
    requests) and ``benign`` (ordinary questions: the toy world has no look-alikes of its harmful requests, so this
    is the set whose refusal would be over-refusal)."""
    if kind == "reference-text":
        return demonstrations(n, seed=seed, quality=1.0)
    rng = random.Random(seed)
    wanted = {"task": "benign", "redteam": "harmful", "benign": "benign"}[kind]
    rows = []
    while len(rows) < n:
        p = sample_prompt(rng)
        if p.kind == wanted:
            chat = [{"role": "user", "content": p.text}]
            rows.append({"prompt": chat, "answer": good_response(p)} if kind == "task" else {"prompt": chat})
    return rows


def eval_data_file(kind: str) -> Path:
    """``eval_records(kind)`` as a JSONL file in the cache, for `rlhfkit eval --task-data toy` and the like."""
    path = cache_dir() / "toy" / f"eval-{kind}.jsonl"
    write_jsonl(path, eval_records(kind))
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
