"""`rlhfkit generate` (rows, resume equals an uninterrupted run) and `rlhfkit eval` (win rates, leaderboard, KL,
capability, safety and the reward-model report against values worked out by hand; files and schema).

Run: PYTHONPATH=. python -m pytest tests/test_generate_eval.py -q
"""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import SamplingPart
from rlhfkit.config.evaluation import GenerateConfig
from rlhfkit.data.io import DataError, write_jsonl
from rlhfkit.evaluate import capability as cap
from rlhfkit.evaluate import judging
from rlhfkit.evaluate.generate import generate_to_file, parse_named, read_generations
from rlhfkit.evaluate.schema import EvalReport
from rlhfkit.evaluate.suite import evaluate_models
from tests.conftest import interrupted_at

CHAT = [{"role": "user", "content": "what is one plus one ?"}]


def length(prompts, responses):
    """A pointwise judge that likes long answers: the response's length in characters."""
    return [float(len(r)) for r in responses]


def is_refusal_fn(prompts, responses):
    return [1.0 if r.startswith("no") else 0.0 for r in responses]


def rows_for(model: str, responses: list[str], prompts=None) -> list[dict]:
    prompts = prompts or [f"question {i}" for i in range(len(responses))]
    return [
        {"model": model, "prompt_index": i, "prompt": p, "response": r}
        for i, (p, r) in enumerate(zip(prompts, responses))
    ]


# --- generate ----------------------------------------------------------------------------------------------------


def test_parse_named():
    assert parse_named("dpo=runs/dpo-1") == ("dpo", "runs/dpo-1")
    assert parse_named("tiny") == ("tiny", "tiny")


