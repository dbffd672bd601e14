"""Prompts for the stages that sample their own responses (PPO, best-of-N, rejection sampling, generation,
evaluation): any data file whose records have a prompt (``rlhfkit.data.records.PromptRecord``)."""

from __future__ import annotations

import random

from rlhfkit.data.io import read_records
from rlhfkit.data.records import PromptRecord, Text


def read_prompts(path: str, skip_invalid: bool = False) -> list[Text]:
    return [r.prompt for r in read_records(path, PromptRecord, skip_invalid=skip_invalid)[0]]


def load_prompts(
    data: str, eval_data: str | None = None, eval_fraction: float = 0.0, seed: int = 0, skip_invalid: bool = False
) -> tuple[list[Text], list[Text]]:
    """(training prompts, held-out prompts): ``eval_data``'s, or a seeded ``eval_fraction`` of ``data``'s."""
    train = read_prompts(data, skip_invalid)
    if eval_data:
        return train, read_prompts(eval_data, skip_invalid)
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held = set(order[: int(len(train) * eval_fraction)])
    return [p for i, p in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
