"""``rlhfkit annotate``: run the annotation service and move data in and out of it.

    rlhfkit annotate user create alice --role admin --password 's3cret-pass'
    rlhfkit annotate project create summaries --guidelines guidelines.md
    rlhfkit annotate load tasks.jsonl --db annotations.db --project summaries
    rlhfkit annotate serve --db annotations.db --port 8000 --strategy round-robin --overlap 3
    rlhfkit annotate export --db annotations.db --project summaries --kind comparison --out comparisons.jsonl
    rlhfkit annotate leaderboard --db annotations.db --project summaries

Also runnable without the main CLI: ``python -m rlhfkit.feedback.cli serve ...``. Only typer is imported
at start, so ``--help`` is quick; each command imports what it needs (``serve`` without ``--scorer``
never imports torch or transformers).
"""

from __future__ import annotations

from pathlib import Path

import typer

from rlhfkit.feedback.active import STRATEGIES  # a tuple of names: imports nothing heavy
from rlhfkit.feedback.cli_admin import DB, PROJECT, fail, open_store, project_app, user_app

annotate_app = typer.Typer(
    help="Human feedback collection: serve the labelling web app, load or generate tasks, "
    "manage users and projects, export labels for training, rank models from the votes.",
    no_args_is_help=True,
)
annotate_app.add_typer(user_app, name="user")
annotate_app.add_typer(project_app, name="project")
app = annotate_app

_fail = fail  # the name `generate` uses


def _scorer(spec: str):
    from rlhfkit.feedback.active import load_scorer

    return load_scorer(spec)


@annotate_app.command()
def serve(
    db: str = DB,
    host: str = typer.Option("127.0.0.1", help="interface to bind; keep loopback unless a TLS proxy is in front"),
    port: int = 8000,
    strategy: str = typer.Option("round-robin", help=f"next-item choice: {' | '.join(STRATEGIES)}"),
    overlap: int = typer.Option(3, help="labels wanted per item (k annotators each), in every project"),
    gold_rate: float = typer.Option(0.0, help="share of served items drawn from gold items"),
    session_hours: float = typer.Option(12.0, help="a login lasts this long"),
    scorer: str | None = typer.Option(
        None,
        help="any reward setting (a reward-model run folder, module:function, an endpoint...); scores tasks uploaded through the API",
    ),
    workers: int = typer.Option(
        1, help="server processes (Python is CPU-bound per process; each request is short, so 2-4 help under load)"
    ),
    max_upload_mb: float = typer.Option(64.0, help="largest task upload (POST /api/admin/tasks); other bodies: 1 MB"),
    api_rate: float = typer.Option(
        50.0, help="API requests per second per account (burst 200); 0 = no limit. Logins have their own limits"
    ),
    forwarded_allow_ips: str | None = typer.Option(
        None,
        help="address(es) of a trusted reverse proxy whose X-Forwarded-For gives the client's address "
        "(for the per-address login limit); without it the peer's own address is used",
    ),
) -> None:
    """Start the web app and API (schema migrations run first). API docs at /docs."""
    import os

    import uvicorn

    if strategy not in STRATEGIES:
        fail(f"--strategy: must be one of {', '.join(STRATEGIES)}")
    if overlap < 1 or not 0 <= gold_rate <= 1 or workers < 1 or max_upload_mb <= 0 or api_rate < 0:
        fail("--overlap and --workers must be >= 1, --gold-rate in [0, 1], --max-upload-mb > 0, --api-rate >= 0")
    if scorer:
        try:
            _scorer(scorer)  # fail here, once, rather than in every worker
        except ValueError as e:
            fail(str(e))
    store = open_store(db)  # migrations run once, before any worker starts
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
            "RLHFKIT_ANNOTATE_UPLOAD_BYTES": str(int(max_upload_mb * (1 << 20))),
            "RLHFKIT_ANNOTATE_API_RATE": str(api_rate),
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
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
    )


