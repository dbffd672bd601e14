"""The contracts between stages: run cards and run folders, model and reward specs (the command line's start-up
and the package's layering: test_layers.py)."""

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import rlhfkit
from rlhfkit.cli import app
from rlhfkit.config import stages
from rlhfkit.runs import RunCard, RunFolder
from rlhfkit.specs import SpecError, parse_model_spec, parse_reward_spec
from rlhfkit.toy.data import data_file
from rlhfkit.train.sft import SFTConfig, run

PACKAGE = Path(rlhfkit.__file__).parent
REPO = PACKAGE.parent


def sft_cfg(tmp_path, name="sft", **kw):
    base = dict(
        output_dir=str(tmp_path / name),
        data=str(data_file("demonstration")),
        max_steps=2,
        batch_size=4,
        progress=False,
        report_to=["jsonl"],
    )
    return SFTConfig(**{**base, **kw})


# --- run cards and folders ----------------------------------------------------------------------------------


def test_card_names_parents_by_id_and_path_with_data_hashes_settings_hash_and_figures(tmp_path):
    first = run(sft_cfg(tmp_path, "first"))
    second = run(sft_cfg(tmp_path, "second", model=str(first)))
    card, parent = RunCard.read(second), RunCard.read(first)
    assert card.stage == "sft" and card.finished and card.finished_at and card.id.startswith("sft-")
    assert card.id != parent.id
    assert [p.model_dump() for p in card.parents] == [{"role": "model", "path": str(first), "id": parent.id}]
    assert card.data["train"].sha256_16 and len(card.data["train"].sha256_16) == 16
    assert card.settings_hash == sft_cfg(tmp_path, "second", model=str(first)).settings_hash()
    assert card.settings_hash != parent.settings_hash
    assert set(card.figures) == {"steps", "tokens_seen", "eval_loss", "eval_perplexity"}  # the SFT schema
    assert card.versions["torch"] == torch.__version__
    assert RunFolder(second).is_finished() and not RunFolder(tmp_path / "nothing").is_finished()


def test_figures_follow_each_stage_schema():
    with pytest.raises(ValueError, match="eval_los"):
        stages.SFTFigures(steps=1, tokens_seen=2, eval_los=0.1)
    for cls in (stages.SFTConfig, stages.RewardConfig, stages.DPOConfig, stages.KTOConfig, stages.PPOConfig):
        assert "steps" in cls.figures.model_fields, cls


def test_cards_of_the_first_version_still_load(tmp_path):
    """A card written before ids and the finished mark: read as finished, parents as paths."""
    old = tmp_path / "old"
    (old / "final").mkdir(parents=True)
    (old / "card.json").write_text(
        json.dumps(
            {
                "stage": "sft",
                "created": "2026-11-01T10:00:00+0000",
                "parents": ["tiny"],
                "data": {"train": {"path": "d.jsonl", "sha256_16": "ab" * 8}},
                "git_commit": None,
                "versions": {"rlhfkit": "0.1.0", "torch": "2.13.0", "transformers": "5.0"},
                "figures": {"eval/loss": 1.5, "steps": 3},
            }
        )
    )
    card = RunCard.read(old)
    assert card.finished and card.stage == "sft" and card.id.startswith("sft-")
    assert card.parents[0].path == "tiny" and card.figures["eval/loss"] == 1.5
    assert RunFolder(old).is_finished()


