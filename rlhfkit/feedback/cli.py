"""``rlhfkit annotate``: run the annotation service and move data in and out of it.

    rlhfkit annotate user create alice --role admin --password 's3cret-pass'
    rlhfkit annotate load tasks.jsonl --db annotations.db
    rlhfkit annotate serve --db annotations.db --port 8000 --strategy round-robin --overlap 3
    rlhfkit annotate export --db annotations.db --kind comparison --out comparisons.jsonl

Also runnable without the main CLI: ``python -m rlhfkit.feedback.cli serve ...``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rlhfkit.feedback.active import STRATEGIES, load_scorer

annotate_app = typer.Typer(
    help="Human feedback collection: serve the labelling web app, load or generate tasks, "
    "manage users, export labels for training.",
    no_args_is_help=True,
)
user_app = typer.Typer(help="Create users and invite tokens.", no_args_is_help=True)
annotate_app.add_typer(user_app, name="user")
app = annotate_app

DB_HELP = "SQLite file path or a database URL (postgresql://user:pass@host/db)"
DB = typer.Option("annotations.db", "--db", help=DB_HELP)


def _open(db: str):
    """The store at ``db``, migrated (SQLAlchemy is imported here, not when the command line starts)."""
    from rlhfkit.feedback.db import Store, migrate

    store = Store(db)
    migrate(store)
    return store


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@annotate_app.command()
def serve(
    db: str = DB,
    host: str = typer.Option("127.0.0.1", help="interface to bind; keep loopback unless a TLS proxy is in front"),
    port: int = 8000,
    strategy: str = typer.Option("round-robin", help=f"next-item choice: {' | '.join(STRATEGIES)}"),
    overlap: int = typer.Option(3, help="labels wanted per item (k annotators each)"),
    gold_rate: float = typer.Option(0.0, help="share of served items drawn from gold items"),
    session_hours: float = typer.Option(12.0, help="a login lasts this long"),
    scorer: str | None = typer.Option(
        None,
        help="any reward setting (a reward-model run folder, module:function, an endpoint...); scores tasks uploaded through the API",
    ),
    workers: int = typer.Option(
        1, help="server processes (Python is CPU-bound per process; each request is short, so 2-4 help under load)"
    ),
) -> None:
    """Start the web app and API (schema migrations run first). API docs at /docs."""
    import os

    import uvicorn

    if strategy not in STRATEGIES:
        _fail(f"--strategy {strategy}: must be one of {', '.join(STRATEGIES)}")
    if overlap < 1 or not 0 <= gold_rate <= 1 or workers < 1:
        _fail(
            f"--overlap and --workers must be >= 1 and --gold-rate in [0, 1]; got {overlap}, {workers} and {gold_rate}"
        )
    if scorer:
        try:
            load_scorer(scorer)  # fail here, once, rather than in every worker
        except ValueError as e:
            _fail(str(e))
    store = _open(db)  # migrations run once, before any worker starts
    store.dispose()
    # Worker processes build their app from these variables (uvicorn starts workers by import path).
    os.environ.update(
        {
            "RLHFKIT_ANNOTATE_DB": db,
            "RLHFKIT_ANNOTATE_STRATEGY": strategy,
            "RLHFKIT_ANNOTATE_OVERLAP": str(overlap),
            "RLHFKIT_ANNOTATE_GOLD_RATE": str(gold_rate),
            "RLHFKIT_ANNOTATE_SESSION_HOURS": str(session_hours),
            "RLHFKIT_ANNOTATE_SCORER": scorer or "",
        }
    )
    typer.echo(
        f"serving {store.dialect} store on http://{host}:{port} (strategy {strategy}, overlap {overlap}, "
        f"{workers} worker{'s' if workers > 1 else ''})"
    )
    uvicorn.run(
        "rlhfkit.feedback.cli:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def app_from_env():
    """The app as configured by ``serve`` through RLHFKIT_ANNOTATE_* variables (one per worker)."""
    import os

    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.db import Store
    from rlhfkit.feedback.store import QueueSettings

    env = os.environ
    settings = QueueSettings(
        strategy=env["RLHFKIT_ANNOTATE_STRATEGY"],
        overlap=int(env["RLHFKIT_ANNOTATE_OVERLAP"]),
        gold_rate=float(env["RLHFKIT_ANNOTATE_GOLD_RATE"]),
    )
    scorer = env.get("RLHFKIT_ANNOTATE_SCORER")
    return create_app(
        Store(env["RLHFKIT_ANNOTATE_DB"]),
        settings,
        float(env["RLHFKIT_ANNOTATE_SESSION_HOURS"]),
        load_scorer(scorer) if scorer else None,
    )


@annotate_app.command()
def load(
    path: Path,
    db: str = DB,
    scorer: str | None = typer.Option(
        None, help="any reward setting: score responses now so --strategy uncertainty|disagreement can use them"
    ),
) -> None:
    """Import tasks from JSONL: {"prompt", "responses": [...], "kind"?, "scale"?, "id"?, "gold"?}."""
    from rlhfkit.feedback.store import TaskError, add_tasks, read_task_file

    try:
        tasks = read_task_file(path)
        fn = load_scorer(scorer) if scorer else None
    except (TaskError, ValueError, OSError) as e:
        _fail(str(e))
    store = _open(db)
    with store.write() as session:
        added, skipped = add_tasks(session, tasks, fn)
        session.commit()
    typer.echo(f"loaded {len(added)} tasks from {path} ({skipped} already present, skipped)")


@annotate_app.command()
def score(
    db: str = DB,
    scorer: str = typer.Option(..., help="any reward setting (a reward-model run folder, module:function, ...)"),
) -> None:
    """(Re)score every task with a reward model, e.g. after training a new one."""
    from sqlalchemy import select

    from rlhfkit.feedback.models import Task
    from rlhfkit.feedback.store import apply_scores

    try:
        fn = load_scorer(scorer)
    except ValueError as e:
        _fail(str(e))
    store = _open(db)
    with store.write() as session:
        tasks = list(session.scalars(select(Task)))
        for task in tasks:
            apply_scores(task, fn)
        session.commit()
    typer.echo(f"scored {len(tasks)} tasks")


@annotate_app.command()
def generate(
    model: str = typer.Option(..., help="a model setting: a run folder, a Hugging Face folder, a built-in name"),
    prompts: Path = typer.Option(..., help=".txt (one a line) or .jsonl with 'prompt'"),
    out: Path = typer.Option(..., help="task JSONL to write (load it with 'annotate load')"),
    k: int = typer.Option(2, help="responses per prompt"),
    kind: str | None = typer.Option(None, help="question type; default pairwise for k=2, else ranking"),
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    backend: str = typer.Option("transformers", help="transformers | vllm (a GPU and the vllm extra)"),
) -> None:
    """Sample K responses per prompt from a model and write them as tasks."""
    from rlhfkit.data import write_jsonl
    from rlhfkit.feedback.generate import read_prompts, sample_tasks
    from rlhfkit.feedback.store import TaskError, parse_task

    try:
        rows = sample_tasks(
            model, read_prompts(prompts), k, kind, max_new_tokens, temperature, top_p, seed, backend=backend
        )
        for i, row in enumerate(rows):
            parse_task(f"generated task {i + 1}", row)  # same checks as load, before writing
    except (OSError, ValueError, RuntimeError, TaskError) as e:
        _fail(str(e))
    write_jsonl(out, rows)
    typer.echo(f"wrote {len(rows)} tasks with {k} responses each to {out}")


@annotate_app.command()
def export(
    db: str = DB,
    kind: str = typer.Option(..., help="comparison | ranking | rating"),
    out: Path = typer.Option(..., help="a .jsonl file, or a folder with --format datasets"),
    format: str = typer.Option("jsonl", help="jsonl | datasets"),
    aggregate: str = typer.Option("none", help="none (a row per annotator) | majority (a row per item)"),
    drop_ties: bool = typer.Option(False, help="leave out pairwise ties"),
    include_gold: bool = typer.Option(False, help="also export gold items' labels"),
) -> None:
    """Write labels in the format the trainers read (rlhfkit.data.read_records)."""
    from rlhfkit.feedback.export import build_records, label_rows, write_records

    store = _open(db)
    with store.read() as session:
        rows = label_rows(session, include_gold)
    try:
        records = build_records(kind, rows, aggregate, drop_ties)
        write_records(records, out, format)
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"wrote {len(records)} {kind} records from {len(rows)} labels to {out}")


@user_app.command("create")
def user_create(
    username: str,
    db: str = DB,
    role: str = typer.Option("annotator", help="annotator | reviewer | admin"),
    password: str | None = typer.Option(
        None, envvar="RLHFKIT_PASSWORD", help="without it an invite token is printed instead"
    ),
) -> None:
    """Create an account, with a password or an invite token."""
    from rlhfkit.feedback.auth import AuthError, create_invite, create_user

    store = _open(db)
    with store.write() as session:
        try:
            user = create_user(session, username, role, password)
        except AuthError as e:
            _fail(str(e))
        token = None if password else create_invite(session, user)
        session.commit()
    typer.echo(json.dumps({"username": username, "role": role, "invite_token": token}))


@user_app.command("invite")
def user_invite(username: str, db: str = DB, hours: float = 72) -> None:
    """Print a fresh invite token for an existing user (e.g. a forgotten password)."""
    from sqlalchemy import select

    from rlhfkit.feedback.auth import create_invite
    from rlhfkit.feedback.models import User

    store = _open(db)
    with store.write() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            _fail(f"user '{username}': no such user")
        token = create_invite(session, user, hours)
        session.commit()
    typer.echo(json.dumps({"username": username, "invite_token": token}))


@user_app.command("list")
def user_list(db: str = DB) -> None:
    """List accounts and roles."""
    from sqlalchemy import select

    from rlhfkit.feedback.models import User

    store = _open(db)
    with store.read() as session:
        for user in session.scalars(select(User).order_by(User.id)):
            typer.echo(f"{user.username}\t{user.role}\t{'password' if user.password_hash else 'invite only'}")


if __name__ == "__main__":
    annotate_app()
