"""Accounts, passwords, invite tokens and server-side sessions.

Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's recommended parameters).
Session and invite tokens are random 256-bit strings; the database keeps only their SHA-256, so a
copy of the database cannot be used to log in. A session is sent as an HttpOnly, SameSite=Lax cookie
(for the browser) or as ``Authorization: Bearer <token>`` (for scripts). No session: 401; a session
whose role is too low: 403.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request
from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.models import ROLES, AuthSession, Invite, User, utcnow

COOKIE = "rlhfkit_session"
RANK = {role: i for i, role in enumerate(ROLES)}  # annotator < reviewer < admin
_hasher = PasswordHasher()
# Verifying against a fixed hash when the user does not exist keeps the response time the same,
# so login timing does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class AuthError(ValueError):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise AuthError("password: must be at least 8 characters")
    return _hasher.hash(password)


def check_password(user: User | None, password: str) -> bool:
    stored = user.password_hash if user is not None and user.password_hash else _DUMMY_HASH
    try:
        ok = _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
    return ok and stored is not _DUMMY_HASH and user.active


def create_user(db: Session, username: str, role: str, password: str | None = None) -> User:
    if role not in ROLES:
        raise AuthError(f"role '{role}': must be one of {', '.join(ROLES)}")
    if not username or len(username) > 80 or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AuthError(f"username '{username}': use 1-80 letters, digits, '.', '-' or '_'")
    if db.scalar(select(User).where(User.username == username)) is not None:
        raise AuthError(f"username '{username}': already taken")
    user = User(
        username=username,
        role=role,
        password_hash=hash_password(password) if password else None,
        active=True,
        created_at=utcnow(),
    )
    db.add(user)
    db.flush()
    return user


def create_invite(db: Session, user: User, hours: float = 72) -> str:
    token = secrets.token_urlsafe(32)
    db.add(Invite(token_hash=hash_token(token), user_id=user.id, expires_at=utcnow() + timedelta(hours=hours)))
    return token


def redeem_invite(db: Session, token: str) -> User:
    invite = db.get(Invite, hash_token(token))
    if invite is None or invite.used_at is not None or invite.expires_at < utcnow():
        raise AuthError("invite token: unknown, already used or expired; ask an admin for a new one")
    invite.used_at = utcnow()
    user = db.get(User, invite.user_id)
    if user is None or not user.active:
        raise AuthError("invite token: its account is disabled")
    return user


def start_session(db: Session, user: User, hours: float) -> tuple[str, datetime]:
    token = secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(hours=hours)
    db.add(AuthSession(token_hash=hash_token(token), user_id=user.id, created_at=utcnow(), expires_at=expires))
    # Housekeeping: expired sessions are useless; dropping them here keeps the table small.
    db.execute(delete(AuthSession).where(AuthSession.expires_at < utcnow()))
    return token, expires


def end_session(db: Session, token: str) -> None:
    db.execute(delete(AuthSession).where(AuthSession.token_hash == hash_token(token)))


def request_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.cookies.get(COOKIE)


# One indexed lookup by the token's SHA-256 (the primary key): no Argon2 here, a 256-bit random token
# needs no slow hash. Built once; run as Core (an ORM query costs more CPU than the lookup itself).
_USERS, _SESSIONS = User.__table__, AuthSession.__table__
_SESSION_USER = (
    select(_USERS.c.id, _USERS.c.username, _USERS.c.role, _USERS.c.active, _SESSIONS.c.expires_at)
    .join(_SESSIONS, _SESSIONS.c.user_id == _USERS.c.id)
    .where(_SESSIONS.c.token_hash == bindparam("token_hash"))
)


def user_for_token(db: Session | Connection, token: str | None) -> User | None:
    """The active user of a live session, or None. The User returned is detached (read its fields)."""
    if not token:
        return None
    conn = db.connection() if isinstance(db, Session) else db
    row = conn.execute(_SESSION_USER, {"token_hash": hash_token(token)}).first()
    if row is None or row.expires_at < utcnow() or not row.active:
        return None
    return User(id=row.id, username=row.username, role=row.role, active=row.active)


def _lookup(store, token: str | None) -> User | None:
    if not token:
        return None
    with store.read_conn() as conn:
        return user_for_token(conn, token)


async def current_user(request: Request) -> User:
    # async, so FastAPI does not hand each request's auth check to a thread of its own (see Store.run)
    store = request.app.state.store
    user = await store.run(_lookup, store, request_token(request))
    if user is None:
        raise HTTPException(
            401,
            "not logged in (or the session expired): POST /api/auth/login first",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


def require(role: str):
    """A dependency that lets through users whose role is ``role`` or higher."""

    async def check(user: User = Depends(current_user)) -> User:
        if RANK[user.role] < RANK[role]:
            raise HTTPException(403, f"this needs the '{role}' role; '{user.username}' is '{user.role}'")
        return user

    return check
