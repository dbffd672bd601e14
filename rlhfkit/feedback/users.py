"""What an admin does to accounts: list them, change a role, deactivate or reactivate, end sessions,
set a password. Shared by the admin API and ``rlhfkit annotate user ...``.

A deactivated account cannot log in, its sessions end at once and its unused invites are dropped; its
labels stay. A role change applies from the next request (roles are read with the session). The last
active admin cannot be demoted or deactivated, so the service always has someone who can manage it.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.auth import AuthError, check_username, revoke_sessions
from rlhfkit.feedback.models import ROLES, AuthSession, Invite, User, utcnow


class UserError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def find_user(db: Session, username: str) -> User:
    try:
        check_username(username)
    except AuthError:
        raise UserError(404, "user: no such user") from None
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        raise UserError(404, "user: no such user")
    return user


def list_users(db: Session) -> list[dict]:
    live = (
        select(AuthSession.user_id, func.count().label("n"))
        .where(AuthSession.expires_at > utcnow())
        .group_by(AuthSession.user_id)
        .subquery()
    )
    rows = db.execute(
        select(User, func.coalesce(live.c.n, 0)).outerjoin(live, live.c.user_id == User.id).order_by(User.id)
    )
    return [
        {
            "id": u.id,
            "username": u.username,
            "role": u.role,
            "active": u.active,
            "has_password": u.password_hash is not None,
            "sessions": n,
        }
        for u, n in rows
    ]


def _other_active_admins(db: Session, user: User) -> int:
    # FOR UPDATE (PostgreSQL; SQLite serialises writers already): two admins demoting each other at once are
    # serialised here and the second counts after the first's change, so the service keeps an admin
    admins = select(User.id).where(User.role == "admin", User.active.is_(True)).with_for_update()
    return sum(i != user.id for i in db.scalars(admins))


def change_user(db: Session, username: str, role: str | None = None, active: bool | None = None) -> tuple[User, int]:
    """Set a role and/or the active flag. Returns (user, sessions ended). Deactivating ends sessions."""
    user = find_user(db, username)
    if role is not None and role not in ROLES:
        raise UserError(422, f"role: must be one of {', '.join(ROLES)}")
    losing_admin = user.role == "admin" and user.active and (active is False or (role is not None and role != "admin"))
    if losing_admin and _other_active_admins(db, user) == 0:
        raise UserError(409, "user: this is the last active admin; make another admin first")
    ended = 0
    if role is not None:
        user.role = role
    if active is not None:
        user.active = active
        if not active:
            ended = revoke_sessions(db, user.id)
            db.execute(delete(Invite).where(Invite.user_id == user.id, Invite.used_at.is_(None)))
    return user, ended


def end_sessions(db: Session, username: str) -> int:
    return revoke_sessions(db, find_user(db, username).id)


def set_password_hash(db: Session, username: str, password_hash: str) -> int:
    """Store a new password (hashed beforehand) and end every session of the account."""
    user = find_user(db, username)
    user.password_hash = password_hash
    return revoke_sessions(db, user.id)