@pytest.mark.parametrize(
    "config_class, changed",
    [
        (stages.SFTConfig, {"lr": 0.002}),
        (stages.RewardConfig, {"tie_nu": 2.0}),
        (stages.DPOConfig, {"beta": 0.5}),
        (stages.DPOConfig, {"ties": "drop"}),
        (stages.KTOConfig, {"undesirable_weight": 2.0}),
        (stages.RewardConfig, {"annotator_conditioned": True}),
        (stages.PPOConfig, {"kl_coef": 0.2}),
        (stages.BestOfNConfig, {"n_max": 4}),
        (stages.RejectionConfig, {"k": 2}),
    ],
)
def test_every_stage_refuses_to_resume_with_other_settings(tmp_path, config_class, changed):
    """Every trainer opens its folder through RunFolder.open: a folder started with other settings is refused,
    naming each changed setting; run-only settings (logging, checkpoints, progress) may change."""
    given = {"data": "d.jsonl", "output_dir": str(tmp_path / "run")}
    if "reward" in config_class.model_fields:
        given["reward"] = "tests.test_contracts:no_reward"
    started = config_class(**given)
    folder = RunFolder.open(config_class.stage, started)
    folder.start()
    assert not folder.is_finished() and RunFolder.open(config_class.stage, started)
    assert RunFolder.open(config_class.stage, started.model_copy(update={"progress": False, "log_every": 7}))
    ((name, value),) = changed.items()
    before = started.model_dump()[name]
    with pytest.raises(ValueError, match=rf"other settings \({name}: {before!r} -> {value!r}\)"):
        RunFolder.open(config_class.stage, started.model_copy(update=changed))


def no_reward(prompts, responses):
    return [0.0] * len(responses)


def test_a_resumed_run_keeps_its_id_and_a_finished_one_is_never_rewritten(tmp_path):
    cfg = sft_cfg(tmp_path)
    folder = RunFolder.open("sft", cfg)
    folder.start()
    first_id = folder.card().id
    path = run(cfg)  # resumes the unfinished folder
    assert RunCard.read(path).id == first_id
    with pytest.raises(FileExistsError, match="already holds a finished sft run"):
        run(cfg)


def test_a_run_folder_or_checkpoint_that_cannot_be_read_is_named_and_left_as_it_is(tmp_path):
    cfg = sft_cfg(tmp_path, max_steps=2, save_every=1)
    path = run(cfg)
    card = json.loads((path / "card.json").read_text())
    (path / "card.json").write_text(json.dumps({**card, "finished": False}))  # as if stopped after its last save
    (path / "checkpoints" / "step-2-copy").mkdir()  # a user's copy: not a checkpoint
    state = path / "checkpoints" / "step-2" / "trainer_state.json"
    state.write_text("{cut short")
    saved = sorted((p, p.read_bytes()) for p in (path / "checkpoints").rglob("*") if p.is_file())
    with pytest.raises(ValueError, match=r"step-2: this checkpoint cannot be read \(JSONDecodeError: .*move it aside"):
        run(cfg)
    assert sorted((p, p.read_bytes()) for p in (path / "checkpoints").rglob("*") if p.is_file()) == saved
    (path / "card.json").write_text("[]")
    with pytest.raises(ValueError, match=r"card.json: not a run card rlhfkit can read"):
        RunCard.read(path)


