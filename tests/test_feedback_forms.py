"""Training on every form of feedback, on the tiny model in seconds: ratings as an ordinal or regression reward
model and as pairs, soft labels (reward model and DPO), ties in DPO trained as ties (never a false preference),
KTO on thumbs, and the data checks each of them makes.

Run: PYTHONPATH=. python -m pytest tests/test_feedback_forms.py -q
"""

import json
import random

import pytest
import torch

from rlhfkit.data.io import DataError, write_jsonl
from rlhfkit.data.pairs import Group, pack_groups
from rlhfkit.data.records import Comparison
from rlhfkit.models.reward import load_reward_model
from rlhfkit.runs import read_metrics
from rlhfkit.toy.data import rule_comparisons

RM_FAST = dict(progress=False, report_to=["jsonl"], log_every=10, batch_size=16, lr=3e-3, warmup_ratio=0.0)
DPO_FAST = dict(progress=False, report_to=["jsonl"], log_every=5, batch_size=8, warmup_ratio=0.0)


def figures(out):
    return json.loads((out / "card.json").read_text())["figures"]


def rule_ratings(n: int, seed: int, scale: int = 5, thumbs: bool = False) -> list[dict]:
    """Two ratings per prompt by one annotator: the response with 'sorry' rated high, the other low."""
    rng = random.Random(seed)
    rows = []
    for i, pair in enumerate(rule_comparisons(n, seed=seed)):
        who = f"ann{i % 3}"
        for text, good in ((pair["chosen"], True), (pair["rejected"], False)):
            verdict = {"label": good} if thumbs else {"rating": rng.choice([4, 5] if good else [1, 2]), "scale": scale}
            rows.append({"prompt": pair["prompt"], "completion": text, "annotator": who, **verdict})
    return rows


# --- records ------------------------------------------------------------------------------------------------


def test_a_soft_label_is_a_probability_and_excludes_ties_and_margins():
    base = {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert Comparison.model_validate({**base, "chosen_prob": 0.8}).chosen_prob == 0.8
    for extra, message in (
        ({"chosen_prob": 1.2}, "not a probability"),
        ({"chosen_prob": 0.6, "tie": True}, "'tie' and 'chosen_prob'"),
        ({"chosen_prob": 0.6, "margin": 1.0}, "'margin' and 'chosen_prob'"),
    ):
        with pytest.raises(ValueError, match=message):
            Comparison.model_validate({**base, **extra})


# --- reward models on ratings ----------------------------------------------------------------------------


@pytest.mark.parametrize("rating_loss", ["ordinal", "regression", "pairs"])
def test_reward_model_learns_from_ratings(rating_loss, tmp_path):
    """Ratings of 4-5 for responses with 'sorry', 1-2 otherwise: held-out pairwise accuracy (the held-out ratings
    as pairs) >= 85% by each reading of them (90-93% here); the ordinal thresholds are stored with the head, ordered."""
    write_jsonl(tmp_path / "train.jsonl", rule_ratings(320, seed=0))
    write_jsonl(tmp_path / "eval.jsonl", rule_ratings(60, seed=1))
    from rlhfkit.train.reward import RewardConfig, run

    out = tmp_path / rating_loss
    cfg = RewardConfig(
        data=str(tmp_path / "train.jsonl"),
        eval_data=str(tmp_path / "eval.jsonl"),
        data_kind="rating",
        rating_loss=rating_loss,
        output_dir=str(out),
        max_steps=40,
        **RM_FAST,
    )
    run(cfg)
    found = figures(out)
    print(rating_loss, found)
    assert found["eval_accuracy"] >= 0.85
    rm = load_reward_model(out)
    if rating_loss == "ordinal":
        thresholds = rm.thresholds()
        assert rm.rating == {"loss": "ordinal", "levels": 5} and thresholds.shape == (4,)
        assert (thresholds.diff() > 0).all()
    else:
        assert rm.threshold_params is None


def test_ordinal_ratings_need_one_scale(tmp_path):
    rows = rule_ratings(20, seed=0) + [{"prompt": "p", "completion": "a", "rating": 7, "scale": 10}]
    write_jsonl(tmp_path / "mixed.jsonl", rows)
    from rlhfkit.train.reward import RewardConfig, run

    cfg = RewardConfig(data=str(tmp_path / "mixed.jsonl"), data_kind="rating", output_dir=str(tmp_path / "x"))
    with pytest.raises(ValueError, match=r"one rating scale, the data has \[5, 10\].*--rating-loss regression"):
        run(cfg)
    assert not (tmp_path / "x").exists()
    write_jsonl(tmp_path / "half.jsonl", rule_ratings(20, seed=0) + [{"prompt": "p", "completion": "a", "rating": 3.5}])
    with pytest.raises(ValueError, match=r"half.jsonl: a rating of 3.5 \(prompt 'p'\): the ordered logit takes whole"):
        run(cfg.model_copy(update={"data": str(tmp_path / "half.jsonl")}))
    assert not (tmp_path / "x").exists()


# --- soft labels ---------------------------------------------------------------------------------------------


def test_reward_model_soft_labels_give_the_soft_bradley_terry_loss():
    from rlhfkit import losses
    from rlhfkit.train.reward import RewardConfig, group_loss

    scores = torch.tensor([1.0, 0.0, 0.5, 0.5])  # two pairs: (chosen, rejected)
    groups = [Group([1], [[2], [3]], chosen_prob=0.75), Group([1], [[4], [5]])]
    out = group_loss(scores, groups, RewardConfig(data="x"), with_ties=False)
    expected = losses.bradley_terry_soft_loss(
        torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.5]), torch.tensor([0.75, 1])
    )
    torch.testing.assert_close(out, expected)


