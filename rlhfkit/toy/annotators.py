"""Simulated annotators in the manner of AlpacaFarm (Dubois et al. 2023).

A pool of personas weighs the gold criteria differently (one cares most about harm, one about
helpfulness, one dislikes long answers, ...), each label is flipped with probability ``noise`` (AlpacaFarm
flips 25%), and labels come in the forms people give: pairs with ties, rankings of K, Likert ratings
and thumbs. Annotators see the world (they are its people); training code sees only their labels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlhfkit.toy.gold import Criteria, utility
from rlhfkit.toy.world import Prompt, good_response

PERSONAS: dict[str, Criteria] = {
    "balanced": Criteria(helpful=1.0, harmless=2.0, honest=1.0, concise=0.5),
    "safety-first": Criteria(helpful=0.6, harmless=3.0, honest=1.0, concise=0.3),
    "helpfulness-first": Criteria(helpful=1.5, harmless=1.5, honest=0.8, concise=0.3),
    "stickler-for-truth": Criteria(helpful=1.0, harmless=2.0, honest=2.0, concise=0.5),
    "busy-reader": Criteria(helpful=1.0, harmless=2.0, honest=1.0, concise=1.5),
}
# The demo's personas weigh the criteria differently but order almost every pair the same way: on the demo's
# seed-0 training pairs, no persona's noise-free label differs from the pool's majority on more than 0.2% of the
# pairs it decides. This pool disagrees the way real annotator pools do (Siththaranjan et al. 2023 on HH-RLHF,
# whose helpfulness annotators preferred compliance with harmful requests), for the disagreement experiment
# (rlhfkit.toy.experiments.disagreement); the demo keeps PERSONAS. Negative weights say what a persona rewards:
# carrying out any request (harmless < 0), or a confident answer over "I do not know" (honest < 0).
DIVERSE_PERSONAS: dict[str, Criteria] = {
    "balanced": Criteria(helpful=1.0, harmless=2.0, honest=1.0, concise=0.5),
    "helpful-only": Criteria(helpful=1.0, harmless=-1.0, honest=1.0, concise=0.5),
    "likes-confidence": Criteria(helpful=1.0, harmless=2.0, honest=-1.5, concise=0.5),
    "terse": Criteria(helpful=0.3, harmless=2.0, honest=1.0, concise=3.0),
    "safety-first": Criteria(helpful=0.6, harmless=3.0, honest=1.0, concise=0.3),
}
POOLS = {"demo": PERSONAS, "diverse": DIVERSE_PERSONAS}


@dataclass
class Annotator:
    name: str
    weights: Criteria
    noise: float
    rng: random.Random
    tie_margin: float = 0.05

    def utility(self, prompt: Prompt, response: str) -> float:
        return utility(prompt, response, self.weights)

    def compare(self, prompt: Prompt, a: str, b: str) -> str:
        """'a', 'b' or 'tie'. A decided label is flipped with probability ``noise``; ties stay ties."""
        diff = self.utility(prompt, a) - self.utility(prompt, b)
        if abs(diff) < self.tie_margin:
            return "tie"
        winner = "a" if diff > 0 else "b"
        if self.rng.random() < self.noise:
            winner = "b" if winner == "a" else "a"
        return winner

    def rank(self, prompt: Prompt, responses: list[str]) -> list[int]:
        """Indices best first; noise swaps each adjacent pair with probability ``noise`` (one pass)."""
        order = sorted(range(len(responses)), key=lambda i: -self.utility(prompt, responses[i]))
        for i in range(len(order) - 1):
            if self.rng.random() < self.noise:
                order[i], order[i + 1] = order[i + 1], order[i]
        return order

    def rate(self, prompt: Prompt, response: str, scale: int = 5) -> int:
        """Likert 1..scale: utility mapped from about [-2, 1.5] onto the scale, off by one with prob ``noise``."""
        u = self.utility(prompt, response)
        level = round(1 + (scale - 1) * min(1.0, max(0.0, (u + 2.0) / 3.5)))
        if self.rng.random() < self.noise:
            level += self.rng.choice([-1, 1])
        return min(scale, max(1, level))

    def thumbs(self, prompt: Prompt, response: str) -> bool:
        """Up when the response is within half a point of the best this prompt allows (by this annotator's
        weights): people judge a response against what was possible, so refusing a harmful request gets a thumbs
        up and an unhelpful refusal of a plain question does not. Flipped with probability ``noise``."""
        up = self.utility(prompt, response) >= self.utility(prompt, good_response(prompt)) - 0.5
        return (not up) if self.rng.random() < self.noise else up


def annotator_pool(noise: float = 0.25, seed: int = 0, personas: dict[str, Criteria] | None = None) -> list[Annotator]:
    """One annotator per persona (the demo's ``PERSONAS`` unless given), each with its own seeded noise."""
    return [
        Annotator(name, weights, noise, random.Random(seed * 1000 + i))
        for i, (name, weights) in enumerate((personas or PERSONAS).items())
    ]


def pairwise_agreement(pool: list[Annotator], items: list[tuple[Prompt, str, str]], seed: int = 0) -> float:
    """How often two different annotators give the same non-tie label on the same pair: the ceiling a
    reward model trained on their labels can be expected to reach against a fresh annotator."""
    rng = random.Random(seed)
    agree = total = 0
    for prompt, a, b in items:
        first, second = rng.sample(pool, 2)
        la, lb = first.compare(prompt, a, b), second.compare(prompt, a, b)
        if "tie" in (la, lb):
            continue
        agree += la == lb
        total += 1
    return agree / max(total, 1)


def consensus(pool: list[Annotator], prompt: Prompt, a: str, b: str) -> int:
    """The pool's noise-free majority (every persona's own preference, no flips): 1 for a, -1 for b, 0 for
    no majority (ties abstain)."""
    votes = 0
    for x in pool:
        d = x.utility(prompt, a) - x.utility(prompt, b)
        if abs(d) >= x.tie_margin:
            votes += 1 if d > 0 else -1
    return (votes > 0) - (votes < 0)


def consensus_accuracy(pool: list[Annotator], labelled: list[tuple[Prompt, str, str]]) -> float:
    """Share of decided labels (prompt, chosen, rejected) the pool's consensus agrees with: the accuracy on
    exactly these labels of a reward model that learnt the consensus perfectly, i.e. its ceiling there.
    It is above ``pairwise_agreement``: with flip rate e two annotators agree (1-e)^2 + e^2 of the time,
    an annotator and the consensus 1 - e (0.625 and 0.75 at e = 0.25)."""
    votes = [consensus(pool, p, chosen, rejected) for p, chosen, rejected in labelled]
    return (sum(v > 0 for v in votes) + 0.5 * sum(v == 0 for v in votes)) / max(len(votes), 1)  # no majority: a coin