def test_a_failed_start_leaves_no_folder(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p"}\n')
    for argv in (["--data", str(bad)], ["--data", "toy", "--model", str(tmp_path / "missing")]):
        out = tmp_path / "never"
        result = CliRunner().invoke(app, ["sft", "--output-dir", str(out), *argv])
        assert result.exit_code == 1 and result.output.startswith("error:"), result.output
        assert not out.exists()


def test_a_bad_model_name_is_one_line_with_the_choices_and_no_hub_retries(tmp_path):
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["sft", "--data", "toy", "--model", "tiyn", "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0, result.output
    assert (
        "setting 'model': 'tiyn' (did you mean 'tiny'?)" in result.output and "smollm2-135m-instruct" in result.output
    )
    result = CliRunner().invoke(app, ["sft", "--data", "toy", "--model", "someone/no-such-model"])
    assert result.exit_code == 1 and "not in the Hugging Face cache and the Hub is unreachable" in result.output
    assert time.perf_counter() - start < 10  # no retries against an unreachable hub


# --- model and reward specs ----------------------------------------------------------------------------------


def test_model_specs(tmp_path):
    assert parse_model_spec("tiny").kind == "tiny" and parse_model_spec("smollm2-135m-instruct").kind == "known"
    finished = run(sft_cfg(tmp_path))
    spec = parse_model_spec(str(finished))
    assert spec.kind == "run" and spec.model_path == str(finished / "final")
    assert parse_model_spec(str(finished / "final")).kind == "folder"
    unfinished = tmp_path / "unfinished"
    RunFolder.open("sft", sft_cfg(tmp_path, "unfinished")).start()
    with pytest.raises(SpecError, match="run folder without a final model"):
        parse_model_spec(str(unfinished))
    with pytest.raises(SpecError, match="no such GGUF file"):
        parse_model_spec(str(tmp_path / "m.gguf"))


def test_reward_specs(tmp_path):
    from rlhfkit.models.reward import build_reward_model, save_reward_model

    rm_run = tmp_path / "rm"
    save_reward_model(build_reward_model("tiny"), rm_run / "final")
    (rm_run / "card.json").write_text("{}")
    for text in (str(rm_run), f"rm:{rm_run}", str(rm_run / "final")):
        spec = parse_reward_spec(text)
        assert spec.kind == "reward-model" and spec.path == rm_run / "final", text
    assert parse_reward_spec("mypkg.rewards:score").kind == "function"
    assert parse_reward_spec("http://127.0.0.1:9/score").kind == "http"
    ens = parse_reward_spec(f"{rm_run}, tests.test_contracts:no_reward")
    assert ens.kind == "ensemble" and [m.kind for m in ens.members] == ["reward-model", "function"]
    sft_run = run(sft_cfg(tmp_path))
    with pytest.raises(SpecError, match="run folder without a reward model"):
        parse_reward_spec(str(sft_run))
    with pytest.raises(SpecError, match="holds a LlamaForCausalLM, not a reward model"):
        parse_reward_spec(str(sft_run / "final"))
    with pytest.raises(SpecError, match="setting 'reward': 'nonsense' is not a reward"):
        parse_reward_spec("nonsense")


def test_every_reward_kind_scores_and_an_ensemble_gives_mean_and_spread(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhfkit.models.tiny import build_tokenizer
    from rlhfkit.rewards import load_reward

    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_labels=1, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "cls")
    tok.save_pretrained(tmp_path / "cls")
    prompts, responses = ["what is one plus one ?"] * 3, ["two .", "paris", "the answer is two ."]
    classifier = load_reward(str(tmp_path / "cls"))(prompts, responses)
    assert classifier.shape == (3,) and classifier.std() > 0
    function = load_reward("tests.test_contracts:length_reward")
    ens = load_reward(f"{tmp_path / 'cls'},tests.test_contracts:length_reward")
    members = ens.members(prompts, responses)  # (2, 3)
    torch.testing.assert_close(members, torch.stack([classifier, function(prompts, responses)]))
    torch.testing.assert_close(ens(prompts, responses), members.mean(0))


def length_reward(prompts, responses):
    return [float(len(r)) for r in responses]


def words_reward(prompts, responses):
    return list(responses)  # a mistake: the texts, not scores


def none_reward(prompts, responses):
    return None  # a mistake: a function that forgot to return


def nan_reward(prompts, responses):
    return [float("nan")] * len(responses)


@pytest.mark.parametrize(
    "function, message",
    [
        ("words_reward", "returned list, not numbers, one per response"),
        ("none_reward", "returned NoneType, not numbers"),
        ("nan_reward", "returned a score that is NaN or infinite"),
    ],
)
def test_a_function_reward_that_returns_no_scores_is_named(function, message):
    from rlhfkit.rewards import load_reward

    with pytest.raises(ValueError, match=f"reward tests.test_contracts:{function} {message}"):
        load_reward(f"tests.test_contracts:{function}")(["p", "q"], ["a", "b"])


def test_the_app_scorer_gives_exactly_the_scores_of_rm_score(tmp_path):
    """One reward spec for every command: `annotate load --scorer X` stores, per task, the scores that
    `rlhfkit rm score --reward X` writes for the same texts (an ensemble: per member; its mean is `score`)."""
    from sqlalchemy import select

    from rlhfkit.data.io import write_jsonl
    from rlhfkit.feedback.db import Store
    from rlhfkit.feedback.models import Task
    from rlhfkit.models.reward import RewardEnsemble, build_reward_model, save_reward_model

    rm = RewardEnsemble([build_reward_model("tiny", seed=s) for s in (0, 1)])
    for seed, member in enumerate(rm.members):
        member.set_normalisation(torch.tensor([0.0, 1.0 + seed]))
    save_reward_model(rm, tmp_path / "rm" / "final")
    prompts = ["what is one plus one ?", "how do i steal a car ?"]
    responses = [["two .", "the answer is two .", "paris"], ["sorry , i cannot help .", "sure , here is how ."]]
    write_jsonl(tmp_path / "tasks.jsonl", [{"prompt": p, "responses": r} for p, r in zip(prompts, responses)])
    write_jsonl(tmp_path / "rows.jsonl", [{"prompt": p, "response": x} for p, r in zip(prompts, responses) for x in r])
    runner = CliRunner()
    db = tmp_path / "a.db"
    loaded = runner.invoke(app, ["annotate", "load", str(tmp_path / "tasks.jsonl"), "--db", str(db),
                                 "--scorer", str(tmp_path / "rm")])  # fmt: skip
    assert loaded.exit_code == 0, loaded.output
    scored = runner.invoke(app, ["rm", "score", "--reward", str(tmp_path / "rm"), "--data", str(tmp_path / "rows.jsonl"),
                                 "--output", str(tmp_path / "scored.jsonl")])  # fmt: skip
    assert scored.exit_code == 0, scored.output
    rows = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    with Store(str(db)).read() as session:
        tasks = list(session.scalars(select(Task).order_by(Task.id)))
    app_scores = [s for t in tasks for s in torch.tensor(t.scores).mean(0).tolist()]  # member mean per response
    app_spread = [s for t in tasks for s in torch.tensor(t.scores).std(0, unbiased=False).tolist()]
    assert len(tasks) == 2 and all(len(t.scores) == 2 for t in tasks)  # two members each
    assert [r["score"] for r in rows] == pytest.approx(app_scores, abs=1e-6)
    assert [r["score_std"] for r in rows] == pytest.approx(app_spread, abs=1e-6)


def test_a_classifier_reward_reads_one_bos_and_no_more_tokens_than_it_has_positions(tmp_path):
    """A Llama-3-style tokenizer (its template writes BOS, and so does the tokenizer): the classifier read two BOS
    tokens. And a model of 64 positions was given up to 1024 tokens: a long input failed."""
    from tokenizers.processors import TemplateProcessing
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhfkit.models.tiny import build_tokenizer
    from rlhfkit.rewards import load_reward

    tok = build_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", pair=f"{tok.bos_token} $A $B", special_tokens=[(tok.bos_token, tok.bos_token_id)]
    )
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_labels=1, pad_token_id=tok.pad_token_id,
                         max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "cls")
    tok.save_pretrained(tmp_path / "cls")
    reward = load_reward(str(tmp_path / "cls"))
    seen = []
    reward.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    scores = reward(["what is one plus one ?"] * 2, ["two .", " two ." * 100])
    assert torch.isfinite(scores).all() and seen[0].shape[1] <= 64
    first = seen[0][0][seen[0][0] != tok.pad_token_id]
    assert first[0] == tok.bos_token_id and first[1] != tok.bos_token_id


def test_a_folders_data_hash_sees_its_files_names_and_where_each_ends(tmp_path):
    """Folder A holds x = "ab" and y = ""; folder B x = "a" and y = "b": the same bytes in the same order, and the
    same hash, as a renamed file kept its hash. A file's hash is its bytes' as before."""
    from rlhfkit.runs import file_hash

    for name, files in (("a", {"x": "ab", "y": ""}), ("b", {"x": "a", "y": "b"}), ("c", {"x": "ab", "z": ""})):
        (tmp_path / name).mkdir()
        for f, text in files.items():
            (tmp_path / name / f).write_text(text)
    hashes = {file_hash(tmp_path / n) for n in "abc"}
    assert len(hashes) == 3
    assert file_hash(tmp_path / "a" / "x") == hashlib.sha256(b"ab").hexdigest()[:16]
