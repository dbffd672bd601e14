"""Projects: several labelling efforts in one database, each with its own tasks, guidelines and settings.

Users and roles are shared by all projects. Every task belongs to one project; anything that reads
tasks or labels (the queue, the review queue, exports, the leaderboard, the dashboard) is scoped to one.
The ``default`` project (created by migration 0002) is used wherever no project is named.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.models import DEFAULT_PROJECT, Project, storable, utcnow

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
NAME_RULE = "1-80 letters, digits, '.', '-' or '_', starting with a letter or digit"
MAX_GUIDELINES = 200_000  # characters


class ProjectError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    name: str
    title: str | None
    suggestions: bool


def check_name(name: str) -> str:
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise ProjectError(422, f"project: the name must be {NAME_RULE}")
    return name


_PROJECTS = Project.__table__
_BY_NAME = select(_PROJECTS.c.id, _PROJECTS.c.name, _PROJECTS.c.title, _PROJECTS.c.suggestions).where(
    _PROJECTS.c.name == bindparam("name")
)


def find_project(db: Session | Connection, name: str) -> ProjectInfo | None:
    conn = db.connection() if isinstance(db, Session) else db
    row = conn.execute(_BY_NAME, {"name": name}).first()
    return None if row is None else ProjectInfo(row.id, row.name, row.title, bool(row.suggestions))


def get_project(db: Session | Connection, name: str | None) -> ProjectInfo:
    """The named project (default: ``default``), or ProjectError 404."""
    name = check_name(name or DEFAULT_PROJECT)
    found = find_project(db, name)
    if found is None:
        raise ProjectError(404, "project: no such project (an admin creates it: rlhfkit annotate project create)")
    return found


def _check_fields(title: str | None, guidelines: str | None) -> None:
    if title is not None and (len(title) > 200 or not storable(title)):
        raise ProjectError(422, "title: at most 200 characters, no NUL")
    if guidelines is not None and (len(guidelines) > MAX_GUIDELINES or not storable(guidelines)):
        raise ProjectError(422, f"guidelines: at most {MAX_GUIDELINES} characters, no NUL")


def create_project(
    db: Session, name: str, title: str | None = None, guidelines: str | None = None, suggestions: bool = False
) -> Project:
    check_name(name)
    _check_fields(title, guidelines)
    if find_project(db, name) is not None:
        raise ProjectError(409, "project: that name is already taken")
    project = Project(name=name, title=title, guidelines=guidelines, suggestions=suggestions, created_at=utcnow())
    db.add(project)
    db.flush()
    return project


def update_project(
    db: Session,
    name: str,
    title: str | None = None,
    guidelines: str | None = None,
    suggestions: bool | None = None,
) -> Project:
    """Change the fields given (None leaves a field as it is; an empty string clears a text)."""
    check_name(name)
    _check_fields(title, guidelines)
    project = db.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise ProjectError(404, "project: no such project")
    if title is not None:
        project.title = title or None
    if guidelines is not None:
        project.guidelines = guidelines or None
    if suggestions is not None:
        project.suggestions = suggestions
    return project


class ProjectCache:
    """Project name -> ProjectInfo for the request hot path (``/api/next`` names its project on every
    call), kept ``ttl`` seconds so a change made through another server process shows up soon."""

    def __init__(self, store, ttl: float = 2.0):
        self.store, self.ttl = store, ttl
        self._entries: dict[str, tuple[float, ProjectInfo]] = {}

    def get(self, name: str | None) -> ProjectInfo:
        """Like ``get_project``; raises ProjectError (422 bad name, 404 unknown)."""
        name = check_name(name or DEFAULT_PROJECT)
        hit = self._entries.get(name)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        with self.store.read_conn() as conn:
            info = get_project(conn, name)
        if len(self._entries) > 1000:  # names are checked to exist first, so this only bounds memory
            self._entries.clear()
        self._entries[name] = (now + self.ttl, info)
        return info

    def forget(self, name: str) -> None:
        self._entries.pop(name, None)
