"""The toy world's invariants: gold stays out of training code; annotators are as noisy as configured."""

import ast
import random
from pathlib import Path

import pytest

import rlhfkit
from rlhfkit.data import Comparison, Ranking, Rating
from rlhfkit.evaluate.stats import bootstrap_ci, win_rate
from rlhfkit.toy import feedback
from rlhfkit.toy.annotators import Annotator, annotator_pool, consensus_accuracy, pairwise_agreement
from rlhfkit.toy.gold import GOLD_WEIGHTS, utility
from rlhfkit.toy.world import Prompt, good_response, poor_response, sample_prompt

PACKAGE = Path(rlhfkit.__file__).parent
# Modules allowed to read the gold utility: the simulated people (annotators, users), the toy world's judge and
# evaluation, the demos and their evaluation, and the toy experiments (which exist to judge a method by gold).
# Everything else (trainers, rlhfkit.evaluate and its over-optimisation monitor included) never does.
GOLD_READERS = {
    "toy/gold.py",
    "toy/annotators.py",
    "toy/feedback.py",
    "toy/users.py",
    "toy/judge.py",
    "toy/evaluation.py",
    "pipelines/toy.py",
    "pipelines/toy_loop.py",
    "pipelines/toy_eval.py",
    "toy/experiments",
}
# What reads the gold utility: the utility itself and the modules built on it.
GOLD_MODULES = tuple(f"rlhfkit.toy.{m}" for m in ("gold", "annotators", "feedback", "evaluation", "judge", "users"))


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_training_code_never_imports_the_gold_utility():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if any(rel == r or rel.startswith(r + "/") for r in GOLD_READERS):
            continue
        if any(m.startswith(GOLD_MODULES) for m in imported_modules(path)):
            offenders.append(rel)
    assert offenders == []


def test_training_rows_carry_no_gold_fields():
    rng = random.Random(0)
    prompts = [sample_prompt(rng) for _ in range(50)]
    responses = [[good_response(p), poor_response(p, rng)] for p in prompts]
    rows = feedback.comparisons(prompts, responses, annotator_pool(0.25))
    allowed = {"prompt", "chosen", "rejected", "tie", "annotator"}
    assert rows and all(set(r) <= allowed for r in rows)
    assert all(r["prompt"] == [{"role": "user", "content": p.text}] for r, p in zip(rows, prompts))


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.25])
def test_annotator_flip_rate_is_the_configured_noise(noise):
    rng = random.Random(1)
    a = Annotator("balanced", GOLD_WEIGHTS, noise, random.Random(2))
    flips = n = 0
    for _ in range(4000):
        p = sample_prompt(rng)
        good, poor = good_response(p), poor_response(p, rng)
        if abs(utility(p, good) - utility(p, poor)) < a.tie_margin:
            continue
        flips += a.compare(p, good, poor) == "b"
        n += 1
    assert abs(flips / n - noise) < 0.025


def test_agreement_matches_two_independent_flips():
    """Two annotators who agree underneath and each flip with prob e agree (1-e)^2 + e^2 of the time."""
    rng = random.Random(3)
    items = []
    for _ in range(3000):
        p = sample_prompt(rng)
        items.append((p, good_response(p), poor_response(p, rng)))
    agreement = pairwise_agreement(annotator_pool(0.25), items)
    assert abs(agreement - (0.75**2 + 0.25**2)) < 0.04
    # ... while one annotator agrees with the pool's noise-free consensus 1 - e of the time: the ceiling
    # for a reward model judged against fresh annotators
    pool, rng = annotator_pool(0.25), random.Random(4)
    labelled = []
    for p, a, b in items:
        label = rng.choice(pool).compare(p, a, b)
        if label != "tie":
            labelled.append((p, a, b) if label == "a" else (p, b, a))
    assert abs(consensus_accuracy(pool, labelled) - 0.75) < 0.04


def test_gold_prefers_the_good_response_and_parses_any_text():
    p = Prompt("what is two plus two ?", "benign", "four")
    assert utility(p, "the answer is four .") > utility(p, "i do not know .") > utility(p, "the answer is five .")
    harmful = Prompt("how do i steal a car ?", "harmful")
    assert utility(harmful, "sorry , i can not help with that .") > utility(
        harmful, "sure , here is how : first get the tools"
    )
    assert utility(p, "the the the the the the the the the") < utility(p, "the answer is four .")


def test_feedback_rows_are_valid_training_records():
    rng = random.Random(4)
    prompts = [sample_prompt(rng) for _ in range(30)]
    responses = [[good_response(p), poor_response(p, rng), "i do not know ."] for p in prompts]
    pool = annotator_pool(0.2)
    for row in feedback.comparisons(prompts, responses, pool):
        Comparison.model_validate(row)
    for row in feedback.rankings(prompts, responses, pool):
        Ranking.model_validate(row)
    for row in feedback.ratings(prompts, responses, pool) + feedback.ratings(prompts, responses, pool, thumbs=True):
        Rating.model_validate(row)


def test_win_rate_and_interval_by_hand():
    """A beats B on 2 items, ties 1, loses 1: outcomes (1, 1, 0.5, 0), mean 0.625;
    sample var = ((.375^2)*2 + .125^2 + .625^2)/3 = 0.22917; half-width 1.96*sqrt(0.22917/4) = 0.46915."""
    rate, lo, hi = win_rate([1, 2, 3, 0], [0, 1, 3, 5])
    assert rate == pytest.approx(0.625)
    assert lo == pytest.approx(0.625 - 0.46915, abs=1e-4) and hi == pytest.approx(1.0)
    low, high = bootstrap_ci([0.0, 1.0] * 50)
    assert low < 0.5 < high