def test_reward_model_trained_on_soft_labels_keeps_smaller_margins(tmp_path):
    """The same rule pairs labelled p = 1 and p = 0.6: both learn the rule, the soft one with a margin near
    logit(0.6) = 0.41 rather than growing without bound."""
    from rlhfkit.train.reward import RewardConfig, run

    margins = {}
    for p in (1.0, 0.6):
        rows = [{**r, "chosen_prob": p} for r in rule_comparisons(320, seed=0)]
        write_jsonl(tmp_path / f"{p}.jsonl", rows)
        write_jsonl(tmp_path / "eval.jsonl", rule_comparisons(60, seed=1))
        out = tmp_path / f"rm-{p}"
        run(RewardConfig(data=str(tmp_path / f"{p}.jsonl"), eval_data=str(tmp_path / "eval.jsonl"),
                         output_dir=str(out), max_steps=40, normalize=False, **RM_FAST))  # fmt: skip
        margins[p] = figures(out)["eval_margin"]
        assert figures(out)["eval_accuracy"] >= 0.85
    print("held-out raw margins", margins)
    assert margins[0.6] < 0.5 * margins[1.0] and margins[0.6] < 1.5


# --- DPO: ties and soft labels ----------------------------------------------------------------------------------


def _dpo_pairs(tmp_path, name: str, **fields) -> str:
    """Rule pairs ('sorry' in chosen) with extra fields on every pair: the labels under test."""
    for split, n, seed in (("train", 96, 0), ("eval", 24, 1)):
        write_jsonl(tmp_path / f"{name}-{split}.jsonl", [{**r, **fields} for r in rule_comparisons(n, seed=seed)])
    return name


@pytest.mark.parametrize("labels", [{}, {"tie": True}, {"chosen_prob": 0.5}], ids=["hard", "tie", "soft-0.5"])
def test_dpo_trains_ties_and_even_soft_labels_as_no_preference(labels, tmp_path):
    """Every pair has 'sorry' in 'chosen'. Hard labels teach DPO to prefer it; marked as ties (Davidson), or with
    chosen_prob 0.5, the very same pairs must not: the held-out implicit-reward margin stays near 0."""
    from rlhfkit.train.dpo import DPOConfig, run

    name = _dpo_pairs(tmp_path, "pairs", **labels)
    out = tmp_path / "dpo"
    run(DPOConfig(data=str(tmp_path / f"{name}-train.jsonl"), eval_data=str(tmp_path / f"{name}-eval.jsonl"),
                  output_dir=str(out), max_steps=24, lr=3e-3, beta=0.1, **DPO_FAST))  # fmt: skip
    last = [m for m in read_metrics(out) if "eval/loss" in m][-1]
    margin = last["eval/rewards/margins"]
    print(labels, "held-out implicit-reward margin", margin, last)
    if labels:
        assert abs(margin) < 0.3
    else:
        assert margin > 1.0
    if labels.get("tie"):
        assert last["eval/rewards/tie_gaps"] < 0.4 and "eval/rewards/accuracies" not in last  # no decided pair


