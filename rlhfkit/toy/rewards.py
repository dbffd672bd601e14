"""Programmatic rewards on the toy world, for learning tests and examples (``--reward
rlhfkit.toy.rewards:count_the``): simple targets a tiny model can learn to raise in seconds."""

from __future__ import annotations


def count_word(word: str, responses: list[str]) -> list[float]:
    return [float(r.lower().split().count(word)) for r in responses]


def count_the(prompts, responses) -> list[float]:
    """Count of the word "the" in the response."""
    return count_word("the", responses)


def length(prompts, responses) -> list[float]:
    """Words in the response, divided by 10."""
    return [len(r.split()) / 10 for r in responses]
