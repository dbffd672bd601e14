"""Several projects in one database: the migration of an existing database, per-project queues and
exports, the project and user commands, the hub export and the leaderboard command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from typer.testing import CliRunner

from rlhfkit.feedback.cli import app
from rlhfkit.feedback.db import Store, migrate
from rlhfkit.feedback.export import build_records, label_rows
from rlhfkit.feedback.models import Base
from rlhfkit.registry.tables import metadata as production_metadata
from tests.feedback.conftest import database
from tests.feedback.helpers import label, new_store, project_id, serve, tasks, users

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_existing_database_migrates_with_its_labels(request, tmp_path, backend):
    """A database at revision 0001 (before projects) with a task, a flagged-free label and a rejected
    one: after the upgrade every task is in 'default', the labels are all there (SQLite rebuilds the
    tasks table; with foreign keys on, that would have cascade-deleted them), JSON-null flags are
    SQL NULL and n_labels no longer counts the rejected label."""
    store = Store(database(request, backend, tmp_path))
    migrate(store, "0001")
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, username, role, active, created_at) VALUES (1, 'u', 'annotator', true, '2024-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO users (id, username, role, active, created_at) VALUES (2, 'v', 'annotator', true, '2024-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO tasks (id, external_id, kind, prompt, responses, scale, is_gold, n_labels, created_at) "
                "VALUES (1, 't1', 'pairwise', 'p', '[\"a\", \"b\"]', 5, false, 2, '2024-01-01')"
            )
        )
        for lid, user, status in ((1, 1, None), (2, 2, "rejected")):
            conn.execute(
                text(
                    "INSERT INTO labels (id, task_id, annotator_id, idempotency_key, answer, flags, review_status, "
                    "created_at, updated_at) VALUES (:id, 1, :u, :k, '{\"choice\": 0}', 'null', :s, '2024-01-01', '2024-01-01')"
                ),
                {"id": lid, "u": user, "k": f"k{lid}", "s": status},
            )
    migrate(store)
    with store.engine.connect() as conn:
        assert conn.execute(
            text("SELECT p.name, t.external_id, t.n_labels FROM tasks t JOIN projects p ON p.id = t.project_id")
        ).all() == [("default", "t1", 1)]
        assert conn.execute(text("SELECT id, flags FROM labels ORDER BY id")).all() == [(1, None), (2, None)]
        # the migrations build exactly the models: the app's tables and the production tables (registry, serving)
        assert compare_metadata(MigrationContext.configure(conn), [Base.metadata, production_metadata]) == []
    migrate(store)  # a second run is a no-op
    store.dispose()


def test_projects_keep_their_own_tasks_queues_and_exports(tmp_path):
    store = new_store(tmp_path)
    with store.write() as db:
        from rlhfkit.feedback.projects import create_project

        create_project(db, "other", "Another project")
        db.commit()
    row = {"id": "same-id", "prompt": "p", "responses": ["a", "b"]}
    [first] = tasks(store, [row])
    [second] = tasks(store, [{**row, "prompt": "q"}], project="other")  # the same id, another project
    assert tasks(store, [row]) == []  # but not twice in one project
    [a] = users(store, "a")
    assert serve(store, a, project="other") == second
    label(store, a, second, {"choice": 1})
    assert serve(store, a, project="other") is None
    assert serve(store, a) == first  # the default project's queue is untouched
    with store.read() as db:
        other = build_records("comparison", label_rows(db, project_id(store, "other")))
        default = build_records("comparison", label_rows(db, project_id(store)))
    assert [(r["prompt"], r["project"], r["task_external_id"]) for r in other] == [("q", "other", "same-id")]
    assert default == []


def test_project_and_user_commands(tmp_path):
    db = tmp_path / "a.db"
    guide = tmp_path / "guide.md"
    guide.write_text("# Be kind\n\nPrefer the **helpful** answer.")
    code, out = run("project", "create", "sums", "--title", "Summaries", "--guidelines", guide, "--db", db)
    assert code == 0 and json.loads(out) == {"name": "sums", "title": "Summaries", "suggestions": False}
    assert run("project", "create", "sums", "--db", db) == (2, "error: project: that name is already taken\n")
    code, out = run("project", "create", "bad name!", "--db", db)
    assert code == 2 and "project: the name must be" in out
    code, out = run("project", "set", "sums", "--suggestions", "--db", db)
    assert code == 0 and json.loads(out)["suggestions"] is True
    tasks_file = tmp_path / "t.jsonl"
    tasks_file.write_text('{"id": 1, "prompt": "p", "responses": ["a", "b"]}\n')
    code, out = run("load", tasks_file, "--project", "fresh", "--db", db)
    assert code == 0 and "into fresh (new project 'fresh')" in out
    code, out = run("project", "list", "--db", db)
    assert "sums\tSummaries\t0 tasks\t0 labels\tsuggestions on" in out and "fresh\t\t1 tasks" in out

    run("user", "create", "boss", "--role", "admin", "--password", "long-password", "--db", db)
    run("user", "create", "ann", "--password", "long-password", "--db", db)
    code, out = run("user", "role", "ann", "reviewer", "--db", db)
    assert code == 0 and json.loads(out)["role"] == "reviewer"
    code, out = run("user", "role", "boss", "annotator", "--db", db)
    assert code == 2 and "last active admin" in out
    store = Store(str(db))
    with store.write() as s:
        from rlhfkit.feedback.auth import start_session
        from rlhfkit.feedback.users import find_user

        for _ in range(2):
            start_session(s, find_user(s, "ann").id, 1)
        s.commit()
    code, out = run("user", "revoke", "ann", "--db", db)
    assert json.loads(out) == {"username": "ann", "sessions_ended": 2}
    code, out = run("user", "deactivate", "ann", "--db", db)
    assert json.loads(out)["active"] is False
    assert "ann\treviewer\tpassword\tdeactivated\t0 sessions" in run("user", "list", "--db", db)[1]
    assert json.loads(run("user", "activate", "ann", "--db", db)[1])["active"] is True

    def live_session() -> str:
        from rlhfkit.feedback.auth import start_session, user_for_token
        from rlhfkit.feedback.users import find_user

        with store.write() as s:
            token = start_session(s, find_user(s, "ann").id, 1)[0]
            s.commit()
        with store.read() as s:
            assert user_for_token(s, token) is not None
        return token

    def still_valid(token: str) -> bool:
        from rlhfkit.feedback.auth import user_for_token

        with store.read() as s:
            return user_for_token(s, token) is not None

    token = live_session()
    result = runner.invoke(
        app, ["user", "password", "ann", "--db", str(db)], env={"RLHFKIT_PASSWORD": "new-long-password"}
    )
    assert result.exit_code == 0 and json.loads(result.output)["sessions_ended"] == 1
    assert not still_valid(token)  # a new password ends the sessions made with the old one
    with store.read() as s:
        from rlhfkit.feedback.auth import check_password
        from rlhfkit.feedback.users import find_user

        assert check_password(find_user(s, "ann"), "new-long-password")
    token = live_session()
    code, out = run("user", "invite", "ann", "--db", db)
    assert code == 0 and json.loads(out)["invite_token"]
    assert not still_valid(token)  # a new invite is a reset: old sessions end too
    code, out = run("user", "deactivate", "nobody", "--db", db)
    assert code == 2 and "no such user" in out


def test_hub_export_loads_with_datasets_and_the_leaderboard_command(tmp_path):
    import datasets

    store = new_store(tmp_path)
    rows = [
        {
            "id": f"t{i}",
            "prompt": "p",
            "responses": [{"text": "good", "model": "big"}, {"text": "bad", "model": "small"}],
            "meta": {"source": "test", "i": i},
        }
        for i in range(4)
    ]
    ids = tasks(store, rows)
    [a] = users(store, "a")
    for t, choice in zip(ids, [0, 0, 0, "tie"]):
        label(store, a, t, {"choice": choice})
    out = tmp_path / "hub"
    db = str(tmp_path / "labels.db")
    code, said = run("export", "--db", db, "--kind", "comparison", "--out", out, "--format", "hub")
    assert code == 0, said
    assert (out / "README.md").read_text().startswith("---\nconfigs:") and (out / "data").is_dir()
    ds = datasets.load_dataset(str(out), split="train")
    assert len(ds) == 4 and ds[0]["chosen_model"] == "big" and json.loads(ds[0]["meta"]) == {"source": "test", "i": 0}
    assert [r["task_external_id"] for r in ds] == ["t0", "t1", "t2", "t3"] and ds[3]["tie"] is True
    code, said = run("export", "--db", db, "--kind", "comparison", "--out", out, "--format", "hub")
    assert code == 2 and "not empty" in said
    code, said = run(
        "export", "--db", db, "--kind", "comparison", "--out", tmp_path / "x.jsonl", "--push-to-hub", "me/x"
    )
    assert code == 2 and "--format hub" in said

    code, said = run("leaderboard", "--db", db, "--bootstrap", "50")
    assert code == 0, said
    lines = said.splitlines()
    assert lines[0] == "default: 4 battles between 2 models"
    assert lines[2].split()[:2] == ["1", "big"] and lines[3].split()[:2] == ["2", "small"]
    # 3 wins and a tie: big scores 3.5 of 4, so its gap is log(3.5 / 0.5) = log 7 -> 338 Elo points
    big, small = int(lines[2].split()[2]), int(lines[3].split()[2])
    assert abs((big - small) - 400 * 0.845098) <= 2
    code, said = run("leaderboard", "--db", db, "--project", "nope")
    assert code == 2 and "no such project" in said


def test_the_cli_and_the_server_import_neither_torch_nor_transformers(tmp_path):
    probe = (
        "import os, sys\n"
        f"os.environ.update(RLHFKIT_ANNOTATE_DB={str(tmp_path / 'x.db')!r}, RLHFKIT_ANNOTATE_STRATEGY='round-robin',"
        " RLHFKIT_ANNOTATE_OVERLAP='3', RLHFKIT_ANNOTATE_GOLD_RATE='0', RLHFKIT_ANNOTATE_SESSION_HOURS='1')\n"
        "import rlhfkit.feedback.cli as cli\n"
        "cli.app_from_env()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # numpy too: the leaderboard loads it when first asked for
