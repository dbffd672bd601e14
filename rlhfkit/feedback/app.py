"""The FastAPI application: auth endpoints, the web pages, security headers, and the routers.

Run it with ``rlhfkit annotate serve`` (see cli.py); build it in code with ``create_app(store, ...)``.
"""

from __future__ import annotations

from datetime import timezone
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select, text

from rlhfkit.feedback import auth
from rlhfkit.feedback.active import Scorer
from rlhfkit.feedback.db import Store
from rlhfkit.feedback.models import User
from rlhfkit.feedback.routes_admin import admin, review
from rlhfkit.feedback.routes_label import router as label_router
from rlhfkit.feedback.schemas import InviteIn, LoginIn, SessionOut, UserOut
from rlhfkit.feedback.store import QueueSettings

WEB = Path(__file__).parent / "web"
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
            and path not in ("/api/auth/login", "/api/auth/invite")
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
    store: Store, settings: QueueSettings | None = None, session_hours: float = 12, scorer: Scorer | None = None
) -> FastAPI:
    app = FastAPI(
        title="rlhfkit annotation service",
        version="1",
        docs_url=None,
        redoc_url=None,
        description="Collect pairwise, ranking, rating and thumbs feedback on model responses. "
        "Log in with POST /api/auth/login; scripts send the returned token as "
        "'Authorization: Bearer <token>'.",
    )
    app.state.store = store
    app.state.settings = settings or QueueSettings()
    app.state.session_hours = session_hours
    app.state.scorer = scorer

    app.add_middleware(SecurityMiddleware)

    def set_cookie(response: Response, token: str) -> None:
        # Not marked Secure: the server speaks plain HTTP on loopback; behind a TLS proxy, let the
        # proxy add Secure (see docs/feedback.md).
        response.set_cookie(
            auth.COOKIE, token, max_age=int(session_hours * 3600), httponly=True, samesite="lax", path="/"
        )

    def session_out(db, user: User, response: Response) -> SessionOut:
        token, expires = auth.start_session(db, user, session_hours)
        db.commit()
        set_cookie(response, token)
        return SessionOut(
            user=UserOut(id=user.id, username=user.username, role=user.role),
            token=token,
            expires_at=expires.replace(tzinfo=timezone.utc),
        )

    @app.post("/api/auth/login", response_model=SessionOut, tags=["auth"])
    def login(body: LoginIn, response: Response) -> SessionOut:
        with store.write() as db:
            user = db.scalar(select(User).where(User.username == body.username))
            if not auth.check_password(user, body.password):
                raise HTTPException(401, "username or password is wrong")
            return session_out(db, user, response)

    @app.post("/api/auth/invite", response_model=SessionOut, tags=["auth"], summary="Log in with an invite token")
    def redeem(body: InviteIn, response: Response) -> SessionOut:
        with store.write() as db:
            try:
                user = auth.redeem_invite(db, body.token)
                if body.password:
                    user.password_hash = auth.hash_password(body.password)
            except auth.AuthError as e:
                raise HTTPException(401 if "token" in str(e) else 422, str(e)) from None
            return session_out(db, user, response)

    @app.post("/api/auth/logout", status_code=204, tags=["auth"])
    def logout(request: Request) -> Response:
        token = auth.request_token(request)
        if token:
            with store.write() as db:
                auth.end_session(db, token)
                db.commit()
        response = Response(status_code=204)
        response.delete_cookie(auth.COOKIE, path="/")
        return response

    @app.get("/api/me", response_model=UserOut, tags=["auth"])
    def me(user: User = Depends(auth.current_user)) -> UserOut:
        return UserOut(id=user.id, username=user.username, role=user.role)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict:
        with store.read() as db:
            db.execute(text("SELECT 1"))
        return {"ok": True, "database": store.dialect, "strategy": app.state.settings.strategy}

    app.include_router(label_router)
    app.include_router(admin)
    app.include_router(review)
    _pages(app, store)
    return app


def _pages(app: FastAPI, store: Store) -> None:

    def page_user(request: Request) -> User | None:
        with store.read() as db:
            return auth.user_for_token(db, request.cookies.get(auth.COOKIE))

    @app.get("/", include_in_schema=False)
    def label_page(request: Request):
        if page_user(request) is None:
            return RedirectResponse("/login", status_code=303)
        return FileResponse(WEB / "label.html")

    @app.get("/login", include_in_schema=False)
    def login_page():
        return FileResponse(WEB / "login.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page(request: Request):
        user = page_user(request)
        if user is None:
            return RedirectResponse("/login?next=/admin", status_code=303)
        if auth.RANK[user.role] < auth.RANK["reviewer"]:
            return HTMLResponse("<h1>403</h1><p>This page is for reviewers and admins.</p>", status_code=403)
        return FileResponse(WEB / "admin.html")

    try:  # Swagger UI's files ship in the swagger-ui-bundle package, so /docs needs no CDN.
        import swagger_ui_bundle

        app.mount("/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")
        have_swagger = True
    except ImportError:
        have_swagger = False
    # After /static/swagger: Starlette tries mounts in order and /static would swallow it.
    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs():
        if not have_swagger:
            return HTMLResponse(
                "<h1>API</h1><p>Install swagger-ui-bundle for the interactive page; the "
                "OpenAPI document is at <a href='/openapi.json'>/openapi.json</a>.</p>"
            )
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="rlhfkit annotation API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )
