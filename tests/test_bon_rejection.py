"""Best-of-N (estimator by hand, curve and files) and rejection sampling / expert iteration."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.losses import best_of_n_kl
from rlhfkit.runs import read_metrics
from rlhfkit.toy.data import data_file
from rlhfkit.train.best_of_n import BestOfNConfig, expected_best_of_n
from rlhfkit.train.best_of_n import run as bon_run
from tests.conftest import interrupted_at

REPO = Path(__file__).resolve().parents[1]


def count_the(prompts, responses):
    return [float(r.lower().split().count("the")) for r in responses]


def test_expected_best_of_n_by_hand():
    """Scores [3, 1, 2] (M = 3). n = 1: the mean, 2. n = 2: subsets {1,2},{1,3},{2,3} -> maxes 2, 3, 3 -> 8/3;
    weights C(i-1, 1) / C(3, 2) = [0, 1/3, 2/3] on sorted [1, 2, 3] -> 2/3 + 2 = 8/3. n = 3: 3."""
    s = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(expected_best_of_n(s, 1), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(expected_best_of_n(s, 2), torch.tensor([8 / 3, 0.0]))
    torch.testing.assert_close(expected_best_of_n(s, 3), torch.tensor([3.0, 0.0]))
    with pytest.raises(ValueError, match="1 <= n <= 3"):
        expected_best_of_n(s, 4)


def test_bon_writes_chosen_responses_and_the_curve(tmp_path):
    path = bon_run(
        BestOfNConfig(
            output_dir=str(tmp_path / "bon"),
            data=str(data_file("prompt")),
            model="tiny",
            reward="tests.test_bon_rejection:count_the",
            n_max=6,  # not a power of two: the curve still ends at the N that chosen.jsonl holds
            max_prompts=6,
            missing_eos_penalty=None,  # the untrained model never ends: keep the reward's own scores
            max_new_tokens=10,
            progress=False,
            report_to=["jsonl"],
        )
    )
    curve = json.loads((path / "curve.json").read_text())
    assert [r["n"] for r in curve] == [1, 2, 4, 6]
    rewards = [r["reward"] for r in curve]
    assert rewards == sorted(rewards)  # the best of more samples is never worse in expectation
    assert all(math.isclose(r["kl_bound"], best_of_n_kl(r["n"])) for r in curve)
    assert curve[0]["kl_bound"] == 0.0 and math.isclose(curve[-1]["kl_bound"], math.log(6) - 5 / 6)
    chosen = [json.loads(line) for line in (path / "chosen.jsonl").read_text().splitlines()]
    assert len(chosen) == 6 and all(c["score"] == count_the(None, [c["completion"]])[0] for c in chosen)
    assert (path / "curve.png").stat().st_size > 1000
    assert list(csv.DictReader((path / "curve.csv").open()))[1]["n"] == "2"


def test_bon_resumes_after_its_last_finished_batch(tmp_path, monkeypatch):
    """Prompt i's samples draw rows i * n..: a run cut in its second batch of prompts (a row of it cut short in
    samples.jsonl) and resumed samples only the prompts it had not finished, and writes the files of an
    uninterrupted run."""
    from rlhfkit.train import best_of_n

    settings = dict(data=str(data_file("prompt")), model="tiny", reward="tests.test_bon_rejection:count_the",
                    n_max=4, max_prompts=5, batch_size=2, missing_eos_penalty=None, max_new_tokens=6,
                    temperature=1.0, top_k=0, progress=False, report_to=["jsonl"])  # fmt: skip
    whole = bon_run(BestOfNConfig(**settings, output_dir=str(tmp_path / "whole")))
    cfg = BestOfNConfig(**settings, output_dir=str(tmp_path / "cut"))
    firsts, first = [], lambda args, kwargs: kwargs["first"]
    monkeypatch.setattr(best_of_n, "sample_and_score", interrupted_at(2, best_of_n.sample_and_score, firsts, first))
    with pytest.raises(KeyboardInterrupt):
        bon_run(cfg)
    samples = tmp_path / "cut" / "samples.jsonl"
    kept = samples.read_text()
    assert [json.loads(line)["i"] for line in kept.splitlines()] == [0, 1]
    samples.write_text(kept.replace('"i": 1', '"i": 7'))  # not a row this run wrote: named, nothing sampled
    with pytest.raises(ValueError, match="samples.jsonl: row 2 is not prompt 1's 4 samples"):
        bon_run(cfg)
    samples.write_text(kept + '{"i": 2, "responses": ["a')  # the interruption cut a row short: sampled again
    resumed = bon_run(cfg)
    assert firsts == [0, 2, 2, 4]
    for name in ("samples.jsonl", "chosen.jsonl", "curve.json"):
        assert (resumed / name).read_text() == (whole / name).read_text(), name


def test_rejection_resumes_without_sampling_again_what_it_sampled(tmp_path, monkeypatch):
    """Cut in round 1's sampling, then in its fine-tuning: each rerun samples only the prompts not yet sampled
    (none once the round's responses are kept) and the run ends with an uninterrupted run's files."""
    from rlhfkit.config.stages import RejectionConfig
    from rlhfkit.train import best_of_n, rejection

    settings = dict(data=str(data_file("prompt")), model="tiny", reward="tests.test_bon_rejection:count_the", k=2,
                    rounds=1, max_prompts=4, batch_size=2, sft_batch_size=2, max_steps=2, missing_eos_penalty=None,
                    max_new_tokens=6, temperature=1.0, top_k=0, progress=False, report_to=["jsonl"])  # fmt: skip
    whole = rejection.run(RejectionConfig(**settings, output_dir=str(tmp_path / "whole")))
    cfg = RejectionConfig(**settings, output_dir=str(tmp_path / "cut"))
    calls = []
    sampled = interrupted_at(2, best_of_n.sample_and_score, calls, lambda args, kwargs: ("sample", kwargs["first"]))
    monkeypatch.setattr(best_of_n, "sample_and_score", sampled)
    monkeypatch.setattr(rejection, "sft_run", interrupted_at(4, rejection.sft_run, calls, lambda args, kwargs: "sft"))
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            rejection.run(cfg)
    resumed = rejection.run(cfg)
    assert calls == [("sample", 0), ("sample", 2), ("sample", 2), "sft", "sft"]
    for name in ("samples.jsonl", "demonstrations.jsonl", "round.json"):
        assert (resumed / "round-1" / name).read_text() == (whole / "round-1" / name).read_text(), name


@pytest.mark.slow
def test_rejection_two_rounds_of_expert_iteration_through_the_cli(tmp_path):
    out = tmp_path / "rej"
    cmd = [
        sys.executable,
        "-m",
        "rlhfkit.cli",
        "rejection",
        "--data",
        "toy",
        "--output-dir",
        str(out),
        "--model",
        "tiny",
        "--reward",
        "tests.test_bon_rejection:count_the",
        "--k",
        "4",
        "--rounds",
        "2",
        "--max-prompts",
        "8",
        "--max-new-tokens",
        "8",
        "--max-steps",
        "3",
        "--sft-batch-size",
        "4",
        "--progress",
        "false",
        "--report-to",
        "[jsonl]",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((out / "card.json").read_text())
    rounds = card["figures"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["policy"] == "tiny" and rounds[1]["policy"] == str(out / "round-1" / "sft")
    assert all(r["best_of_k_reward"] >= r["mean_reward"] for r in rounds)
    for r in (1, 2):
        sft_card = json.loads((out / f"round-{r}" / "sft" / "card.json").read_text())
        assert sft_card["stage"] == "sft" and sft_card["figures"]["steps"] == 3
        assert sft_card["data"]["train"]["path"] == str(out / f"round-{r}" / "demonstrations.jsonl")
        demos = [json.loads(line) for line in (out / f"round-{r}" / "demonstrations.jsonl").read_text().splitlines()]
        assert demos and all({"prompt", "completion", "score"} <= set(d) for d in demos)
    round1 = json.loads((out / "round-1" / "sft" / "card.json").read_text())
    (parent,) = json.loads((out / "round-2" / "sft" / "card.json").read_text())["parents"]
    assert parent == {"role": "model", "path": str(out / "round-1" / "sft"), "id": round1["id"]}
    assert (out / "final" / "config.json").exists()
    assert [m["step"] for m in read_metrics(out)] == [1, 2]


@pytest.mark.parametrize("content", ["{cut short", "[]", None])
def test_a_finished_rounds_figures_that_cannot_be_read_are_named(tmp_path, content):
    from rlhfkit.train.rejection import _round_record

    path = tmp_path / "round-1" / "round.json"
    path.parent.mkdir()
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="round-1/round.json: .*move the round's folder aside"):
        _round_record(path)
