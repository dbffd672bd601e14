"""The FastAPI application: middleware (security headers, CSRF, body limits), error handlers, routers.

Run it with ``rlhfkit annotate serve`` (see cli.py); build it in code with ``create_app(store, ...)``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DataError

from rlhfkit.feedback import auth
from rlhfkit.feedback.active import Scorer
from rlhfkit.feedback.db import Store
from rlhfkit.feedback.limits import Guards, Limits, ShieldMiddleware, database_refused, validation_error
from rlhfkit.feedback.pages import add_pages
from rlhfkit.feedback.projects import ProjectCache
from rlhfkit.feedback.routes_admin import admin
from rlhfkit.feedback.routes_auth import me_router
from rlhfkit.feedback.routes_auth import router as auth_router
from rlhfkit.feedback.routes_label import router as label_router
from rlhfkit.feedback.routes_review import review
from rlhfkit.feedback.store import QueueSettings

# Model text is only ever put into the page with textContent; this policy is the second line of
# defence: no inline script, no script from anywhere but this server, no plugins, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
# Swagger UI's page starts itself with an inline script; it shows only our own API description.
DOCS_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


class SecurityMiddleware:
    """CSRF check and security headers, as plain ASGI (Starlette's BaseHTTPMiddleware costs a task
    group and a body stream per request, which showed in the load test)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, headers = scope["path"], dict(scope["headers"])
        # CSRF: a cookie rides along on cross-site requests, a custom header cannot (it needs a CORS
        # preflight, which this server never grants). Bearer tokens are not ambient, so need nothing.
        # Login and invite redemption act on no existing session, so they are exempt.
        if (
            scope["method"] in UNSAFE
            and path.startswith("/api/")
            and path not in ("/api/auth/login", "/api/auth/invite")  # no session to ride on yet
            and auth.COOKIE.encode() in headers.get(b"cookie", b"")
            and b"authorization" not in headers
            and b"x-requested-with" not in headers
        ):
            response = JSONResponse(
                {
                    "detail": "cookie-authenticated requests that change state need the header "
                    "'X-Requested-With' (CSRF protection)"
                },
                status_code=403,
            )
            return await response(scope, receive, send)
        extra = [
            (b"content-security-policy", (DOCS_CSP if path == "/docs" else CSP).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if path.startswith("/api/"):
            extra.append((b"cache-control", b"no-store"))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    store: Store,
    settings: QueueSettings | None = None,
    session_hours: float = 12,
    scorer: Scorer | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    app = FastAPI(
        title="rlhfkit annotation service",
        version="2",
        docs_url=None,
        redoc_url=None,
        description="Collect pairwise, ranking, rating and thumbs feedback on model responses. "
        "Log in with POST /api/auth/login; scripts send the returned token as "
        "'Authorization: Bearer <token>'. Errors name the field and never repeat the value sent.",
    )
    app.state.store = store
    app.state.settings = settings or QueueSettings()
    app.state.session_hours = session_hours
    app.state.scorer = scorer
    app.state.limits = limits = limits or Limits()
    app.state.guards = guards = Guards(limits)
    app.state.projects = ProjectCache(store)

    # Outermost last: the shield (login flood, body limits) sees a request before anything reads it.
    app.add_middleware(SecurityMiddleware)
    app.add_middleware(ShieldMiddleware, limits=limits, guards=guards)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(DataError, database_refused)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict:
        with store.read() as db:
            db.execute(text("SELECT 1"))
        return {"ok": True, "database": store.dialect, "strategy": app.state.settings.strategy}

    app.include_router(auth_router)
    app.include_router(me_router)
    app.include_router(label_router)
    app.include_router(admin)
    app.include_router(review)
    add_pages(app)
    return app
