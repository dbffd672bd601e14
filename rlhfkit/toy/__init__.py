"""The built-in toy world: see ``world.py``. ``toy_records`` gives each stage its default data."""

from rlhfkit.toy.world import demonstrations


def toy_records(kind: str, seed: int = 0) -> list[dict]:
    if kind == "demonstration":
        return demonstrations(2000, seed=seed)
    if kind == "comparison":
        return comparisons(2000, seed=seed)
    raise ValueError(f"the toy world has no built-in '{kind}' data yet; give a data file")


def comparisons(n: int, seed: int = 0) -> list[dict]:
    """``n`` conversational comparisons of the toy world: the good response is chosen over a poor one
    (wrong answer, harmful compliance, made-up certainty or an unhelpful refusal)."""
    import random

    from rlhfkit.toy.world import good_response, poor_response, sample_prompt

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


def rule_comparisons(n: int, seed: int = 0, word: str = "sorry", length: int = 4) -> list[dict]:
    """A synthetic preference set with a known rule, for learning tests: prompts are toy questions,
    responses are ``length`` random toy words, and the chosen response contains ``word`` while the
    rejected one does not."""
    import random

    from rlhfkit.toy.world import CAPITALS, NUMBER_WORDS, sample_prompt

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