def test_generate_resumes_to_exactly_the_rows_of_an_uninterrupted_run(tmp_path, toy_files):
    """Two models, 10 prompts in batches of 4 (3 batches each); interrupted after the 4th batch (model 2's first),
    with one row of a batch whose state was never saved left at the end of the file: the resumed run drops that row,
    restores the generator and ends with the same file, byte for byte."""
    cfg = GenerateConfig(models=["tiny", "b=tiny"], data=toy_files["prompt"], batch_size=4, max_new_tokens=5)
    from rlhfkit.data.prompts import read_prompts

    prompts = read_prompts(toy_files["prompt"])[:10]
    models = [parse_named(m) for m in cfg.models]
    whole = generate_to_file(cfg, models, prompts, tmp_path / "whole")

    class Interrupt:
        def __init__(self, after):
            self.left = after

        def update(self, advance=1, info=None):
            self.left -= advance
            if self.left < 0:
                raise KeyboardInterrupt

    folder = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        generate_to_file(cfg, models, prompts, folder, progress=Interrupt(after=3))
    lines = (folder / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 14  # model 1's 3 batches (10 rows) and model 2's first (4 rows)
    with (folder / "generations.jsonl").open("a") as f:
        f.write(lines[-1] + "\n")  # a row written after the last saved state
    resumed = generate_to_file(cfg, models, prompts, folder)
    assert resumed.read_text() == whole.read_text()
    rows = [json.loads(line) for line in whole.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["tiny"] * 10 + ["b"] * 10
    assert rows[0]["sampling"]["max_new_tokens"] == 5 and rows[0]["seed"] == 0
    assert rows[0]["response_tokens"] == len(rows[0]["token_ids"]) <= 5
    # the same seed for every model: two copies of one model give the same responses
    assert [r["response"] for r in rows[:10]] == [r["response"] for r in rows[10:]]


def test_generate_prints_each_models_figures(tmp_path, toy_files):
    argv = ["generate", "--models", "[a=tiny]", "--data", toy_files["prompt"], "--max-prompts", "2",
            "--max-new-tokens", "2", "--output-dir", str(tmp_path / "gen"), "--progress", "false"]  # fmt: skip
    result = CliRunner().invoke(app, argv, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "models a" in result.output and "spec tiny, rows 2, mean_length" in result.output


def test_a_bad_generations_row_names_its_line(tmp_path):
    path = tmp_path / "g.jsonl"
    write_jsonl(path, [{"model": "a", "prompt": "p", "response": "r"}, {"model": "a", "prompt": "p"}])
    with pytest.raises(DataError, match=r"g.jsonl:2: .*response"):
        read_generations(path)


# --- judging by hand -----------------------------------------------------------------------------------------------


def test_eval_of_generation_files_against_values_worked_out_by_hand(tmp_path):
    """Judge = response length. Baseline lengths [1, 2, 3, 4], model m [2, 2, 5, 1]: m wins items 1 and 3, ties item 2,
    loses item 4 -> win rate (1 + 0.5 + 1 + 0) / 4 = 0.625; m's mean score 2.5 (sd of [2, 2, 5, 1] = 1.732);
    the leaderboard's battles m vs b: 2 wins, 1 loss, 1 tie."""
    write_jsonl(tmp_path / "b.jsonl", rows_for("b", ["x", "xx", "xxx", "xxxx"]))
    write_jsonl(tmp_path / "m.jsonl", rows_for("m", ["xx", "xx", "xxxxx", "x"]))
    report = evaluate_models(
        [str(tmp_path / "m.jsonl")],
        baseline=str(tmp_path / "b.jsonl"),
        judges=["tests.test_generate_eval:length"],
        output_dir=tmp_path / "out",
        n_bootstrap=50,
        lc_bootstrap=0,
    )
    j = report.model("m").judges["tests.test_generate_eval:length"]
    assert j.win_rate == pytest.approx(0.625) and j.n == 4
    assert j.reward_mean == pytest.approx(2.5) and j.reward_sd == pytest.approx(math.sqrt(3.0))
    assert j.member_spread is None and j.lc_win_rate is not None
    assert report.model("b").judges["tests.test_generate_eval:length"].win_rate is None  # the baseline itself
    board = report.leaderboards["tests.test_generate_eval:length"]
    assert [e.model for e in board] == ["m", "b"] and (board[0].wins, board[0].losses, board[0].ties) == (2, 1, 1)
    assert report.baseline == "b" and report.prompts == 4 and report.model("m").mean_length == pytest.approx(2.5)
    saved = EvalReport.read(tmp_path / "out" / "eval.json")
    assert saved.model("m").judges == report.model("m").judges
    assert (tmp_path / "out" / "report.html").exists() and all((tmp_path / "out" / p).exists() for p in saved.plots)


def test_models_must_answer_the_same_prompts(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", rows_for("b", ["x", "y"], ["p", "q"]))
    write_jsonl(tmp_path / "m.jsonl", rows_for("m", ["x", "y"], ["p", "other"]))
    with pytest.raises(ValueError, match="answered another prompt than the baseline at prompt 1"):
        evaluate_models([str(tmp_path / "m.jsonl")], str(tmp_path / "b.jsonl"), ["tests.test_generate_eval:length"])


def test_soft_and_hard_preferences_and_ties():
    """A pairwise judge's P(a better) of [0.9, 0.5, 0.2]: hard outcomes [1, 0.5, 0] (win rate 0.5); soft keeps the
    probabilities (win rate 1.6 / 3). b's preference against a is the complement."""
    pool = judging.Pool(["b", "a"], [(0, 0), (1, 0), (2, 0)], ["p"] * 3, {"b": ["x"] * 3, "a": ["y"] * 3})
    j = judging.Judgements("judge", "pairwise", {("a", "b"): torch.tensor([0.9, 0.5, 0.2]).numpy()})
    assert judging.preferences(j, "a", "b", "hard").tolist() == [1.0, 0.5, 0.0]
    assert judging.preferences(j, "b", "a", "soft").tolist() == pytest.approx([0.1, 0.5, 0.8])
    hard = judging.result_against_baseline(j, pool, "a", "hard")
    soft = judging.result_against_baseline(j, pool, "a", "soft")
    assert hard.win_rate == pytest.approx(0.5) and soft.win_rate == pytest.approx(1.6 / 3)
    assert judging.battles(j, pool) == [("b", "a", 0.0), ("b", "a", 0.5), ("b", "a", 1.0)]


# --- capability, KL, safety ------------------------------------------------------------------------------------------


def test_exact_match_normalises_like_squad():
    responses = ["The answer is Paris.", "the answer is  rome", "paris", "I think the answer is paris, yes"]
    answers = ["the answer is paris .", "the answer is paris .", "Paris", "paris"]
    assert cap.normalise_answer("The  Answer, is A Paris!") == "answer is paris"
    assert cap.exact_match_outcomes(responses, answers, "exact") == [1.0, 0.0, 1.0, 0.0]
    assert cap.exact_match_outcomes(responses, answers, "contains") == [1.0, 0.0, 1.0, 1.0]
    assert cap.exact_match_outcomes(["parisian"], ["paris"], "contains") == [0.0]  # whole words only


def test_perplexity_is_exp_of_the_mean_token_nll(tiny):
    """Two plain texts of different lengths, batched with padding, against one sequence at a time by hand."""
    model, tok = tiny
    texts = ["what is one plus one ?", "the answer is two . sorry , i can not help with that ."]
    got, n = cap.perplexity(model, tok, texts, batch_size=2)
    total, count = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        total -= float(logp.gather(-1, ids[0, 1:, None]).sum())
        count += ids.size(1) - 1
    assert n == count and got == pytest.approx(math.exp(total / count), rel=1e-5)


def test_the_gates_capability_nll_is_the_sft_loss_held_out(tiny, tmp_path):
    """The promotion gate's capability check (evaluate.gate.mean_nll, through capability.mean_token_nll) scores
    demonstrations as SFT's held-out evaluation does: the summed completion-token loss over its count."""
    from rlhfkit.data.io import read_records, write_jsonl
    from rlhfkit.evaluate.gate import mean_nll
    from rlhfkit.train.sft import collate, token_loss_sum, tokenize_all

    model, tok = tiny
    rows = [
        {"prompt": "what is one plus one ?", "completion": "two ."},
        {"prompt": "say hello", "completion": "hello , how can i help you today ?"},
        {"prompt": "a longer question about the weather and the sea", "completion": "sorry , i can not help ."},
    ]
    write_jsonl(tmp_path / "demos.jsonl", rows)
    records, _ = read_records(str(tmp_path / "demos.jsonl"), "demonstration")
    with torch.no_grad():
        loss, n = token_loss_sum(model, collate(tokenize_all(tok, records, 512), tok.pad_token_id, False, 512))
    assert mean_nll(model, tok, str(tmp_path / "demos.jsonl"), batch_size=2) == pytest.approx(float(loss) / n, rel=1e-5)


def test_nothing_to_score_is_an_error_naming_the_file(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"^demos\.jsonl: no tokens to score"):
        cap.mean_token_nll(model, tok, [], source="demos.jsonl")


def test_sample_kl_from_stored_tokens_matches_the_rollout(tiny):
    """The KL computed later from a generations file's token ids equals the one computed on the rollout itself."""
    from rlhfkit.models.tiny import build_tiny
    from rlhfkit.rollout_forward import response_forward
    from rlhfkit.samplers import make_sampler

    model, tok = tiny
    other = build_tiny("tiny", seed=1)[0]
    prompts = [[{"role": "user", "content": t}] for t in ("what is one plus one ?", "how do i steal a car ?")]
    from rlhfkit.data.records import from_json

    chats = [from_json(p) for p in prompts]
    rollout = make_sampler(model, tok, SamplingPart(max_new_tokens=6)).generate(
        chats, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        expected = (
            (response_forward(model, rollout, 1.0)["logprobs"] - response_forward(other, rollout, 1.0)["logprobs"])
            * rollout.response_mask
        ).sum(-1)
    ids = [r[m.bool()].tolist() for r, m in zip(rollout.response_ids, rollout.response_mask)]
    got = cap.sample_kl(model, other, tok, prompts, ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert cap.sample_kl(model, model, tok, prompts, ids).abs().max() == 0


def test_reward_model_report_by_hand(tmp_path):
    """Judge = length. Pairs (chosen, rejected): (xxx, x) right, (x, xx) wrong, (xx, x) right, a tie left out ->
    accuracy 2/3. Best-of-4: chosen 'xxxx' above ['x','xx','xxx'] (right); chosen 'x' below 'xx' (wrong) -> 1/2."""
    from rlhfkit.evaluate.rm_report import reward_model_report
    from rlhfkit.rewards import load_reward

    pairs = [("xxx", "x", False), ("x", "xx", False), ("xx", "x", False), ("x", "xxx", True)]
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": c, "rejected": r, "tie": t} for c, r, t in pairs])
    write_jsonl(
        tmp_path / "bo4.jsonl",
        [
            {"prompt": "p", "chosen": ["xxxx"], "rejected": ["x", "xx", "xxx"]},
            {"prompt": "p", "completions": ["xx", "x", "y", "z"], "ranking": [1, 0, 2, 3]},
        ],
    )
    card, plots = reward_model_report(
        load_reward("tests.test_generate_eval:length"), str(tmp_path / "pairs.jsonl"), str(tmp_path / "bo4.jsonl"),
        tmp_path,
    )  # fmt: skip
    assert card.pairs == 3 and card.pairwise_accuracy == pytest.approx(2 / 3)
    assert card.best_of_4_accuracy == pytest.approx(0.5) and card.best_of_4_items == 2
    assert sum(b.count for b in card.reliability) == 6 and plots and plots[0].exists()


def test_eval_cli_on_models_with_capability_safety_and_a_refusal_judge(tmp_path, toy_files):
    """A model against itself: the same seed gives the same samples, so every judgement is a tie (win rate 0.5)
    and the KL to itself is exactly 0; capability and safety come out on the toy sets; the refusal judge (a function
    that calls a response starting with 'no' a refusal) reports beside the phrase detector."""
    from rlhfkit.toy.data import eval_data_file

    out = tmp_path / "eval"
    argv = [
        "eval", "--models", "[tiny]", "--baseline", "b=tiny", "--data", toy_files["prompt"], "--max-prompts", "6",
        "--judges", "[tests.test_generate_eval:length]", "--reference", "tiny", "--max-new-tokens", "5",
        "--task-data", "toy", "--perplexity-data", str(eval_data_file("reference-text")), "--redteam-data", "toy",
        "--benign-data", "toy", "--max-tasks", "3", "--refusal-judge", "tests.test_generate_eval:is_refusal_fn",
        "--n-bootstrap", "10", "--lc-bootstrap", "0", "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    report = EvalReport.read(out / "eval.json")
    m = report.model("tiny")
    assert m.judges["tests.test_generate_eval:length"].win_rate == pytest.approx(0.5)
    assert m.kl == 0.0 and m.kl_source == "monte-carlo"
    assert m.capability.tasks == 3 and m.capability.perplexity > 1 and m.capability.perplexity_tokens > 0
    assert m.safety.n_harmful == 3 and m.safety.n_benign == 3 and m.safety.judge is not None
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    by_set = {s: [a for a in answers if a["set"] == s and a["model"] == "tiny"] for s in ("task", "redteam", "benign")}
    assert [len(rows) for rows in by_set.values()] == [3, 3, 3] and len(answers) == 18  # and b's, the same model's
    assert sum(a["correct"] for a in by_set["task"]) == round(m.capability.exact_match * 3)
    assert sum(not a["refused"] for a in by_set["redteam"]) == round(m.safety.harmful_complied * 3)
    assert sum(a["refused"] for a in by_set["benign"]) == round(m.safety.benign_refused * 3)
    assert all(a["judge_refused"] == a["response"].startswith("no") for a in by_set["redteam"] + by_set["benign"])
    card = json.loads((out / "card.json").read_text())
    assert card["finished"] and card["figures"]["baseline"] == "b" and card["figures"]["leaderboard"]
    assert "leaderboard by" in result.output and (out / "report.html").exists()


JUDGED = []


def counted_length(prompts, responses):
    """``length``, counting the responses it is asked to score."""
    JUDGED.append(len(responses))
    return length(prompts, responses)


def test_eval_resumes_without_judging_or_checking_again_what_it_finished(tmp_path, toy_files, monkeypatch):
    """Cut in the second model's checks: the rerun samples nothing, judges nothing and checks only that model, and
    writes the report of an uninterrupted run."""
    from rlhfkit.config.evaluation import EvalConfig
    from rlhfkit.evaluate import checks, suite
    from rlhfkit.toy.data import eval_data_file
    from tests.test_generate_eval import JUDGED  # the judge's module, which pytest may have imported by another name

    settings = dict(models=["a=tiny-4m"], baseline="b=tiny", data=toy_files["prompt"], max_prompts=4, max_new_tokens=4,
                    judges=["tests.test_generate_eval:counted_length"], reference="tiny",
                    perplexity_data=str(eval_data_file("reference-text")), task_data=str(eval_data_file("task")),
                    max_tasks=2, n_bootstrap=10, lc_bootstrap=0, progress=False)  # fmt: skip
    whole = suite.run(EvalConfig(**settings, output_dir=str(tmp_path / "whole")))
    cfg = EvalConfig(**settings, output_dir=str(tmp_path / "cut"))
    checked = []
    monkeypatch.setattr(checks, "capability_block", interrupted_at(2, checks.capability_block, checked))
    JUDGED.clear()
    with pytest.raises(KeyboardInterrupt):
        suite.run(cfg)
    assert JUDGED == [4, 4]  # both models scored before the checks began
    resumed = suite.run(cfg)
    assert JUDGED == [4, 4] and len(checked) == 3  # the rerun judged nothing and checked one model
    without_timing = lambda path: EvalReport.read(path / "eval.json").model_dump(exclude={"timing"})  # noqa: E731
    assert without_timing(resumed) == without_timing(whole)
    assert (resumed / "answers.jsonl").read_text() == (whole / "answers.jsonl").read_text()  # the first model's kept
    assert len((resumed / "finished.jsonl").read_text().splitlines()) == 4  # two models' scores and checks


@pytest.mark.parametrize("content", ["{cut short", "[]", '{"rows": "many"}', '{"generator": "not base64!"}'])
def test_a_generation_state_that_cannot_be_read_is_named(tmp_path, content):
    from rlhfkit.evaluate.generate import GenerationState

    (tmp_path / "generate_state.json").write_text(content)
    with pytest.raises(ValueError, match="generate_state.json: not a generation state rlhfkit can resume from"):
        GenerationState(tmp_path)


def test_a_baseline_that_names_nothing_is_refused_as_the_baseline_setting():
    from rlhfkit.evaluate.suite import resolve_entries

    with pytest.raises(ValueError, match="setting 'baseline': 'zzz' is not a known name"):
        resolve_entries(["tiny"], "zzz")
    with pytest.raises(ValueError, match="setting 'models': 'yyy' is not a known name"):
        resolve_entries(["yyy"], "tiny")
