"""Protection against floods and hostile input: rate limits, a cap on password hashing, request-body
limits, error answers that never repeat their input, and the post-login redirect check.

Login is where an anonymous client can make the server work hardest: one Argon2id verification costs
~0.3 s of CPU here (argon2-cffi's defaults: 64 MiB, 3 passes, 4 lanes). So before any hashing a login
or invite attempt must pass (1) a token bucket per client address and (2) one per account, both spent
only by failures, and (3) a server-wide gate that lets ``hash_concurrency`` verifications run at once
with at most ``hash_queue`` more waiting. Anything beyond gets 429 with Retry-After at once, costing
microseconds of CPU (after a one-second pause that holds the flooding client, not the server).
Labelling never waits on any of this: sessions are checked by a SHA-256 lookup, and
hashing runs in its own worker thread, never on the event loop or under the store's write lock.

That thread runs at the lowest CPU priority (Linux's SCHED_IDLE, which is per thread and inherited by
Argon2's lane threads), so the hashing the limits still allow uses only CPU that labelling leaves idle:
under a flood, logins slow down, labelling much less.

The buckets live in each server process (``serve --workers N`` allows N times the rate) and are lost on
restart; they slow guessing to a crawl, they are not an account lockout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import unquote, urlsplit

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator
from sqlalchemy.exc import DataError

from rlhfkit.feedback.models import storable

MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL; a larger one cannot name anything
TARPIT_SECONDS = 1.0  # how long a refused login attempt waits for its 429


def _storable(value: str) -> str:
    if not storable(value):
        raise ValueError("NUL characters and unpaired surrogates are not allowed")
    return value


# A string field of a request: PostgreSQL cannot store (or even compare with) a NUL character.
Clean = Annotated[str, AfterValidator(_storable)]


@dataclass
class Limits:
    """Per-process limits (see the module docstring). Sizes in bytes, rates per second."""

    body_bytes: int = 1 << 20  # any API request body but a task upload
    auth_body_bytes: int = 16 << 10  # login, invite, password: nothing there needs more
    upload_bytes: int = 64 << 20  # POST /api/admin/tasks
    # Failed logins: each costs ~0.3 s of CPU, so the refill rates bound what a flood can make the
    # server do: four flooding addresses get 4 / 20 = 0.2 hashes per second once their bursts are spent.
    address_failures: int = 10  # failed logins an address may make at once ...
    address_refill: float = 1 / 20  # ... then one more every 20 s
    account_failures: int = 5  # failed logins on one account at once ...
    account_refill: float = 1 / 60  # ... then one more a minute
    hash_concurrency: int = 1  # Argon2 verifications running at once (each already uses 4 lanes)
    hash_queue: int = 8  # more may wait; beyond that, 429
    api_rate: float = 50.0  # authenticated requests per second and account (0 = no limit) ...
    api_burst: int = 200  # ... with this burst


class TooMany(HTTPException):
    def __init__(self, wait: float, what: str):
        seconds = max(1, math.ceil(wait))
        super().__init__(429, f"{what}; try again in {seconds} s", headers={"Retry-After": str(seconds)})


class RateLimiter:
    """Token buckets by key: ``capacity`` tokens, refilled at ``rate`` per second. Least recently used
    keys beyond ``max_keys`` are forgotten (a forgotten key starts full, as an idle one would be)."""

    def __init__(self, capacity: float, rate: float, max_keys: int = 100_000):
        self.capacity, self.rate, self.max_keys = capacity, rate, max_keys
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()

    def _level(self, key, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def wait(self, key, now: float | None = None) -> float:
        """Seconds until ``key`` has a token (0 = it has one now). Takes nothing."""
        now = time.monotonic() if now is None else now
        level = self._level(key, now)
        return 0.0 if level >= 1 else (1 - level) / self.rate if self.rate > 0 else math.inf

    def take(self, key, now: float | None = None) -> float:
        """Take a token if there is one; returns 0, or the seconds to wait (then nothing is taken)."""
        now = time.monotonic() if now is None else now
        level = self._level(key, now)
        if level < 1:
            return (1 - level) / self.rate if self.rate > 0 else math.inf
        self._buckets[key] = (level - 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return 0.0


class HashGate:
    """At most ``concurrency`` password hashes at once and ``queue`` waiting; more are refused at once."""

    def __init__(self, concurrency: int, queue: int, tarpit: float = 0.0):
        self.semaphore = asyncio.Semaphore(concurrency)
        self.queue, self.waiting, self.tarpit = queue, 0, tarpit

    async def __aenter__(self):
        if self.waiting >= self.queue:
            await asyncio.sleep(self.tarpit)  # hold the flooding client's connection a moment, not the CPU
            raise TooMany(1, "too many logins are being checked right now")
        self.waiting += 1
        try:
            await self.semaphore.acquire()
        finally:
            self.waiting -= 1

    async def __aexit__(self, *exc):
        self.semaphore.release()


def _background_priority() -> None:
    """Make the calling thread a background one: Linux's SCHED_IDLE policy (it runs only when nothing
    else wants the CPU), or else the lowest nice value. On Linux both are per thread, and threads it
    starts (Argon2's lanes) inherit them; elsewhere they would apply to the whole process, so nothing
    is changed there."""
    if os.uname().sysname != "Linux":
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class Guards:
    """The per-process rate limiters, the hashing gate and the low-priority hashing threads of one app."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.address = RateLimiter(limits.address_failures, limits.address_refill)
        self.account = RateLimiter(limits.account_failures, limits.account_refill)
        self.api = RateLimiter(limits.api_burst, limits.api_rate) if limits.api_rate > 0 else None
        self._gate: HashGate | None = None
        self.hash_threads = ThreadPoolExecutor(
            limits.hash_concurrency, thread_name_prefix="password-hash", initializer=_background_priority
        )

    async def run_hash(self, fn, *args):
        """Run a password hash or verification behind the gate, in a low-priority thread."""
        async with self.hashing:
            return await asyncio.get_running_loop().run_in_executor(self.hash_threads, fn, *args)

    @property
    def hashing(self) -> HashGate:
        # Made on first use, inside the server's event loop (an asyncio.Semaphore binds to its loop).
        if self._gate is None:
            self._gate = HashGate(self.limits.hash_concurrency, self.limits.hash_queue, TARPIT_SECONDS)
        return self._gate

    def check_login(self, address: str, account: str | None) -> None:
        """Before any hashing: refuse an address or account whose failures used up its bucket."""
        if (wait := self.address.wait(address)) > 0:
            raise TooMany(wait, "too many failed logins from your address")
        if account is not None and (wait := self.account.wait(account.lower())) > 0:
            raise TooMany(wait, "too many failed logins for this account")

    def failed_login(self, address: str, account: str | None) -> None:
        self.address.take(address)
        if account is not None:
            self.account.take(account.lower())

    def check_api(self, user_id: int) -> None:
        if self.api is not None and (wait := self.api.take(user_id)) > 0:
            raise TooMany(wait, "too many requests from this account")


def client_address(request: Request) -> str:
    # uvicorn puts the peer here, or the X-Forwarded-For address when the peer is a trusted proxy
    # (``serve --forwarded-allow-ips``).
    return request.client.host if request.client else "unknown"


# ---------------------------------------------------------------- request bodies


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body: larger than this endpoint accepts ({limit} bytes)")


PASSWORD_PATHS = {"/api/auth/login", "/api/auth/invite", "/api/auth/password"}


class ShieldMiddleware:
    """In front of everything: (1) a login or invite attempt from an address whose failures used up its
    bucket is answered 429 before its body is read or parsed (a flood's refusals must cost next to
    nothing), after a pause of ``TARPIT_SECONDS`` that holds a flooding client's connection, not the
    server's CPU; (2) a body larger than its endpoint's limit is refused with 413: at once from
    Content-Length, or, for a body sent without one, as soon as the bytes read pass the limit."""

    def __init__(self, app, limits: Limits, guards: Guards):
        self.app, self.limits, self.guards = app, limits, guards

    def limit_for(self, path: str) -> int:
        if path == "/api/admin/tasks":
            return self.limits.upload_bytes
        if path.startswith("/api/auth/"):
            return self.limits.auth_body_bytes
        return self.limits.body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "POST" and scope["path"] in PASSWORD_PATHS:
            client = scope.get("client")
            wait = self.guards.address.wait(client[0] if client else "unknown")
            if wait > 0:
                await asyncio.sleep(TARPIT_SECONDS)
                refused = TooMany(wait, "too many failed logins from your address")
                response = JSONResponse({"detail": refused.detail}, status_code=429, headers=refused.headers)
                return await response(scope, receive, send)
        limit = self.limit_for(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                response = JSONResponse({"detail": str(BodyTooLarge(limit).detail)}, status_code=413)
                return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)  # an HTTPException: FastAPI answers it as a 413
            return message

        await self.app(scope, counted, send)


# ---------------------------------------------------------------- errors


_TYPE_TAG = re.compile(r"[\[\]()]|^(str|int|float|bool|list|dict|none|tuple)$")


def schema_names(module) -> frozenset[str]:
    """The field names (and aliases) of every pydantic model in ``module``: the words an error may name."""
    from pydantic import BaseModel

    models = [m for m in vars(module).values() if isinstance(m, type) and issubclass(m, BaseModel)]
    return frozenset(n for m in models for name, f in m.model_fields.items() for n in (name, f.alias) if n)


def error_field(error: dict, names: frozenset[str]) -> str:
    """Where in the request a validation ``error`` is, in the schema's words. A query, path or header parameter is
    named as the route declares it; in a body, indexes and the schema's field names are kept, anything else (a
    dict field's keys, a field the schema does not have: the client's own words) is shown as ``<key>``, and
    pydantic's union-member tags ("str", "list[TextPart]") are dropped. Nothing the client sent is repeated."""
    loc = tuple(error.get("loc", ()))
    if not loc:
        return "body"
    where, *parts = loc
    if where != "body":
        return ".".join(str(p) for p in parts) or str(where)
    unknown = parts.pop() if error.get("type") == "extra_forbidden" and parts else None
    out = []
    for part in parts:
        if isinstance(part, int) or part in names:
            out.append(str(part))
        elif not _TYPE_TAG.search(str(part)):
            out.append("<key>")
    if unknown is not None:
        out.append("<key>")
    return ".".join(out) or "body"


@functools.cache  # the schemas do not change: their names are read once, not at every refused request
def _schema_names() -> frozenset[str]:
    from rlhfkit.feedback import schemas

    return schema_names(schemas)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field and what is expected, never echoing the value: FastAPI's default puts
    the input in the answer (a password, a 100 KB string, or a NaN that then fails to serialise)."""
    names = _schema_names()
    errors = [{"field": error_field(e, names), "message": e.get("msg", "invalid")} for e in exc.errors()[:20]]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


async def database_refused(request: Request, exc: DataError) -> JSONResponse:
    """A value the database cannot store (out of range, bad encoding) is the request's fault: 422.
    The checks in front should catch these first; this keeps a missed case from becoming a 500."""
    return JSONResponse({"detail": "a value in the request cannot be stored (out of range or malformed)"}, 422)


# ---------------------------------------------------------------- redirects

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None. Only ``/path?query#fragment``: no scheme, no
    host, no ``//`` or ``/\\`` start (browsers read ``/\\evil`` as ``//evil``), no backslash or
    control character anywhere (browsers drop tabs and newlines, so ``/\\t/evil`` is ``//evil``), and
    the same once percent-decoded, since some hop may decode it again."""
    if not target or len(target) > 2000:
        return None
    for candidate in (target, unquote(target)):
        if not candidate.startswith("/") or candidate.startswith(("//", "/\\")) or _CONTROL.search(candidate):
            return None
        parts = urlsplit(candidate)
        if parts.scheme or parts.netloc:
            return None
    return target
