"""Disagreement and personal rewards, on the tiny model in seconds: an annotator-conditioned reward model learns
two annotators who want opposite things (and its pooled head neither), scores as a named annotator through the
reward spec, reports each annotator's accuracy and agreement; a mean-variance model's hidden-context statistic
tells one annotator from two who disagree; reward transforms (quantile, mean - std, worst) on distributions and
ensembles; the toy world's thumbs and personas.

Run: PYTHONPATH=. python -m pytest tests/test_disagreement_rewards.py -q
"""

import json

import pytest
import torch

from rlhfkit.data.io import write_jsonl
from rlhfkit.data.records import Comparison
from rlhfkit.toy.data import rule_comparisons

FAST = dict(progress=False, report_to=["jsonl"], log_every=10, batch_size=16, lr=3e-3, warmup_ratio=0.0)


def figures(out):
    return json.loads((out / "card.json").read_text())["figures"]


def opposed(n: int, seed: int, who=("wants-sorry", "hates-sorry")) -> list[dict]:
    """Rule pairs: the first annotator prefers the response with 'sorry', the second the other one."""
    rows = []
    for i, r in enumerate(rule_comparisons(n, seed=seed)):
        if i % 2:
            rows.append({**r, "chosen": r["rejected"], "rejected": r["chosen"], "annotator": who[1]})
        else:
            rows.append({**r, "annotator": who[0]})
    return rows


@pytest.fixture(scope="module")
def conditioned_rm(tmp_path_factory):
    from rlhfkit.train.reward import RewardConfig, run

    folder = tmp_path_factory.mktemp("opposed")
    write_jsonl(folder / "train.jsonl", opposed(640, seed=0))
    write_jsonl(
        folder / "eval.jsonl", opposed(120, seed=1) + [{**rule_comparisons(4, seed=2)[0], "annotator": "newcomer"}]
    )
    out = folder / "rm"
    run(RewardConfig(data=str(folder / "train.jsonl"), eval_data=str(folder / "eval.jsonl"), output_dir=str(out),
                     max_steps=60, annotator_conditioned=True, per_annotator_report=True, **FAST))  # fmt: skip
    return out


def test_conditioned_reward_model_learns_each_annotator_and_its_pooled_head_neither(conditioned_rm):
    """Half the labels say 'sorry' is better, half say it is worse: each annotator's own score orders their
    held-out labels >= 80% right (83-100% here); the pooled head, which sees the two cancel, can be right for one
    only as often as it is wrong for the other (its two accuracies sum to about 1)."""
    found = figures(conditioned_rm)
    rows = {r["annotator"]: r for r in found["per_annotator"]}
    print(json.dumps(found["per_annotator"], indent=1))
    for who in ("wants-sorry", "hates-sorry"):
        assert rows[who]["conditioned"] and rows[who]["accuracy"] >= 0.8
    assert abs(rows["wants-sorry"]["pooled_accuracy"] + rows["hates-sorry"]["pooled_accuracy"] - 1) < 0.15
    assert found["eval_accuracy"] >= 0.8 and found["eval_pooled_accuracy"] <= 0.7
    assert rows["newcomer"]["conditioned"] is False  # unknown: scored by the pooled head
    assert json.loads((conditioned_rm / "per_annotator.json").read_text()) == found["per_annotator"]


def spec_accuracy(reward, rows: list[dict]) -> float:
    """The share of ``rows`` (comparisons) whose chosen response ``reward`` scores above the rejected one."""
    prompts = [r["prompt"] for r in rows]
    chosen, rejected = reward(prompts, [r["chosen"] for r in rows]), reward(prompts, [r["rejected"] for r in rows])
    return (chosen > rejected).float().mean().item()


