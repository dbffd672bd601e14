"""``rlhfkit annotate user ...`` and ``rlhfkit annotate project ...``: accounts and projects from the shell.

    rlhfkit annotate user create alice --role admin --password 'a-long-password'
    rlhfkit annotate user role bob reviewer
    rlhfkit annotate user deactivate carol          # she cannot log in; her sessions end; labels stay
    rlhfkit annotate user revoke dave               # end every session of dave
    rlhfkit annotate project create summaries --title "News summaries" --guidelines guidelines.md --suggestions

The same operations as the admin dashboard (``users.py``, ``projects.py``); each prints one JSON line.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

DB_HELP = "SQLite file path or a database URL (postgresql://user:pass@host/db)"
DB = typer.Option("annotations.db", "--db", help=DB_HELP)
PROJECT = typer.Option("default", "--project", help="project name (see 'annotate project list')")

user_app = typer.Typer(
    help="Accounts: create, invite, change roles, deactivate, end sessions, set passwords.", no_args_is_help=True
)
project_app = typer.Typer(help="Projects: create, change (title, guidelines, suggestions), list.", no_args_is_help=True)


def open_store(db: str):
    from rlhfkit.feedback.db import Store, migrate

    try:
        store = Store(db)
        migrate(store)
    except ValueError as e:  # not a database rlhfkit can use: one line naming it
        fail(str(e))
    return store


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _say(**fields) -> None:
    typer.echo(json.dumps(fields))


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

    store = open_store(db)
    with store.write() as session:
        try:
            user = create_user(session, username, role, password)
        except AuthError as e:
            fail(str(e))
        token = None if password else create_invite(session, user)
        session.commit()
    _say(username=username, role=role, invite_token=token)


def _change(db: str, username: str, **change) -> None:
    from rlhfkit.feedback.users import UserError, change_user

    store = open_store(db)
    with store.write() as session:
        try:
            user, ended = change_user(session, username, **change)
        except UserError as e:
            fail(str(e))
        session.commit()
        _say(username=user.username, role=user.role, active=user.active, sessions_ended=ended)


@user_app.command("role")
def user_role(username: str, role: str = typer.Argument(..., help="annotator | reviewer | admin"), db: str = DB):
    """Change an account's role (applies from its next request)."""
    _change(db, username, role=role)


@user_app.command("deactivate")
def user_deactivate(username: str, db: str = DB) -> None:
    """Stop an account: it cannot log in, its sessions and unused invites end; its labels stay."""
    _change(db, username, active=False)


@user_app.command("activate")
def user_activate(username: str, db: str = DB) -> None:
    """Let a deactivated account log in again."""
    _change(db, username, active=True)


@user_app.command("revoke")
def user_revoke(username: str, db: str = DB) -> None:
    """End every session of an account (e.g. a lost laptop); it logs in again with its password."""
    from rlhfkit.feedback.users import UserError, end_sessions

    store = open_store(db)
    with store.write() as session:
        try:
            ended = end_sessions(session, username)
        except UserError as e:
            fail(str(e))
        session.commit()
    _say(username=username, sessions_ended=ended)


@user_app.command("password")
def user_password(
    username: str,
    db: str = DB,
    password: str = typer.Option(
        ..., envvar="RLHFKIT_PASSWORD", prompt=True, hide_input=True, confirmation_prompt=True, help="8+ characters"
    ),
) -> None:
    """Set an account's password; every session of it ends."""
    from rlhfkit.feedback.auth import AuthError, hash_password
    from rlhfkit.feedback.users import UserError, set_password_hash

    try:
        new_hash = hash_password(password)  # before opening the write transaction: hashing is slow
    except AuthError as e:
        fail(str(e))
    store = open_store(db)
    with store.write() as session:
        try:
            ended = set_password_hash(session, username, new_hash)
        except UserError as e:
            fail(str(e))
        session.commit()
    _say(username=username, sessions_ended=ended)


@user_app.command("invite")
def user_invite(username: str, db: str = DB, hours: float = 72) -> None:
    """Print a fresh invite token for an existing user (e.g. a forgotten password). Their unused older
    invites and their sessions end."""
    from rlhfkit.feedback.auth import create_invite
    from rlhfkit.feedback.users import UserError, find_user

    store = open_store(db)
    with store.write() as session:
        try:
            user = find_user(session, username)
        except UserError as e:
            fail(str(e))
        token = create_invite(session, user, hours)
        session.commit()
    _say(username=username, invite_token=token)


@user_app.command("list")
def user_list(db: str = DB) -> None:
    """List accounts: name, role, password or invite only, active or deactivated, live sessions."""
    from rlhfkit.feedback.users import list_users

    store = open_store(db)
    with store.read() as session:
        for u in list_users(session):
            login = "password" if u["has_password"] else "invite only"
            state = "active" if u["active"] else "deactivated"
            typer.echo(f"{u['username']}\t{u['role']}\t{login}\t{state}\t{u['sessions']} sessions")


def _read_guidelines(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"--guidelines {path}: {e}")


@project_app.command("create")
def project_create(
    name: str,
    db: str = DB,
    title: str | None = typer.Option(None, help="shown to annotators"),
    guidelines: Path | None = typer.Option(None, help="a markdown file: the project's guidelines page"),
    suggestions: bool = typer.Option(False, help="pre-fill a model's suggested answer (from scores or the task file)"),
) -> None:
    """Create a project (tasks, guidelines and exports are per project; users are shared)."""
    from rlhfkit.feedback.projects import ProjectError, create_project

    text = _read_guidelines(guidelines)
    store = open_store(db)
    with store.write() as session:
        try:
            project = create_project(session, name, title, text, suggestions)
        except ProjectError as e:
            fail(str(e))
        session.commit()
        _say(name=project.name, title=project.title, suggestions=project.suggestions)


@project_app.command("set")
def project_set(
    name: str,
    db: str = DB,
    title: str | None = typer.Option(None, help="a new title"),
    guidelines: Path | None = typer.Option(None, help="a markdown file replacing the guidelines"),
    suggestions: bool | None = typer.Option(None, "--suggestions/--no-suggestions", help="pre-fill suggestions or not"),
) -> None:
    """Change a project's title, guidelines or suggestion setting (what is not given stays)."""
    from rlhfkit.feedback.projects import ProjectError, update_project

    text = _read_guidelines(guidelines)
    store = open_store(db)
    with store.write() as session:
        try:
            project = update_project(session, name, title, text, suggestions)
        except ProjectError as e:
            fail(str(e))
        session.commit()
        _say(name=project.name, title=project.title, suggestions=project.suggestions)


@project_app.command("list")
def project_list(db: str = DB) -> None:
    """List projects with their task and label counts."""
    from sqlalchemy import func, select

    from rlhfkit.feedback.models import Label, Project, Task

    store = open_store(db)
    with store.read() as session:
        tasks = dict(session.execute(select(Task.project_id, func.count()).group_by(Task.project_id)).all())
        labels = dict(
            session.execute(
                select(Task.project_id, func.count()).join(Label, Label.task_id == Task.id).group_by(Task.project_id)
            ).all()
        )
        for p in session.scalars(select(Project).order_by(Project.name)):
            shown = "suggestions on" if p.suggestions else "suggestions off"
            typer.echo(f"{p.name}\t{p.title or ''}\t{tasks.get(p.id, 0)} tasks\t{labels.get(p.id, 0)} labels\t{shown}")
