"""The serving app: OpenAI-compatible chat completions routed by the registry, feedback, monitoring, a chat page.

    POST /v1/chat/completions   {"model": "champion" | "policy:3" | an experiment, "messages": [...], "stream": ...,
                                 "user": "u-17", "regenerate_of": "chatcmpl-..."}
    POST /v1/feedback           {"response_id", "user", "kind": thumbs|rating|preference|flag, "value", ...}
                                 with an Idempotency-Key header
    GET  /v1/models             the aliases and running experiments a request may name
    GET  /v1/monitor            per version and arm: counts, latency percentiles, feedback rates (``?experiment=``)
    GET  /                      a small chat page with thumbs, rating, regenerate-and-prefer and flag buttons

Every response is stored (who asked, which version and arm answered, the text, the time to first token) before
its last chunk is sent, so feedback on an answer a client received always finds it. Errors use OpenAI's shape
(``{"error": {"message", "type", "param"}}``) with 4xx statuses for anything a client sent wrong; a request's own
text is never echoed back.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhfkit.feedback.db import Store
from rlhfkit.feedback.limits import error_field, schema_names
from rlhfkit.registry.store import Registry, RegistryError
from rlhfkit.serve import schemas
from rlhfkit.serve.engine import Event, GenParams, Job, wall_ms
from rlhfkit.serve.records import FeedbackError, insert_response, new_response_id, submit_feedback
from rlhfkit.serve.routing import Route, Router
from rlhfkit.serve.schemas import ChatRequest, FeedbackIn

WEB = Path(__file__).parent / "web"
log = logging.getLogger("rlhfkit.serve")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
MAX_BODY = 1 << 20  # bytes: a request larger than this is refused before it is read


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param}}, status_code=status)


class Guard:
    """Plain ASGI middleware: security headers on every answer; a body over MAX_BODY (by its Content-Length) is
    refused with 413 and one without a length with 411, before anything reads it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is None:
                return await error_response(411, "send a Content-Length header")(scope, receive, send)
            if not length.isdigit() or int(length) > MAX_BODY:
                return await error_response(413, f"the body may be at most {MAX_BODY} bytes")(scope, receive, send)
        extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                 (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]  # fmt: skip

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_NAMES = schema_names(schemas)