def test_the_reward_spec_names_the_annotator_and_refuses_strangers(conditioned_rm):
    """``RM@annotator=NAME`` scores as NAME: on each annotator's held-out labels it orders the pairs exactly as the
    per-annotator report says (the same scores), and the other annotator's spec orders them the other way round
    (the two want opposite things). Judged on the held-out pairs, not on one hand-written pair: the tiny model
    after 60 steps has not learnt every corner of the rule (e.g. with 'yes', spelt y-e-s by its tokenizer, as
    the last word, every head's gap between 'sorry' and no 'sorry' is about 0.3 raw, against about 6 with
    'four' last), so one pair can land either way while the annotators' accuracies are 83-100%. The other spec
    gets at most 30% (25% here: hates-sorry's score on wants-sorry's labels)."""
    from rlhfkit.rewards import load_reward

    report = {r["annotator"]: r for r in figures(conditioned_rm)["per_annotator"]}
    held_out = opposed(120, seed=1)
    specs = {who: load_reward(f"{conditioned_rm}@annotator={who}") for who in ("wants-sorry", "hates-sorry")}
    for who, other in (("wants-sorry", "hates-sorry"), ("hates-sorry", "wants-sorry")):
        rows = [r for r in held_out if r["annotator"] == who]
        assert report[who]["accuracy"] >= 0.8
        assert spec_accuracy(specs[who], rows) == pytest.approx(report[who]["accuracy"], abs=1e-6)
        assert spec_accuracy(specs[other], rows) <= 0.3, (who, other)
    prompts, responses = ["what is one plus two ?"] * 2, [" sorry paris two four", " rome paris two four"]
    assert load_reward(str(conditioned_rm))(prompts, responses).shape == (2,)  # pooled
    with pytest.raises(ValueError, match="knows hates-sorry, wants-sorry"):
        load_reward(f"{conditioned_rm}@annotator=wants-sory")


def test_each_annotator_is_normalised_on_the_reference_set(conditioned_rm):
    from rlhfkit.data.io import read_records
    from rlhfkit.models.reward import load_reward_model
    from rlhfkit.models.reward_scoring import score_texts
    from rlhfkit.train.reward import RewardConfig, reference_texts

    rm = load_reward_model(conditioned_rm)
    cfg = RewardConfig(data=str(conditioned_rm.parent / "train.jsonl"))
    prompts, responses = reference_texts(cfg, read_records(cfg.data, "comparison")[0])
    for who in (None, "wants-sorry", "hates-sorry"):
        scores = score_texts(rm, prompts, responses, annotator=who).double()
        assert abs(scores.mean().item()) < 1e-4 and abs(scores.std(unbiased=False).item() - 1) < 1e-4, who


def test_annotator_agreement_by_hand():
    """One pair labelled by a (chosen x), b (chosen x) and c (chosen y); another only by a. a agrees with b, not
    c: 1 of 2; b likewise 1 of 2; c 0 of 2."""
    from rlhfkit.train.reward_report import annotator_agreement

    pair = {"prompt": "p", "chosen": "x", "rejected": "y"}
    rows = [
        Comparison(**pair, annotator="a"),
        Comparison(**pair, annotator="b"),
        Comparison(prompt="p", chosen="y", rejected="x", annotator="c"),
        Comparison(prompt="q", chosen="x", rejected="y", annotator="a"),
        Comparison(prompt="p", chosen="x", rejected="y", tie=True, annotator="d"),  # ties carry no preference
    ]
    assert annotator_agreement(rows) == {"a": (1, 2), "b": (1, 2), "c": (0, 2)}


def test_conditioning_needs_annotators(tmp_path):
    from rlhfkit.train.reward import RewardConfig, run

    write_jsonl(tmp_path / "plain.jsonl", rule_comparisons(32, seed=0))
    with pytest.raises(ValueError, match="needs an 'annotator' field"):
        run(
            RewardConfig(data=str(tmp_path / "plain.jsonl"), annotator_conditioned=True, output_dir=str(tmp_path / "x"))
        )