def test_dpo_tie_options_and_refusals(tmp_path):
    from rlhfkit.train.dpo import DPOConfig, check_pairs, run

    rows = [Comparison.model_validate({**r, "tie": i % 2 == 0}) for i, r in enumerate(rule_comparisons(8, seed=0))]
    assert len(check_pairs(DPOConfig(data="d", ties="drop"), rows, "d")) == 4
    with pytest.raises(ValueError, match="tie models .* not 'ipo'"):
        check_pairs(DPOConfig(data="d", loss="ipo"), rows, "d.jsonl")
    soft = [Comparison.model_validate({**r, "chosen_prob": 0.7}) for r in rule_comparisons(4, seed=0)]
    with pytest.raises(ValueError, match="soft labels .* not --loss hinge"):
        check_pairs(DPOConfig(data="d", loss="hinge"), soft, "d.jsonl")
    _dpo_pairs(tmp_path, "ties", tie=True)
    with pytest.raises(ValueError, match="no pairs left once ties are dropped"):
        run(DPOConfig(data=str(tmp_path / "ties-train.jsonl"), ties="drop", output_dir=str(tmp_path / "x"), **DPO_FAST))


# --- KTO ---------------------------------------------------------------------------------------------------------


def test_kto_mismatched_partners_follow_trl_chunks():
    from rlhfkit.train.kto import mismatched_partners

    assert mismatched_partners(6, 3) == [2, 0, 1, 5, 3, 4]
    assert mismatched_partners(7, 3) == [2, 0, 1, 6, 3, 4, 5]  # a last chunk of one joins the one before
    assert all(i != j for i, j in enumerate(mismatched_partners(9, 4)))


def test_a_kto_example_keeps_its_prompt_whatever_its_mismatched_partner(tiny):
    """An example whose prompt and completion fit max_length keeps its whole prompt; its mismatched partner (another
    example's completion) is cut to the room left, not the prompt for it, which made the example train on another
    prompt than its data's."""
    from rlhfkit.data.pairs import tokenize_group
    from rlhfkit.data.records import Rating
    from rlhfkit.train.kto import tokenize_all

    _, tok = tiny
    prompt = " ".join(["what is the capital of france ?"] * 5)
    short, long = "the answer is paris .", " ".join(["the answer is paris ."] * 12)
    records = [Rating(prompt=prompt, completion=short, label=True),
               Rating(prompt=prompt, completion=long, label=False)]  # fmt: skip
    alone = tokenize_group(tok, prompt, [short], 64)
    assert len(alone.prompt_ids) + len(alone.completion_ids[0]) <= 64 < len(alone) + len(tok(long)["input_ids"])
    first = tokenize_all(tok, records, 64, chunk=2, source="thumbs")[0]
    assert first.prompt_ids == alone.prompt_ids and first.completion_ids[0] == alone.completion_ids[0]
    assert len(first.prompt_ids) + len(first.completion_ids[1]) == 64  # the partner cut to the room left


class _ThreeProcesses:
    """Stands in for Accelerate with three processes: the two others' mismatched log-ratios sum to ``others`` over
    ``count`` examples."""

    num_processes, device = 3, "cpu"

    def __init__(self, others, count):
        self.others = torch.tensor([others, count])

    def reduce(self, tensor, op):
        assert op == "sum"
        return tensor + self.others


def test_kto_reference_point_is_a_global_mean_before_clamping(tiny):
    """This process's 2 mismatched log-ratios are 0 (policy = reference); the others' 4 sum to -12 or +12. The
    reference point is the mean over all 6 examples, then clamped: max(0, -12 / 6) = 0 and max(0, 12 / 6) = 2
    (not a mean of per-process means: (0 + 3) / 2 = 1.5 for the second; not a mean of clamps)."""
    from rlhfkit.train.dpo import CompletionLogProbs
    from rlhfkit.train.kto import KTOConfig, kto_step

    model, tok = tiny
    groups = [Group([5, 6], [[7, 8], [9]], label=True), Group([5, 10], [[9], [7, 8]], label=False)]
    policy = CompletionLogProbs(model)
    with torch.no_grad():
        ref = policy(pack_groups(groups, 0))
    for others, z0 in ((-12.0, 0.0), (12.0, 2.0)):
        cfg = KTOConfig(data="x", desirable_weight=1.0)
        _, stats = kto_step(policy, groups, ref, cfg, 0, _ThreeProcesses(others, 4.0))
        assert stats["kl"] / len(groups) == pytest.approx(z0, abs=1e-5)
    # a process with no share of the batch runs a stand-in and counts for nothing: 12 / 4 = 3
    _, stats = kto_step(policy, groups, ref, cfg, 0, _ThreeProcesses(12.0, 4.0), counted=False)
    assert stats["kl"] / len(groups) == pytest.approx(3.0, abs=1e-5)


def test_kto_learns_thumbs_held_out(tmp_path):
    """Thumbs up for responses with 'sorry', down for the rest (no pairs): the held-out implicit reward of
    thumbs-up rises above that of thumbs-down, and the run reports TRL's names."""
    from rlhfkit.train.kto import KTOConfig, run

    write_jsonl(tmp_path / "train.jsonl", rule_ratings(160, seed=0, thumbs=True))
    write_jsonl(tmp_path / "eval.jsonl", rule_ratings(30, seed=1, thumbs=True))
    out = tmp_path / "kto"
    run(KTOConfig(data=str(tmp_path / "train.jsonl"), eval_data=str(tmp_path / "eval.jsonl"), output_dir=str(out),
                  max_steps=25, lr=3e-3, beta=0.1, **DPO_FAST))  # fmt: skip
    evals = [m for m in read_metrics(out) if "eval/loss" in m]
    print("kto held-out", evals[0], evals[-1])
    assert evals[0]["eval/rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # policy = reference at the start
    assert evals[-1]["eval/rewards/margins"] > 1.0 and evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    found = figures(out)
    assert found["desirable_weight"] == pytest.approx(1.0) and found["eval_margin"] > 1.0  # balanced data: 1
    train = [m for m in read_metrics(out) if "train/loss" in m]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "kl", "logps/chosen"} <= set(train[-1])


def test_kto_references_agree_and_ratings_are_refused(tmp_path):
    from rlhfkit.train.kto import KTOConfig, run

    write_jsonl(tmp_path / "t.jsonl", rule_ratings(16, seed=0, thumbs=True))
    first = {}
    for ref in ("copy", "precomputed"):
        out = tmp_path / ref
        run(KTOConfig(data=str(tmp_path / "t.jsonl"), eval_fraction=0.0, output_dir=str(out), max_steps=2,
                      reference=ref, lr=1e-3, **DPO_FAST))  # fmt: skip
        first[ref] = [m for m in read_metrics(out) if "train/loss" in m]
    for a, b in zip(first["copy"], first["precomputed"]):
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-5)
    write_jsonl(tmp_path / "stars.jsonl", rule_ratings(8, seed=0))
    with pytest.raises(DataError, match="KTO trains on thumbs"):
        run(KTOConfig(data=str(tmp_path / "stars.jsonl"), output_dir=str(tmp_path / "no"), **DPO_FAST))
    assert not (tmp_path / "no").exists()


def test_kto_command_on_the_toy_thumbs(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["kto", "--data", "toy", "--max-steps", "1", "--batch-size", "32",
                                      "--eval-fraction", "0", "--reference", "copy", "--output-dir", str(out), "--no-progress",
                                      "--report-to", "[jsonl]"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "final" / "config.json").exists() and "desirable_weight" in result.output