def app_from_env():
    """The app as configured by ``serve`` through RLHFKIT_ANNOTATE_* variables (one per worker)."""
    import os

    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.db import Store
    from rlhfkit.feedback.limits import Limits
    from rlhfkit.feedback.store import QueueSettings

    env = os.environ
    settings = QueueSettings(
        strategy=env["RLHFKIT_ANNOTATE_STRATEGY"],
        overlap=int(env["RLHFKIT_ANNOTATE_OVERLAP"]),
        gold_rate=float(env["RLHFKIT_ANNOTATE_GOLD_RATE"]),
    )
    limits = Limits(
        upload_bytes=int(env.get("RLHFKIT_ANNOTATE_UPLOAD_BYTES", Limits.upload_bytes)),
        api_rate=float(env.get("RLHFKIT_ANNOTATE_API_RATE", Limits.api_rate)),
    )
    scorer = env.get("RLHFKIT_ANNOTATE_SCORER")
    return create_app(
        Store(env["RLHFKIT_ANNOTATE_DB"]),
        settings,
        float(env["RLHFKIT_ANNOTATE_SESSION_HOURS"]),
        _scorer(scorer) if scorer else None,
        limits,
    )


@annotate_app.command()
def load(
    path: Path,
    db: str = DB,
    project: str = PROJECT,
    scorer: str | None = typer.Option(
        None, help="any reward setting: score responses now so --strategy uncertainty|disagreement can use them"
    ),
) -> None:
    """Import tasks from JSONL: {"prompt", "responses": [...], "kind"?, "scale"?, "id"?, "gold"?, "meta"?}.
    A project named here that does not exist yet is created."""
    from rlhfkit.feedback.projects import ProjectError, create_project, find_project
    from rlhfkit.feedback.tasks import TaskError, add_tasks, read_task_file

    try:
        tasks = read_task_file(path)
        fn = _scorer(scorer) if scorer else None
    except (TaskError, ValueError, OSError) as e:
        fail(str(e))
    store = open_store(db)
    with store.write() as session:
        try:
            found = find_project(session, project)
            project_id = found.id if found else create_project(session, project).id
            added, skipped = add_tasks(session, project_id, tasks, fn)
        except (ProjectError, ValueError) as e:
            fail(str(e))
        session.commit()
    new = "" if found else f" (new project '{project}')"
    typer.echo(f"loaded {len(added)} tasks from {path} into {project}{new} ({skipped} already present, skipped)")