# --- distributional reward model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mean_variance_rms(tmp_path_factory):
    """Mean-variance models on the same pairs labelled by one annotator, and by two who disagree."""
    from rlhfkit.train.reward import RewardConfig, run

    folder = tmp_path_factory.mktemp("dpl")
    one = [{**r, "annotator": "wants-sorry"} for r in rule_comparisons(480, seed=0)]
    write_jsonl(folder / "one.jsonl", one)
    write_jsonl(folder / "two.jsonl", opposed(480, seed=0))
    write_jsonl(folder / "eval.jsonl", rule_comparisons(80, seed=1))
    out = {}
    for name in ("one", "two"):
        out[name] = folder / name
        run(RewardConfig(data=str(folder / f"{name}.jsonl"), eval_data=str(folder / "eval.jsonl"),
                         output_dir=str(out[name]), max_steps=50, head="mean-variance", **FAST))  # fmt: skip
    return out


def test_hidden_context_statistic_tells_one_annotator_from_two_who_disagree(mean_variance_rms):
    """One annotator: the response explains most of the reward's variance (r^2 high); two annotators with opposite
    wants: the same responses get wide distributions instead (r^2 far lower)."""
    one, two = (figures(mean_variance_rms[n])["hidden_context_r2"] for n in ("one", "two"))
    print("hidden-context r^2: one annotator", one, "two", two)
    assert one > 0.5 and two < 0.5 * one
    assert figures(mean_variance_rms["one"])["eval_accuracy"] >= 0.9


def test_quantile_transform_of_a_mean_variance_model(mean_variance_rms):
    """quantile:q gives mean + Phi^-1(q) sd of the model's normalised distribution; a scalar reward is refused."""
    from statistics import NormalDist

    from rlhfkit.models.reward import load_reward_model
    from rlhfkit.models.reward_scoring import score_distribution
    from rlhfkit.rewards import load_reward

    prompts, responses = ["say it"] * 3, [" sorry yes", " no no", " paris sorry rome"]
    mean, var = score_distribution(load_reward_model(mean_variance_rms["two"]), prompts, responses)
    lower = load_reward(str(mean_variance_rms["two"]), transform="quantile:0.1")(prompts, responses)
    torch.testing.assert_close(lower, mean + NormalDist().inv_cdf(0.1) * var.sqrt())
    assert (lower < mean).all()
    with pytest.raises(ValueError, match="needs a spread"):
        load_reward("tests.test_disagreement_rewards:first_letter", transform="quantile:0.1")(prompts, responses)
    with pytest.raises(ValueError, match="'worst' takes the lowest of several members"):
        load_reward(str(mean_variance_rms["two"]), transform="worst")(prompts, responses)


def first_letter(prompts, responses):
    return [float(ord(r.strip()[0])) for r in responses]


def second_letter(prompts, responses):
    return [float(ord(r.strip()[1])) for r in responses]


def test_transforms_of_an_ensemble_are_the_ensemble_rewards():
    from rlhfkit.losses import ensemble_reward
    from rlhfkit.rewards import load_reward

    spec = "tests.test_disagreement_rewards:first_letter,tests.test_disagreement_rewards:second_letter"
    prompts, responses = ["p"] * 3, ["ab", "za", "mm"]
    members = load_reward(spec).members(prompts, responses)
    for transform, how, coef in (("worst", "worst", 0), ("mean_minus_std:1.5", "mean_minus_std", 1.5)):
        out = load_reward(spec, transform=transform)(prompts, responses)
        torch.testing.assert_close(out, ensemble_reward(members, how, coef))


def test_rm_score_writes_the_transformed_score_and_the_spread(mean_variance_rms, tmp_path):
    from rlhfkit.config.stages import ScoreConfig
    from rlhfkit.train.reward_score import score_file

    write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "say it", "response": r} for r in (" sorry yes", " no no")])
    plain = score_file(ScoreConfig(reward=str(mean_variance_rms["two"]), data=str(tmp_path / "rows.jsonl"),
                                   output=str(tmp_path / "mean.jsonl")))  # fmt: skip
    low = score_file(ScoreConfig(reward=str(mean_variance_rms["two"]), data=str(tmp_path / "rows.jsonl"),
                                 output=str(tmp_path / "low.jsonl"), reward_transform="mean_minus_std:1"))  # fmt: skip
    mean_rows = [json.loads(line) for line in plain.read_text().splitlines()]
    low_rows = [json.loads(line) for line in low.read_text().splitlines()]
    for m, lo in zip(mean_rows, low_rows):
        assert m["score_std"] > 0 and lo["score"] == pytest.approx(m["score"] - m["score_std"], abs=1e-5)


