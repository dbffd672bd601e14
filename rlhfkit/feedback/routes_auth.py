"""Logging in and out, invites, password changes.

Each password check runs the same way: rate limits first (``limits.Guards``: per address, per account,
no hashing when either is spent), then the account is read, the Argon2 hash is checked in a worker
thread behind the server-wide hashing gate, and only then a short write transaction starts the session.
Nothing holds the store's write lock while a password is hashed, so a flood of wrong passwords cannot
stall label submissions.
"""

from __future__ import annotations

import asyncio
from datetime import timezone

from anyio import to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, Response

from rlhfkit.feedback import auth
from rlhfkit.feedback.limits import TARPIT_SECONDS, TooMany, client_address
from rlhfkit.feedback.models import User
from rlhfkit.feedback.schemas import InviteIn, LoginIn, PasswordIn, SessionOut, UserOut

router = APIRouter(prefix="/api/auth", tags=["auth"])
WRONG = "username or password is wrong"


def _set_cookie(request: Request, response: Response, token: str) -> None:
    # Not marked Secure: the server speaks plain HTTP on loopback; behind a TLS proxy, let the proxy
    # add Secure (see docs/feedback.md).
    hours = request.app.state.session_hours
    response.set_cookie(auth.COOKIE, token, max_age=int(hours * 3600), httponly=True, samesite="lax", path="/")


def _session_out(request: Request, response: Response, user: User, token: str, expires) -> SessionOut:
    _set_cookie(request, response, token)
    return SessionOut(
        user=UserOut(id=user.id, username=user.username, role=user.role),
        token=token,
        expires_at=expires.replace(tzinfo=timezone.utc),
    )


def _open_session(store, user_id: int, hours: float, revoke_others: bool = False, password_hash: str | None = None):
    """The write after a successful check: optionally a new password and the end of older sessions,
    then a new session. Returns (user, token, expiry)."""
    with store.write() as db:
        user = db.get(User, user_id)
        if password_hash is not None:
            user.password_hash = password_hash
        if revoke_others:
            auth.revoke_sessions(db, user_id)
        token, expires = auth.start_session(db, user_id, hours)
        db.commit()
        return User(id=user.id, username=user.username, role=user.role), token, expires


def _read_login(store, username: str):
    with store.read_conn() as conn:
        return auth.login_record(conn, username)


async def _verify(request: Request, stored_hash: str | None, password: str) -> bool:
    # 429 at once when too many are queued; else a low-priority thread (see limits.py)
    return await request.app.state.guards.run_hash(auth.verify_password, stored_hash, password)


async def _hash(request: Request, password: str) -> str:
    return await request.app.state.guards.run_hash(auth.hash_password, password)


async def _check_login(request: Request, address: str, account: str | None) -> None:
    try:
        request.app.state.guards.check_login(address, account)
    except TooMany:
        await asyncio.sleep(TARPIT_SECONDS)  # as the shield does: hold the flooding client, not the CPU
        raise


@router.post("/login", response_model=SessionOut, responses={429: {"description": "too many failed logins"}})
async def login(body: LoginIn, request: Request, response: Response) -> SessionOut:
    store, guards = request.app.state.store, request.app.state.guards
    address = client_address(request)
    await _check_login(request, address, body.username)
    record = await store.run(_read_login, store, body.username)
    ok = await _verify(request, record.password_hash if record is not None else None, body.password)
    if not ok or not record.active:
        guards.failed_login(address, body.username)
        raise HTTPException(401, WRONG)
    user, token, expires = await to_thread.run_sync(_open_session, store, record.id, request.app.state.session_hours)
    return _session_out(request, response, user, token, expires)


def _check_invite(store, token: str) -> int:
    with store.read_conn() as conn:
        return auth.invite_user_id(conn, token)


def _redeem(store, token: str, password_hash: str | None, hours: float):
    with store.write() as db:
        user = auth.redeem_invite(db, token, password_hash)  # marks it used, ends older sessions
        token_, expires = auth.start_session(db, user.id, hours)
        db.commit()
        return User(id=user.id, username=user.username, role=user.role), token_, expires


@router.post("/invite", response_model=SessionOut, summary="Log in with an invite token (and set a password)")
async def redeem(body: InviteIn, request: Request, response: Response) -> SessionOut:
    store, guards = request.app.state.store, request.app.state.guards
    address = client_address(request)
    await _check_login(request, address, None)
    try:
        await store.run(_check_invite, store, body.token)
        if body.password:
            auth.check_new_password(body.password)
    except auth.AuthError as e:
        if "token" in str(e):
            guards.failed_login(address, None)
            raise HTTPException(401, str(e)) from None
        raise HTTPException(422, str(e)) from None
    password_hash = await _hash(request, body.password) if body.password else None
    try:
        user, token, expires = await to_thread.run_sync(
            _redeem, store, body.token, password_hash, request.app.state.session_hours
        )
    except auth.AuthError as e:  # redeemed by a concurrent request in the meantime
        raise HTTPException(401, str(e)) from None
    return _session_out(request, response, user, token, expires)


@router.post(
    "/password",
    response_model=SessionOut,
    summary="Change my password; every other session of mine ends",
    responses={403: {"description": "the current password is wrong"}},
)
async def change_password(
    body: PasswordIn, request: Request, response: Response, user: User = Depends(auth.current_user)
) -> SessionOut:
    store, guards = request.app.state.store, request.app.state.guards
    address = client_address(request)
    await _check_login(request, address, user.username)
    try:
        auth.check_new_password(body.new_password)
    except auth.AuthError as e:
        raise HTTPException(422, f"new_{e}") from None
    record = await store.run(_read_login, store, user.username)
    if not await _verify(request, record.password_hash if record else None, body.current_password):
        guards.failed_login(address, user.username)
        # 403, not 401: the session is fine, the password given is not (401 would send the page to login)
        raise HTTPException(403, "current_password: wrong")
    new_hash = await _hash(request, body.new_password)
    user, token, expires = await to_thread.run_sync(
        _open_session, store, user.id, request.app.state.session_hours, True, new_hash
    )
    return _session_out(request, response, user, token, expires)


def _end(store, token: str) -> None:
    with store.write() as db:
        auth.end_session(db, token)
        db.commit()


@router.post("/logout", status_code=204)
async def logout(request: Request) -> Response:
    token = auth.request_token(request)
    if token and len(token) <= 200:
        await to_thread.run_sync(_end, request.app.state.store, token)
    response = Response(status_code=204)
    response.delete_cookie(auth.COOKIE, path="/")
    return response


me_router = APIRouter(prefix="/api", tags=["auth"])


@me_router.get("/me", response_model=UserOut)
async def me(user: User = Depends(auth.current_user)) -> UserOut:
    return UserOut(id=user.id, username=user.username, role=user.role)
