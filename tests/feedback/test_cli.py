"""The `annotate` commands, end to end on files: users, load, generate (tiny model), score, export."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlhfkit.data import read_records
from rlhfkit.feedback.cli import app

runner = CliRunner()
WORDS = ["<unk>", "<pad>", "<eos>", "hello", "world", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "why", "sky"]


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def tiny_model_folders(tmp_path):
    """A random 2-layer Llama (hidden 32) with a word-level tokenizer: a causal LM and two reward
    models (sequence classifiers) that form an ensemble."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=1,
        eos_token_id=2,
        bos_token_id=None,
        num_labels=1,
    )
    torch.manual_seed(0)
    lm = tmp_path / "lm"
    LlamaForCausalLM(config).save_pretrained(lm)
    tokenizer.save_pretrained(lm)
    for member in ("m0", "m1"):
        LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm" / member)
        tokenizer.save_pretrained(tmp_path / "rm" / member)
    return lm, tmp_path / "rm"


def test_users_load_and_export(tmp_path):
    db = tmp_path / "a.db"
    code, out = run("user", "create", "boss", "--role", "admin", "--password", "long-password", "--db", db)
    assert code == 0 and json.loads(out)["invite_token"] is None
    code, out = run("user", "create", "newbie", "--db", db)
    assert code == 0 and len(json.loads(out)["invite_token"]) > 30
    code, out = run("user", "create", "newbie", "--db", db)
    assert code == 2 and "already taken" in out
    code, out = run("user", "list", "--db", db)
    assert "boss\tadmin\tpassword" in out and "newbie\tannotator\tinvite only" in out
    code, out = run("user", "invite", "ghost", "--db", db)
    assert code == 2 and "no such user" in out

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        '{"id": "t1", "prompt": "hi", "responses": ["a", "b"]}\n'
        '{"id": "t2", "prompt": "rank", "responses": ["a", "b", "c"]}\n'
    )
    assert run("load", tasks, "--db", db)[1].startswith("loaded 2 tasks")
    assert "0 tasks" in run("load", tasks, "--db", db)[1]  # same ids: nothing added twice
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "responses": ["only one"]}\n')
    code, out = run("load", bad, "--db", db)
    assert code == 2 and "bad.jsonl:1: field 'responses'" in out
    bad.write_bytes(b'{"prompt": "x", "responses": ["a", "b"]}\n{"prompt": "caf\xe9"}\n')  # Latin-1, not UTF-8
    code, out = run("load", bad, "--db", db)
    assert code == 2 and "bad.jsonl:2: not UTF-8 text (byte 0xe9 at column 16)" in out
    bad.write_text("[" * 100_000 + "\n")
    code, out = run("load", bad, "--db", db)
    assert code == 2 and "bad.jsonl:1: malformed JSON (nested too deeply)" in out

    from sqlalchemy import select

    from rlhfkit.feedback.db import Store
    from rlhfkit.feedback.models import User
    from tests.feedback.helpers import label

    store = Store(str(db))
    with store.read() as s:
        boss = s.scalar(select(User).where(User.username == "boss"))
    label(store, boss, 1, {"choice": 1})
    label(store, boss, 2, {"ranking": [1, 2, 0]})
    out_file = tmp_path / "out" / "comparisons.jsonl"
    code, out = run("export", "--db", db, "--kind", "comparison", "--out", out_file)
    assert code == 0 and "wrote 4 comparison records" in out  # 1 pair + 3 from the ranking
    records, _ = read_records(out_file, "comparison")
    assert records[0].chosen == "b" and records[0].annotator == "boss"
    code, out = run("export", "--db", db, "--kind", "ranking", "--out", tmp_path / "ds", "--format", "datasets")
    assert code == 0 and read_records(tmp_path / "ds", "ranking")[0][0].ranking == [1, 2, 0]
    code, out = run("export", "--db", db, "--kind", "rating", "--out", tmp_path / "r.jsonl")
    assert code == 2 and "nothing to export" in out


@pytest.mark.slow
def test_generate_then_score_with_a_reward_model_ensemble(tmp_path):
    lm, rm = tiny_model_folders(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello world\nwhy the sky\n")
    tasks = tmp_path / "tasks.jsonl"
    code, out = run("generate", "--model", lm, "--prompts", prompts, "--out", tasks, "--k", 3, "--max-new-tokens", 6)
    assert code == 0, out
    rows = [json.loads(line) for line in tasks.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["hello world", "why the sky"]
    assert all(
        r["kind"] == "ranking" and len(r["responses"]) == 3 and all(x.strip() for x in r["responses"]) for r in rows
    )
    assert all(set(" ".join(r["responses"]).split()) <= set(WORDS) for r in rows)

    db = tmp_path / "a.db"
    code, out = run("load", tasks, "--db", db, "--scorer", f"{rm}/m0,{rm}/m1")  # an ensemble of two classifiers
    assert code == 0, out
    from sqlalchemy import select

    from rlhfkit.feedback.db import Store
    from rlhfkit.feedback.models import Task

    with Store(str(db)).read() as s:
        stored = list(s.scalars(select(Task)))
    for task in stored:
        assert len(task.scores) == 2 and all(len(m) == 3 for m in task.scores)  # 2 members x K
        assert 0 <= task.uncertainty <= 1 and task.disagreement > 0  # random members disagree
    code, out = run("score", "--db", db, "--scorer", "tests.feedback.test_active:constant_scorer")
    assert code == 0 and "scored 2 tasks" in out
    with Store(str(db)).read() as s:
        assert all(t.disagreement == 0 and len(t.scores) == 1 for t in s.scalars(select(Task)))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("p.jsonl", b'{"prompt": "a"}\n{"prompt": \n', "p.jsonl:2: malformed JSON (Expecting value at column 12)"),
        ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "\xff"}\n', "p.jsonl:2: not UTF-8 text (byte 0xff at column 13)"),
        ("p.txt", b"a prompt\n\xfe\n", "p.txt:2: not UTF-8 text (byte 0xfe at column 1)"),
        ("p.jsonl", b'{"text": "a"}\n', "p.jsonl:1: field 'prompt': must be a non-empty string"),
    ],
)
def test_generate_names_the_bad_line_of_a_prompts_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    code, out = run("generate", "--model", "tiny", "--prompts", tmp_path / name, "--out", tmp_path / "t.jsonl")
    assert code == 2 and message in out and not (tmp_path / "t.jsonl").exists()


def test_a_db_that_is_not_a_usable_database_is_one_line_naming_it(tmp_path):
    """A folder, a text file, another application's SQLite file, a server that refuses (its password not shown)."""
    import sqlite3

    from rlhfkit.registry.cli import app as registry_app

    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.db").write_text("not a database\n")
    with sqlite3.connect(tmp_path / "other.db") as other:
        other.execute("CREATE TABLE users (x)")
    cases = {
        str(tmp_path / "folder"): "unable to open database file",
        str(tmp_path / "notes.db"): "file is not a database",
        str(tmp_path / "other.db"): "table users already exists",
        "postgresql://u:hunter2@127.0.0.1:1/x": "127.0.0.1:1/x: cannot use it",
    }
    for db, reason in cases.items():
        for result in (
            runner.invoke(app, ["user", "list", "--db", db]),
            runner.invoke(registry_app, ["list", "--db", db]),
        ):
            assert result.exit_code in (1, 2) and not isinstance(result.exception, Exception)  # an exit, no crash
            assert "cannot use it as rlhfkit's database" in result.output and reason in result.output, result.output
            assert "hunter2" not in result.output and "Traceback" not in result.output
