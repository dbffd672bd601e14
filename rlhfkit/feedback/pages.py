"""The web pages (static HTML shells filled by their scripts from the API), the static files and /docs.

A page that needs a session sends a browser without one to ``/login?next=<the page's path>``; the
login page itself refuses a ``next`` that is not a path on this site (``limits.safe_next``) by sending
the browser to plain ``/login``, and its script checks the target again before going there.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from rlhfkit.feedback import auth
from rlhfkit.feedback.limits import safe_next
from rlhfkit.feedback.models import User

WEB = Path(__file__).parent / "web"
# page path -> (file, the role it needs)
PAGES = {
    "/": ("label.html", "annotator"),
    "/history": ("history.html", "annotator"),
    "/guidelines": ("guidelines.html", "annotator"),
    "/review": ("review.html", "reviewer"),
    "/leaderboard": ("leaderboard.html", "reviewer"),
    "/admin": ("admin.html", "admin"),
}
FORBIDDEN = "<!doctype html><title>403</title><h1>403</h1><p>Your account's role cannot open this page.</p>"


def add_pages(app: FastAPI) -> None:
    store = app.state.store

    def page_user(request: Request) -> User | None:
        with store.read_conn() as conn:
            return auth.user_for_token(conn, request.cookies.get(auth.COOKIE))

    def page(path: str, filename: str, role: str):
        def show(request: Request):
            user = page_user(request)
            if user is None:
                # The page's own path, never the request's query: nothing from the request is reflected.
                return RedirectResponse("/login" if path == "/" else f"/login?next={path}", status_code=303)
            if auth.RANK[user.role] < auth.RANK[role]:
                if path == "/admin" and auth.RANK[user.role] >= auth.RANK["reviewer"]:
                    return RedirectResponse("/review", status_code=303)
                return HTMLResponse(FORBIDDEN, status_code=403)
            return FileResponse(WEB / filename)

        app.add_api_route(path, show, methods=["GET"], include_in_schema=False)

    for path, (filename, role) in PAGES.items():
        page(path, filename, role)

    @app.get("/login", include_in_schema=False)
    def login_page(request: Request):
        target = request.query_params.get("next")
        if target is not None and safe_next(target) is None:
            return RedirectResponse("/login", status_code=303)  # an off-site target: drop it
        return FileResponse(WEB / "login.html")

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