@annotate_app.command()
def score(
    db: str = DB,
    project: str = PROJECT,
    scorer: str = typer.Option(..., help="any reward setting (a reward-model run folder, module:function, ...)"),
) -> None:
    """(Re)score a project's tasks with a reward model, e.g. after training a new one. The suggestions
    shown to annotators (where the project shows them) follow the new scores."""
    from sqlalchemy import select

    from rlhfkit.feedback.models import Task
    from rlhfkit.feedback.projects import ProjectError, get_project
    from rlhfkit.feedback.tasks import apply_scores

    try:
        fn = _scorer(scorer)
    except ValueError as e:
        fail(str(e))
    store = open_store(db)
    with store.write() as session:
        try:
            info = get_project(session, project)
            tasks = list(session.scalars(select(Task).where(Task.project_id == info.id)))
            for task in tasks:
                apply_scores(task, fn)
        except (ProjectError, ValueError) as e:
            fail(str(e))
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
            model,
            read_prompts(prompts),
            k,
            kind,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            backend=backend,
            progress=True,
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
    project: str = PROJECT,
    kind: str = typer.Option(..., help="comparison | ranking | rating"),
    out: Path = typer.Option(..., help="a .jsonl file, or a folder with --format datasets or hub"),
    format: str = typer.Option(
        "jsonl",
        help="jsonl | datasets (datasets.save_to_disk) | hub (data/train-*.parquet + README.md dataset card, "
        "which datasets.load_dataset(folder) reads and the Hub serves as it is)",
    ),
    aggregate: str = typer.Option("none", help="none (a row per annotator) | majority (a row per item)"),
    drop_ties: bool = typer.Option(False, help="leave out pairwise ties"),
    include_gold: bool = typer.Option(False, help="also export gold items' labels"),
    push_to_hub: str | None = typer.Option(
        None, help="also upload the hub folder to this dataset repository (user/name); needs network and a token"
    ),
    private: bool = typer.Option(True, help="with --push-to-hub: create the repository private"),
) -> None:
    """Write a project's labels in the format the trainers read (rlhfkit.data.read_records)."""
    from rlhfkit.feedback.export import FORMATS, build_records, label_rows, write_records
    from rlhfkit.feedback.projects import ProjectError, get_project

    if format not in FORMATS:
        fail(f"--format: must be one of {', '.join(FORMATS)}")
    if push_to_hub and format != "hub":
        fail("--push-to-hub uploads a hub folder: add --format hub")
    store = open_store(db)
    with store.read() as session:
        try:
            info = get_project(session, project)
        except ProjectError as e:
            fail(str(e))
        rows = label_rows(session, info.id, include_gold)
    try:
        records = build_records(kind, rows, aggregate, drop_ties)
        if format == "hub":
            from rlhfkit.feedback.publish import write_hub_folder

            write_hub_folder(records, out, kind, info.name, aggregate)
        else:
            write_records(records, out, format)
    except (ValueError, OSError) as e:  # also an --out that cannot be written (a folder, under a file)
        fail(str(e))
    typer.echo(f"wrote {len(records)} {kind} records from {len(rows)} labels to {out}")
    if push_to_hub:
        from rlhfkit.feedback.publish import push_to_hub as push

        try:
            typer.echo(f"uploaded to {push(out, push_to_hub, private)}")
        except Exception as e:  # noqa: BLE001 - network, auth and Hub errors all end the command the same way
            fail(f"--push-to-hub {push_to_hub}: {type(e).__name__}: {e}")


@annotate_app.command()
def leaderboard(
    db: str = DB,
    project: str = PROJECT,
    bootstrap: int = typer.Option(1000, help="bootstrap refits for the 95% intervals (0: none)"),
    seed: int = 0,
) -> None:
    """Rank the models of a project's pairwise votes (Bradley–Terry, Elo scale, bootstrap intervals).
    Tasks name each response's model (responses: [{"text", "model"}] or "models")."""
    from rlhfkit.evaluate.leaderboard import bradley_terry
    from rlhfkit.feedback.projects import ProjectError, get_project
    from rlhfkit.feedback.votes import model_battles

    store = open_store(db)
    with store.read_conn() as conn:
        try:
            info = get_project(conn, project)
        except ProjectError as e:
            fail(str(e))
        battles = model_battles(conn, info.id)
    if not battles:
        fail(f"project {info.name}: no pairwise votes between two different, named models yet")
    rows = bradley_terry(battles, n_bootstrap=max(0, bootstrap), seed=seed)
    width = max(5, *(len(r.model) for r in rows))
    typer.echo(f"{info.name}: {len(battles)} battles between {len(rows)} models")
    typer.echo(
        f"{'rank':>4}  {'model':<{width}}  {'rating':>6}  {'95% interval':>13}  {'wins':>5} {'losses':>6} {'ties':>5}"
    )
    for rank, r in enumerate(rows, start=1):
        interval = f"{r.lo:.0f} - {r.hi:.0f}" if bootstrap > 0 else "-"
        typer.echo(
            f"{rank:>4}  {r.model:<{width}}  {r.rating:>6.0f}  {interval:>13}  {r.wins:>5} {r.losses:>6} {r.ties:>5}"
        )


if __name__ == "__main__":
    annotate_app()
