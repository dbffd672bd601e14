"""Security: who may call what, injection strings stored verbatim, CSRF, secrets at rest."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.feedback.conftest import serve_until
from tests.feedback.test_api import PAIR, submit

XSS = [
    '<script>alert("x")</script>',
    "<img src=x onerror=alert(1)>",
    '"><svg onload=alert(1)>',
    "javascript:alert(1)",
    "<iframe src='//evil'></iframe>",
]
SQLI = ["'; DROP TABLE labels; --", "1' OR '1'='1", 'Robert"); DROP TABLE users;--', "\\'; SELECT pg_sleep(5); --"]
PUBLIC = {("POST", "/api/auth/login"), ("POST", "/api/auth/invite"), ("POST", "/api/auth/logout"), ("GET", "/healthz")}


def routes(server) -> list[tuple[str, str]]:
    spec = server.request("GET", "/openapi.json").json()
    out = []
    for path, methods in spec["paths"].items():
        for method in methods:
            out.append((method.upper(), re.sub(r"\{[^}]+\}", "1", path)))
    return out


def test_every_api_route_needs_a_session(server):
    checked = 0
    for method, path in routes(server):
        if (method, path) in PUBLIC:
            continue
        r = server.request(method, path, json={})
        assert r.status_code == 401, f"{method} {path} answered {r.status_code} without a session"
        checked += 1
    assert checked >= 12
    bogus = server.request("GET", "/api/me", headers={"Authorization": "Bearer not-a-token"})
    assert bogus.status_code == 401


def test_annotators_get_403_on_admin_and_review_routes(server):
    _, ann = server.new_user()
    admin_routes = [(m, p) for m, p in routes(server) if p.startswith(("/api/admin", "/api/review"))]
    assert len(admin_routes) >= 7
    for method, path in admin_routes:
        r = ann.request(method, path, json={})
        assert r.status_code == 403, f"{method} {path} answered {r.status_code} to an annotator"
    _, reviewer = server.new_user("reviewer")
    assert reviewer.get("/api/review/queue").status_code == 200
    assert reviewer.get("/api/admin/stats").status_code == 403
    token = ann.headers["authorization"].split()[1]
    with server.client(token, cookie=True) as page:
        assert page.get("/admin").status_code == 403


def test_one_annotator_cannot_read_or_change_anothers_labels(server):
    [task_id] = server.load([PAIR])
    alice_name, alice = server.new_user()
    bob_name, bob = server.new_user()
    serve_until(alice, task_id)
    label = submit(alice, task_id, {"choice": 0}, reason="alice's reason").json()
    assert bob.get(f"/api/labels/{label['id']}").status_code == 404
    r = bob.put(f"/api/labels/{label['id']}", json={"answer": {"choice": 1}, "reason": "bob was here"})
    assert r.status_code == 404
    assert bob.get("/api/labels", params={"annotator": alice_name}).status_code == 403
    assert all(lab["annotator"] == bob_name for lab in bob.get("/api/labels").json())
    assert all(lab["annotator"] == alice_name for lab in alice.get("/api/labels").json())
    assert server.sql("SELECT answer, reason FROM labels WHERE id = :i", i=label["id"])[0][1] == "alice's reason"
    # Bob cannot label under Alice's name either: the annotator is always the session's user.
    serve_until(bob, task_id)
    assert submit(bob, task_id, {"choice": 1}, annotator_id=1).json()["annotator"] == bob_name


@pytest.mark.parametrize("payload", XSS + SQLI)
def test_hostile_strings_are_stored_and_returned_verbatim(server, payload):
    [task_id] = server.load([{"prompt": payload, "responses": [payload, "plain " + payload], "kind": "pairwise"}])
    _, ann = server.new_user()
    task = serve_until(ann, task_id)
    assert task["prompt"] == payload and {r["text"] for r in task["responses"]} == {payload, "plain " + payload}
    label = submit(ann, task_id, {"choice": 0}, reason=payload).json()
    assert ann.get(f"/api/labels/{label['id']}").json()["reason"] == payload
    assert server.sql("SELECT reason FROM labels WHERE id = :i", i=label["id"]) == [(payload,)]
    assert server.sql("SELECT prompt FROM tasks WHERE id = :i", i=task_id) == [(payload,)]


def test_sql_injection_in_login_and_queries_changes_nothing(server):
    before = server.sql("SELECT count(*) FROM users")
    for attempt in SQLI:
        # A long timeout: the password check runs at idle CPU priority, slow when the machine is saturated
        r = server.request("POST", "/api/auth/login", json={"username": attempt, "password": attempt}, timeout=60)
        assert r.status_code == 401
        r = server.admin.get("/api/labels", params={"annotator": attempt})
        assert r.status_code == 200 and r.json() == []
        r = server.admin.post("/api/admin/users", json={"username": attempt, "role": "annotator"})
        assert r.status_code == 422 and "username" in r.json()["detail"]
    assert server.sql("SELECT count(*) FROM users") == before
    assert server.sql("SELECT count(*) FROM labels")[0][0] >= 0  # the table is still there


def test_cookie_requests_that_change_state_need_the_csrf_header(server):
    name, ann = server.new_user()
    [task_id] = server.load([PAIR])
    serve_until(ann, task_id)
    token = ann.headers["authorization"].split()[1]
    with server.client(token, cookie=True) as browser:
        body = {"task_id": task_id, "answer": {"choice": 0}}
        r = browser.post("/api/labels", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 403 and "X-Requested-With" in r.json()["detail"]
        r = browser.post(
            "/api/labels", json=body, headers={"Idempotency-Key": uuid.uuid4().hex, "X-Requested-With": "rlhfkit"}
        )
        assert r.status_code == 201


def test_pages_forbid_inline_script_and_framing(server):
    for path in ("/login", "/static/label.js"):
        r = server.request("GET", path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in csp and r.headers["x-content-type-options"] == "nosniff"
    assert server.request("GET", "/").status_code in (303, 307)  # no session: off to the login page


def test_secrets_at_rest_are_hashed(server):
    name, ann = server.new_user(password="plain-text-password")
    [(stored,)] = server.sql("SELECT password_hash FROM users WHERE username = :u", u=name)
    assert stored.startswith("$argon2id$") and "plain-text-password" not in stored
    token = ann.headers["authorization"].split()[1]
    hashes = [h for (h,) in server.sql("SELECT token_hash FROM sessions")]
    assert token not in hashes and len(hashes[0]) == 64