def create_app(
    store: Store,
    engine=None,
    upstream=None,
    *,
    api_key: str | None = None,
    default_max_tokens: int = 48,
    max_tokens_limit: int = 512,
    refresh: float = 1.0,
) -> FastAPI:
    """The app over ``store`` (migrated); ``engine`` serves versions with a local model, ``upstream`` those with an
    endpoint. ``api_key`` (when set) is required as a Bearer token on /v1."""
    app = FastAPI(title="rlhfkit serve", version="1", docs_url=None, redoc_url=None)
    registry = Registry(store)
    router = Router(registry, refresh)
    app.state.store, app.state.router, app.state.engine, app.state.upstream = store, router, engine, upstream
    app.add_middleware(Guard)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e.status, e.message, e.param, e.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        # Name the field and say what is wrong; never repeat the input (pydantic's "input" is left out).
        first = e.errors()[0]
        field = error_field(first, _NAMES)
        message = first.get("msg", "invalid").removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            return error_response(400, "the body is not valid JSON", "body")
        if field == "body" and ": " in message:  # a check across fields names its field first ("value: ...")
            field, message = message.split(": ", 1)
        return error_response(422, f"field '{field}': {message}", field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        log.exception("error answering %s %s", request.method, request.url.path)
        return error_response(500, "internal error (logged on the server)", None, "server_error")

    def authorise(authorization: str | None) -> None:
        if api_key is None:
            return
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(
                401, "send the server's API key as 'Authorization: Bearer KEY'", None, "authentication_error"
            )

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        # ready: every model the server preloads at start is loaded (always true without the built-in engine)
        engine = app.state.engine
        return {"ok": True, "database": store.dialect, "ready": engine is None or engine.ready}

    @app.get("/v1/models")
    def models(authorization: str | None = Header(None)):
        authorise(authorization)
        names = [(a, v.ref) for a, v in registry.aliases().items()]
        names += [(e.name, "experiment") for e in router.experiments.list() if e.status == "running"]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": what} for n, what in names]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request, authorization: str | None = Header(None)):
        authorise(authorization)
        start = time.perf_counter()
        response_id = new_response_id()
        try:
            route = await store.run(router.route, body.model, body.user, response_id)
        except RegistryError as e:
            raise ApiError(404, str(e), "model", "not_found_error") from None
        if route.version.kind != "policy":
            raise ApiError(400, f"model: names a {route.version.kind} ({route.version.ref}), not a policy", "model")
        if route.version.endpoint and app.state.upstream is None:
            raise ApiError(503, f"{route.version.ref} is served by an endpoint; this server has no upstream client")
        if not route.version.endpoint and (app.state.engine is None or route.version.model_path is None):
            raise ApiError(503, f"{route.version.ref} has no local model and no endpoint", None, "server_error")
        max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
        if max_tokens > max_tokens_limit:
            raise ApiError(422, f"field 'max_tokens': at most {max_tokens_limit} on this server", "max_tokens")
        if body.regenerate_of is not None:
            await store.run(_check_regenerated, store, body.regenerate_of, body.user)
        params = GenParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature in (None, 0) else body.temperature,
            top_p=body.top_p or 1.0,
            top_k=1 if body.temperature == 0 else 0,
            stop=tuple(body.stop or ()),
            seed=body.seed,
        )
        messages = body.plain_messages()
        events = _events(app, route, messages, params)
        meta = {"id": response_id, "created": int(time.time()), "model": body.model}
        record = dict(id=response_id, user_id=body.user, route=body.model, experiment=route.experiment, arm=route.arm,
                      version_id=route.version.id, messages=messages, stream=body.stream,
                      regenerate_of=body.regenerate_of)  # fmt: skip
        extension = {"version": route.version.ref, "experiment": route.experiment, "arm": route.arm}
        if body.stream:
            return StreamingResponse(
                _sse(store, events, meta, record, extension, start),
                media_type="text/event-stream",
                headers={"cache-control": "no-store", "x-accel-buffering": "no"},
            )
        text, done, ttft = "", None, None
        async for event in events:
            if event.kind == "delta":
                ttft = ttft if ttft is not None else wall_ms(start)
                text += event.text
            else:
                done = event
        await _store_response(store, record, text, done, ttft, wall_ms(start))
        return {
            **meta,
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": done.finish_reason}
            ],  # fmt: skip
            "usage": _usage(done),
            "rlhfkit": extension,
        }

    @app.post("/v1/feedback", status_code=201)
    async def post_feedback(
        body: FeedbackIn,
        authorization: str | None = Header(None),
        idempotency_key: str | None = Header(None, max_length=100),
    ):
        authorise(authorization)
        if not idempotency_key:
            raise ApiError(422, "header 'Idempotency-Key': required, a fresh random key per feedback (a retry reuses "
                           "it and gets the stored feedback back)", "Idempotency-Key")  # fmt: skip
        try:
            # Returns once committed (on disk, for SQLite: synchronous=FULL), possibly with other feedback.
            row, replayed = await store.transact(submit_feedback, body, idempotency_key)
        except FeedbackError as e:
            raise ApiError(e.status, str(e), str(e).split(":")[0]) from None
        out = {**row, "created_at": row["created_at"].isoformat() + "Z"}
        if replayed:
            return JSONResponse(out, status_code=200, headers={"Idempotent-Replayed": "true"})
        return JSONResponse(out, status_code=201)

    @app.get("/v1/monitor")
    async def monitor(experiment: str | None = None, hours: float = 24.0, authorization: str | None = Header(None)):
        from rlhfkit.serve.monitor import experiment_report, live_figures

        authorise(authorization)
        if not 0 < hours <= 24 * 365:
            raise ApiError(422, "field 'hours': between 0 and 8760", "hours")
        if experiment is not None:
            try:
                return await store.run(experiment_report, store, experiment)
            except RegistryError:  # its message repeats the name asked for: the client's own words
                raise ApiError(404, "field 'experiment': no such experiment", "experiment", "not_found_error") from None
        return await store.run(live_figures, store, hours)

    @app.get("/", include_in_schema=False)
    def chat_page():
        return FileResponse(WEB / "chat.html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


def _check_regenerated(store: Store, response_id: str, user: str | None) -> None:
    from sqlalchemy import select

    from rlhfkit.registry.tables import responses

    with store.read_conn() as conn:
        owner = conn.execute(select(responses.c.user_id).where(responses.c.id == response_id)).first()
    if owner is None or owner.user_id != user:
        raise ApiError(404, "regenerate_of: no such response for this user", "regenerate_of", "not_found_error")


async def _events(app: FastAPI, route: Route, messages: list[dict], params: GenParams) -> AsyncIterator[Event]:
    """The answer's events from the backend that serves the version: its endpoint, else the built-in engine."""
    import asyncio

    from rlhfkit.serve.upstream import UpstreamError

    version = route.version
    if version.endpoint:
        if app.state.upstream is None:
            raise ApiError(503, f"{version.ref} is served by an endpoint and this server has no upstream client")
        try:
            async for event in app.state.upstream.stream(version.endpoint, messages, params):
                yield event
        except UpstreamError as e:
            raise ApiError(502, str(e), None, "upstream_error") from None
        return
    if app.state.engine is None or version.model_path is None:
        raise ApiError(503, f"{version.ref} has no local model and no endpoint to serve it", None, "server_error")
    job = Job(version, messages, params, asyncio.get_running_loop())
    app.state.engine.submit(job)
    try:
        while True:
            event = await job.events.get()
            if event.kind == "error":
                raise ApiError(503, f"{version.ref} could not answer: {event.text}", None, "server_error")
            yield event
            if event.kind == "done":
                return
    finally:
        job.cancelled = True  # the client went away: the engine stops spending time on it


def _usage(done: Event | None) -> dict:
    prompt, completion = (done.prompt_tokens, done.completion_tokens) if done else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _store_response(store: Store, record: dict, text: str, done, ttft, latency, cut: str | None = None) -> None:
    from rlhfkit.evaluate.safety import is_refusal

    row = {**record, "text": text, "finish_reason": done.finish_reason if done else cut,
           "completion_tokens": done.completion_tokens if done else 0, "ttft_ms": ttft, "latency_ms": latency,
           "refusal": is_refusal(text)}  # fmt: skip
    await store.transact(insert_response, row)


async def _sse(store, events, meta, record, extension, start) -> AsyncIterator[bytes]:
    def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
        body = {**meta, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}  # fmt: skip
        return f"data: {json.dumps(body)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    text, done, ttft, stored, cut = "", None, None, False, "cancelled"
    try:
        async for event in events:
            if event.kind == "delta":
                ttft = ttft if ttft is not None else wall_ms(start)
                text += event.text
                yield chunk({"content": event.text})
            else:
                done = event
        # Stored (and on disk) before the last chunk: feedback on an answer the client saw always finds it.
        stored = True
        with anyio.CancelScope(shield=True):  # a client leaving now must not cut the write short
            await _store_response(store, record, text, done, ttft, wall_ms(start))
    except ApiError as e:
        cut = "error"
        yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.kind}})}\n\n".encode()
        return
    finally:
        # A client that went away mid-answer (or an engine that failed in it) had the response's id and part of
        # its text: keep what it was shown, so its feedback finds it. Shielded: the request's task is being
        # cancelled here.
        if not stored:
            with anyio.CancelScope(shield=True):
                await _store_response(store, record, text, None, ttft, wall_ms(start), cut=cut)
    yield chunk({}, done.finish_reason if done else "stop", usage=_usage(done), rlhfkit=extension)
    yield b"data: [DONE]\n\n"