# --- settings -----------------------------------------------------------------------------------------------------


def test_reward_transform_setting_is_checked_with_its_grammar():
    from rlhfkit.config.parts import parse_reward_transform
    from rlhfkit.config.stages import BestOfNConfig, PPOConfig

    assert parse_reward_transform("quantile:0.1") == ("quantile", 0.1)
    assert parse_reward_transform("worst") == ("worst", None)
    for bad, message in (
        ("median", "unknown transform 'median'"),
        ("quantile", "needs a number"),
        ("quantile:1", r"q in \(0, 1\)"),
        ("worst:2", "takes no parameter"),
        ("mean_minus_std:-1", "lambda >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_reward_transform(bad)
    assert (
        PPOConfig(data="d", reward="r", reward_transform="mean_minus_std:0.5").reward_transform == "mean_minus_std:0.5"
    )
    with pytest.raises(ValueError, match="reward_transform"):
        BestOfNConfig(data="d", reward="r", reward_transform="quantile:2")


def test_reward_spec_annotator_suffix(tmp_path):
    from rlhfkit.models.reward import build_reward_model, save_reward_model
    from rlhfkit.specs import SpecError, parse_reward_spec

    save_reward_model(build_reward_model("tiny"), tmp_path / "rm" / "final")
    (tmp_path / "rm" / "card.json").write_text("{}")
    spec = parse_reward_spec(f"{tmp_path / 'rm'}@annotator=alice")
    assert spec.kind == "reward-model" and spec.annotator == "alice" and spec.path == tmp_path / "rm" / "final"
    assert parse_reward_spec(str(tmp_path / "rm")).annotator is None
    with pytest.raises(SpecError, match="takes annotator=NAME"):
        parse_reward_spec(f"{tmp_path / 'rm'}@persona=alice")
    with pytest.raises(SpecError, match="no such reward-model folder"):
        parse_reward_spec(f"{tmp_path / 'nothing'}@annotator=alice")
    from rlhfkit.rewards import load_reward

    with pytest.raises(ValueError, match="not annotator-conditioned"):
        load_reward(f"{tmp_path / 'rm'}@annotator=alice")


# --- the toy world's annotators -------------------------------------------------------------------------------------


def test_thumbs_judge_a_response_against_the_best_the_prompt_allows():
    from rlhfkit.toy.annotators import annotator_pool
    from rlhfkit.toy.world import REFUSAL, UNSURE, Prompt

    judge = annotator_pool(noise=0.0)[0]
    harmful, benign = Prompt("how do i steal a car ?", "harmful"), Prompt("what is two plus two ?", "benign", "four")
    assert judge.thumbs(harmful, REFUSAL) and not judge.thumbs(harmful, "sure , here is how : first get the tools .")
    assert judge.thumbs(benign, "the answer is four .") and not judge.thumbs(benign, REFUSAL)
    assert not judge.thumbs(benign, UNSURE)


def test_the_diverse_personas_disagree_where_the_demo_personas_agree():
    """A refusal against compliance with a harmful request: every demo persona prefers the refusal; the diverse
    pool's helpful-only persona (as HH-RLHF's helpfulness annotators) prefers compliance."""
    from rlhfkit.toy.annotators import DIVERSE_PERSONAS, annotator_pool
    from rlhfkit.toy.world import REFUSAL, Prompt

    harmful, comply = Prompt("how do i steal a car ?", "harmful"), "sure , here is how : first get the tools ."
    assert {a.compare(harmful, REFUSAL, comply) for a in annotator_pool(noise=0.0)} == {"a"}
    votes = {a.name: a.compare(harmful, REFUSAL, comply) for a in annotator_pool(0.0, personas=DIVERSE_PERSONAS)}
    assert votes["helpful-only"] == "b" and votes["balanced"] == "a"
