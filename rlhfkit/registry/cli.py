"""``rlhfkit registry``: versions, aliases, promotion, rollback and lineage, in the feedback app's database.

    rlhfkit registry register runs/dpo-1 --name policy          # -> policy:1
    rlhfkit registry promote champion policy:1
    rlhfkit registry rollback champion                          # the previous holder back
    rlhfkit registry list
    rlhfkit registry show champion
    rlhfkit registry history champion
    rlhfkit registry lineage champion --out lineage.png

Every command takes ``--db`` (a SQLite file, default annotations.db, or postgresql://...), as ``rlhfkit annotate``
does: one database holds the labels, the versions and the feedback on them. Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Model registry: immutable versions, movable aliases, promote, rollback, lineage.",
                  no_args_is_help=True)  # fmt: skip
DB = typer.Option("annotations.db", "--db", help="SQLite file path or a database URL (postgresql://user:pass@host/db)")


def open_registry(db: str):
    from rlhfkit.registry.store import Registry

    return guarded(lambda: Registry.open(db))  # a --db that is not a database rlhfkit can use: one line


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def guarded(fn):
    """Run a command body; a registry or spec error is one line, exit status 1."""
    from rlhfkit.registry.store import RegistryError

    try:
        return fn()
    except (RegistryError, ValueError) as e:
        fail(str(e))


def _when(version) -> str:
    return version.created_at.strftime("%Y-%m-%d %H:%M")


@app.command()
def register(
    source: str = typer.Argument(..., help="a finished run folder, a model folder, a file (constitution), or a name"),
    name: str | None = typer.Option(None, help="version name (default: the kind: policy, reward, judge...)"),
    kind: str | None = typer.Option(None, help="policy | reward | judge | constitution (default: from the run)"),
    endpoint: str | None = typer.Option(None, help="URL#MODEL of an OpenAI-compatible server that serves it"),
    note: str | None = typer.Option(None, help="free text kept with the version"),
    db: str = DB,
) -> None:
    """Register an immutable version (the same run again under the same name gives the version it already is)."""
    registry = open_registry(db)
    version = guarded(lambda: registry.register(source, name=name, kind=kind, endpoint=endpoint, note=note))
    typer.echo(f"{version.ref}  {version.kind}  {version.source}  hash {version.content_hash or '-'}")


@app.command("list")
def list_versions(name: str | None = typer.Option(None, help="only versions of this name"), db: str = DB) -> None:
    """Every version with the aliases that name it."""
    registry = open_registry(db)
    held: dict[int, list[str]] = {}
    for alias, version in registry.aliases().items():
        held.setdefault(version.id, []).append(alias)
    for v in registry.versions(name):
        tags = f"  [{', '.join(held[v.id])}]" if v.id in held else ""
        typer.echo(f"{v.ref:20s} {v.kind:12s} {v.stage or v.source_kind:10s} {_when(v)}  {v.source}{tags}")


@app.command()
def show(ref: str = typer.Argument(..., help="an alias, NAME:NUMBER or NAME:latest"), db: str = DB) -> None:
    """One version as JSON: source, hash, run card, labels, evaluations, the aliases that name it."""
    registry = open_registry(db)
    version = guarded(lambda: registry.resolve(ref))
    out = {
        "ref": version.ref,
        **{k: getattr(version, k) for k in ("kind", "source", "source_kind", "content_hash", "endpoint", "run_id")},
        "stage": version.stage,
        "created_at": version.created_at.isoformat() + "Z",
        "aliases": [a for a, v in registry.aliases().items() if v.id == version.id],
        "labels": version.labels,
        "card": version.card,
        "evaluations": [
            {**e, "created_at": e["created_at"].isoformat() + "Z"} for e in registry.evaluations(version.ref)
        ],
    }
    typer.echo(json.dumps(out, indent=2, default=str))


@app.command()
def promote(
    alias: str = typer.Argument(..., help="the alias to move (created on first use), e.g. champion"),
    ref: str = typer.Argument(..., help="the version it should name: NAME:NUMBER, NAME:latest or another alias"),
    expect: str | None = typer.Option(None, help="move it only if it still names this version (compare-and-set)"),
    reason: str | None = typer.Option(None, help="why; kept in the alias's history"),
    db: str = DB,
) -> None:
    """Point an alias at a version; servers pick it up at their next request, no restart."""
    registry = open_registry(db)
    change = guarded(lambda: registry.promote(alias, ref, expect=expect, reason=reason))
    before = change.previous.ref if change.previous else "(new)"
    typer.echo(f"{alias}: {before} -> {change.current.ref}")


@app.command()
def rollback(
    alias: str = typer.Argument(..., help="the alias to give back to its previous holder"),
    reason: str | None = typer.Option(None, help="why; kept in the alias's history"),
    db: str = DB,
) -> None:
    """Give an alias back to the version that held it before (again: one further back)."""
    registry = open_registry(db)
    change = guarded(lambda: registry.rollback(alias, reason=reason))
    typer.echo(f"{alias}: {change.previous.ref} -> {change.current.ref} (rolled back)")


@app.command()
def history(alias: str = typer.Argument(...), db: str = DB) -> None:
    """Every change of an alias, oldest first."""
    registry = open_registry(db)
    events = registry.history(alias)
    if not events:
        fail(f"{alias!r}: no such alias")
    for e in events:
        why = f"  ({e['reason']})" if e["reason"] else ""
        typer.echo(
            f"{e['seq']:4d} {e['created_at']:%Y-%m-%d %H:%M:%S} {e['action']:9s} {e['previous'] or '-'} -> {e['version']}{why}"
        )


@app.command()
def lineage(
    ref: str = typer.Argument(..., help="an alias or a version"),
    out: Path | None = typer.Option(None, help="also draw it to this file (.png, .svg or .pdf)"),
    format: str = typer.Option("text", help="text | dot (Graphviz)"),
    db: str = DB,
) -> None:
    """Where a version came from: parents by run id, data hashes, labels, evaluations (text, and a picture)."""
    from rlhfkit.registry.lineage import lineage as build

    if format not in ("text", "dot"):
        fail(f"--format {format}: choose text or dot")
    if out is not None and out.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"--out {out}: give a .png, .svg or .pdf file")
    registry = open_registry(db)
    graph = guarded(lambda: build(registry, ref))
    typer.echo(graph.text() if format == "text" else graph.dot())
    if out is not None:
        typer.echo(f"drawn to {graph.draw(out)}")
