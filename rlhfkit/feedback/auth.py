"""Accounts, passwords, invite tokens and server-side sessions.

Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's recommended parameters).
Session and invite tokens are random 256-bit strings; the database keeps only their SHA-256, so a
copy of the database cannot be used to log in. A session is sent as an HttpOnly, SameSite=Lax cookie
(for the browser) or as ``Authorization: Bearer <token>`` (for scripts). No session: 401; a session
whose role is too low: 403.

Hashing is slow on purpose (~0.2 s of CPU), so it is kept apart from the database: callers look the
account up with a read, hash in a worker thread (``verify_password``, ``hash_password``), then write in
a short transaction. Nothing holds the store's write lock while a password is hashed.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request
from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhfkit.feedback.models import ROLES, AuthSession, Invite, User, storable, utcnow

COOKIE = "rlhfkit_session"
_USERS, _SESSIONS = User.__table__, AuthSession.__table__
RANK = {role: i for i, role in enumerate(ROLES)}  # annotator < reviewer < admin
MIN_PASSWORD, MAX_PASSWORD = 8, 1000
_hasher = PasswordHasher()


class AuthError(ValueError):
    pass


@cache
def _dummy_hash() -> str:
    # Verifying against a fixed hash when the user does not exist keeps the response time the same, so
    # login timing does not reveal which usernames exist. Made on first use: hashing costs ~0.2 s.
    return _hasher.hash("not-a-real-password")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_new_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD or not storable(password):
        raise AuthError(f"password: must be {MIN_PASSWORD}-{MAX_PASSWORD} characters, without NUL")


def hash_password(password: str) -> str:
    check_new_password(password)
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (None: no such account or no password; the dummy hash is
    checked then, for equal timing). CPU-heavy: call it from a worker thread."""
    try:
        return _hasher.verify(stored or _dummy_hash(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def check_password(user: User | None, password: str) -> bool:
    ok = verify_password(user.password_hash if user is not None else None, password)
    return ok and user is not None and user.active


def check_username(username: str) -> None:
    if not username or len(username) > 80 or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AuthError("username: use 1-80 letters, digits, '.', '-' or '_'")
    if not username.isascii():
        raise AuthError("username: use ASCII letters and digits")


def create_user(db: Session, username: str, role: str, password: str | None = None) -> User:
    if role not in ROLES:
        raise AuthError(f"role: must be one of {', '.join(ROLES)}")
    check_username(username)
    if db.scalar(select(User).where(User.username == username)) is not None:
        raise AuthError("username: already taken")
    user = User(
        username=username,
        role=role,
        password_hash=hash_password(password) if password else None,
        active=True,
        created_at=utcnow(),
    )
    try:
        with db.begin_nested():  # a savepoint: a twin request that won the race undoes this insert only
            db.add(user)
    except IntegrityError:
        raise AuthError("username: already taken") from None
    return user


def revoke_sessions(db: Session | Connection, user_id: int, keep: str | None = None) -> int:
    """End every session of a user (but ``keep``, a token hash). Returns how many were ended."""
    stmt = delete(AuthSession).where(AuthSession.user_id == user_id)
    if keep is not None:
        stmt = stmt.where(AuthSession.token_hash != keep)
    return db.execute(stmt).rowcount


def create_invite(db: Session, user: User, hours: float = 72) -> str:
    """A new invite token for ``user``. It replaces any unused earlier invite and ends the user's
    sessions: an invite is how an admin resets a lost or leaked password."""
    token = secrets.token_urlsafe(32)
    db.execute(delete(Invite).where(Invite.user_id == user.id))
    revoke_sessions(db, user.id)
    db.add(Invite(token_hash=hash_token(token), user_id=user.id, expires_at=utcnow() + timedelta(hours=hours)))
    return token


_INVITES = Invite.__table__
_INVITE_USER = (
    select(_INVITES.c.user_id, _INVITES.c.used_at, _INVITES.c.expires_at, User.active)
    .join(User, User.id == _INVITES.c.user_id)
    .where(_INVITES.c.token_hash == bindparam("token_hash"))
)


def invite_user_id(conn: Connection, token: str) -> int:
    """The account an unused, unexpired invite belongs to (a read; nothing is marked used yet)."""
    row = conn.execute(_INVITE_USER, {"token_hash": hash_token(token)}).first()
    if row is None or row.used_at is not None or row.expires_at < utcnow():
        raise AuthError("invite token: unknown, already used or expired; ask an admin for a new one")
    if not row.active:
        raise AuthError("invite token: its account is disabled")
    return row.user_id


def redeem_invite(db: Session, token: str, password_hash: str | None = None) -> User:
    """Mark the invite used (once: a concurrent second redemption fails), set the password if one was
    chosen (hashed beforehand, outside this transaction) and end the account's older sessions."""
    invite = db.get(Invite, hash_token(token), with_for_update=db.bind.dialect.name != "sqlite")
    if invite is None or invite.used_at is not None or invite.expires_at < utcnow():
        raise AuthError("invite token: unknown, already used or expired; ask an admin for a new one")
    user = db.get(User, invite.user_id)
    if user is None or not user.active:
        raise AuthError("invite token: its account is disabled")
    invite.used_at = utcnow()
    if password_hash is not None:
        user.password_hash = password_hash
    revoke_sessions(db, user.id)
    return user


def start_session(db: Session | Connection, user_id: int, hours: float) -> tuple[str, datetime]:
    token = secrets.token_urlsafe(32)
    now = utcnow()
    expires = now + timedelta(hours=hours)
    db.execute(
        _SESSIONS.insert().values(token_hash=hash_token(token), user_id=user_id, created_at=now, expires_at=expires)
    )
    # Housekeeping: expired sessions are useless; dropping them here keeps the table small.
    db.execute(delete(AuthSession).where(AuthSession.expires_at < now))
    return token, expires


_LOGIN = select(_USERS.c.id, _USERS.c.password_hash, _USERS.c.active).where(_USERS.c.username == bindparam("name"))


def login_record(conn: Connection, username: str):
    """(id, password_hash, active) of an account, or None: what a login checks, read without a lock."""
    return conn.execute(_LOGIN, {"name": username}).first()


def end_session(db: Session, token: str) -> None:
    db.execute(delete(AuthSession).where(AuthSession.token_hash == hash_token(token)))


def request_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.cookies.get(COOKIE)


# One indexed lookup by the token's SHA-256 (the primary key): no Argon2 here, a 256-bit random token
# needs no slow hash. Built once; run as Core (an ORM query costs more CPU than the lookup itself).
_SESSION_USER = (
    select(_USERS.c.id, _USERS.c.username, _USERS.c.role, _USERS.c.active, _SESSIONS.c.expires_at)
    .join(_SESSIONS, _SESSIONS.c.user_id == _USERS.c.id)
    .where(_SESSIONS.c.token_hash == bindparam("token_hash"))
)


def user_for_token(db: Session | Connection, token: str | None) -> User | None:
    """The active user of a live session, or None. The User returned is detached (read its fields)."""
    if not token or len(token) > 200:
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
    request.app.state.guards.check_api(user.id)
    return user


def require(role: str):
    """A dependency that lets through users whose role is ``role`` or higher."""

    async def check(user: User = Depends(current_user)) -> User:
        if RANK[user.role] < RANK[role]:
            raise HTTPException(403, f"this needs the '{role}' role; your account is '{user.role}'")
        return user

    return check
