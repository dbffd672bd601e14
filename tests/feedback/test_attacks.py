"""What an attacker tried (issue 14), against a real server process on SQLite and on PostgreSQL: each
payload gets the right 4xx, never a 500, and no answer repeats what was sent."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import uuid

import httpx
import pytest

from tests.feedback.conftest import serve_until
from tests.feedback.test_api import PAIR, submit

MARK = "M4RK-" + uuid.uuid4().hex[:8]  # sent inside every hostile value; must never come back
MAX32 = 2**31 - 1


def from_address(server, n: int) -> httpx.Client:
    """A client whose connections come from 127.0.0.n (every 127.x address is loopback on Linux), so a
    flood from it spends that address's login budget, not the one the other tests log in from."""
    return httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address=f"127.0.0.{n}"), timeout=30)


def assert_refused(r: httpx.Response, status: int | tuple[int, ...]) -> None:
    wanted = (status,) if isinstance(status, int) else status
    assert r.status_code in wanted, (r.status_code, r.text[:300])
    assert MARK not in r.text, f"the answer repeats the input: {r.text[:300]}"


def raw_request(server, head: str, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head.encode() + body)
        return s.recv(4096)


# ---------------------------------------------------------------- floods and sizes


def test_wrong_password_flood_gets_429_with_retry_after_and_spares_other_addresses(server):
    name, _ = server.new_user(password="the-right-password")
    with from_address(server, 21) as attacker:
        codes = []
        while 429 not in codes and len(codes) < 30:
            r = attacker.post("/api/auth/login", json={"username": name, "password": "wrong-" + MARK})
            codes.append(r.status_code)
            assert MARK not in r.text
        assert codes[:5] == [401] * 5 and codes[-1] == 429  # the account's budget: 5 failures at once
        assert int(r.headers["retry-after"]) >= 1 and "account" in r.json()["detail"]
        # Even the right password waits now: the account's bucket decides before any hashing.
        r = attacker.post("/api/auth/login", json={"username": name, "password": "the-right-password"})
        assert r.status_code == 429
    # Another account, from another address, is untouched.
    other, _ = server.new_user(password="another-right-password")
    with from_address(server, 22) as honest:
        assert honest.post("/api/auth/login", json={"username": other, "password": "another-right-password"}).is_success


def test_a_flood_across_accounts_is_limited_per_address(server):
    with from_address(server, 23) as attacker:
        codes, t0 = [], time.monotonic()
        while 429 not in codes and len(codes) < 60:
            r = attacker.post("/api/auth/login", json={"username": f"nobody{len(codes)}", "password": "x" * 9})
            codes.append(r.status_code)
        # 10 failures per address at once, plus one for every 20 s the flood took (the bucket refills)
        refilled = (time.monotonic() - t0) / 20
        assert codes[-1] == 429 and 10 <= codes.count(401) <= 10 + refilled + 1, (codes, refilled)
    with from_address(server, 24) as guesser:  # invite guesses (no hashing: quick) spend the same budget
        codes = [guesser.post("/api/auth/invite", json={"token": f"guess-{i}"}).status_code for i in range(11)]
        assert codes[:10] == [401] * 10 and codes[10] == 429
        t0 = time.monotonic()
        r = guesser.post("/api/auth/login", json={"username": "admin", "password": "admin-password-1"})
        assert r.status_code == 429 and "address" in r.json()["detail"] and r.headers["retry-after"]
        assert time.monotonic() - t0 >= 0.9  # refused after a pause: a closed-loop flood slows to a crawl
        r = guesser.post("/api/auth/login", content=b"not even JSON", headers={"Content-Type": "application/json"})
        assert r.status_code == 429  # refused before the body is read


def test_login_body_of_100_mb_is_refused_before_it_is_read(server):
    reply = raw_request(
        server,
        f"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100 << 20}\r\n\r\n",
        b"{" * 1000,
    )
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # Without a Content-Length (chunked), it is cut off once the bytes read pass the limit.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /api/labels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        s.settimeout(0.05)
        reply, sent = b"", 0
        while not reply and sent < 64 << 20:
            chunk = b"a" * (64 << 10)
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break
            sent += len(chunk)
            with contextlib.suppress(TimeoutError):
                reply = s.recv(4096)
        s.settimeout(10)
        reply = reply or s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413") and sent <= 4 << 20, (reply[:100], sent)
    assert server.proc.poll() is None


def test_task_uploads_have_their_own_larger_limit(server):
    rows = [{**PAIR, "prompt": f"upload {i} " + "x" * 2000} for i in range(600)]  # ~1.2 MB: over 1 MB
    project = "uploads-" + uuid.uuid4().hex[:6]  # its own project, so these items stay out of other tests' queue
    assert server.admin.post("/api/admin/projects", json={"name": project}).status_code == 201
    r = server.admin.post("/api/admin/tasks", json=rows, params={"project": project})
    assert r.status_code == 201 and r.json()["added"] == 600
    r = server.admin.post("/api/labels", json={"task_id": 1, "answer": {"choice": 0}, "reason": "x" * (2 << 20)})
    assert r.status_code == 413


# ---------------------------------------------------------------- malformed and out-of-range input


def test_out_of_range_ids_are_422_not_500(server):
    _, ann = server.new_user()
    for big in (2**70, MAX32 + 1, -1, 0):
        assert_refused(submit(ann, big, {"choice": 0}), 422)
        assert_refused(ann.get(f"/api/labels/{big}"), 422)
        assert_refused(ann.put(f"/api/labels/{big}", json={"answer": {"choice": 0}}), 422)
        assert_refused(ann.post(f"/api/tasks/{big}/skip"), 422)
        assert_refused(ann.get("/api/labels", params={"task_id": big}), 422)
        assert_refused(server.admin.post(f"/api/review/labels/{big}", json={"status": "accepted"}), 422)
    assert_refused(ann.get("/api/labels", params={"offset": 2**70}), 422)
    assert_refused(ann.get("/api/labels", params={"limit": 10**6}), 422)
    assert_refused(server.admin.get("/api/review/queue", params={"limit": 0}), 422)
    assert_refused(submit(ann, MAX32, {"choice": 0}), 404)  # in range, just not there
    r = ann.post(
        "/api/labels",
        content=b'{"task_id": 1, "answer": {"choice": 0}, "duration_ms": 1e400}',
        headers={"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"},
    )
    assert_refused(r, 422)


HOSTILE_TEXT = [MARK + "\x00", "\udc80" + MARK]  # a NUL; an unpaired surrogate (valid JSON, not storable)


def send(client: httpx.Client, method: str, url: str, body, **kw) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \\udc80 (valid JSON); httpx's own encoder would refuse it
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return client.request(method, url, content=json.dumps(body).encode(), headers=headers, **kw)


@pytest.mark.parametrize("text", HOSTILE_TEXT, ids=["nul", "surrogate"])
def test_text_neither_database_can_store_is_422_everywhere(server, text):
    [task_id] = server.load([{**PAIR, "prompt": f"nul {uuid.uuid4().hex}"}])
    _, ann = server.new_user()
    serve_until(ann, task_id)
    anon = server.client()
    key = {"headers": {"Idempotency-Key": uuid.uuid4().hex}}
    label = {"task_id": task_id, "answer": {"choice": 0}}
    assert_refused(send(anon, "POST", "/api/auth/login", {"username": text, "password": "x" * 9}), 422)
    assert_refused(send(anon, "POST", "/api/auth/login", {"username": "admin", "password": text}), 422)
    assert_refused(send(anon, "POST", "/api/auth/invite", {"token": text}), 422)
    assert_refused(send(ann, "POST", "/api/labels", {**label, "reason": text}, **key), 422)
    assert_refused(send(ann, "POST", "/api/labels", {**label, "answer": {"choice": text}}, **key), 422)
    assert_refused(send(ann, "POST", "/api/labels", {**label, "flags": {text: ["harmful"]}}, **key), 422)
    assert_refused(send(ann, "POST", "/api/labels", {**label, "flags": {"0": [text]}}, **key), 422)
    assert_refused(send(server.admin, "POST", "/api/admin/users", {"username": text}), 422)
    new_project = {"name": "p" + uuid.uuid4().hex[:6], "guidelines": text}
    assert_refused(send(server.admin, "POST", "/api/admin/projects", new_project), 422)
    if "\x00" in text:  # a query string carries bytes: a surrogate cannot be sent in one
        assert_refused(server.admin.get("/api/labels", params={"annotator": text}), 422)
        assert_refused(ann.get("/api/next", params={"project": text}), 422)
        assert_refused(server.admin.get("/api/review/queue", params={"annotator": text}), 422)
    for row in (
        {**PAIR, "prompt": text},
        {**PAIR, "responses": ["a", text]},
        {**PAIR, "id": text},
        {**PAIR, "meta": {"note": text}},
        {**PAIR, "meta": {text: 1}},
        {**PAIR, "responses": [{"text": "a", "model": text}, "b"]},
        {**PAIR, "prompt": [{"role": "user", "content": text}]},
    ):
        assert_refused(send(server.admin, "POST", "/api/admin/tasks", [row]), 422)
    assert server.sql("SELECT count(*) FROM labels WHERE task_id = :t", t=task_id) == [(0,)]


def test_wrong_types_and_broken_json_are_4xx_without_echo(server):
    [task_id] = server.load([{**PAIR, "prompt": f"types {uuid.uuid4().hex}"}])
    _, ann = server.new_user()
    serve_until(ann, task_id)
    bad_bodies = [
        {"task_id": MARK, "answer": MARK, "flags": MARK, "reason": 7, "duration_ms": MARK},
        {"task_id": task_id, "answer": {"choice": [MARK]}},
        {"task_id": task_id, "answer": {"choice": 0.0}},  # equal to 0 but not an index
        {"task_id": task_id, "answer": {"choice": True}},
        [MARK],
        MARK,
    ]
    for body in bad_bodies:
        assert_refused(ann.post("/api/labels", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}), 422)
    raw = [
        b'{"task_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nested past the parser's depth
        b'{"task_id": 1, "answer": {"choice": "\xff\xfe' + MARK.encode() + b'"}}',  # not UTF-8
        b'{"task_id": NaN, "answer": {}}',
        b'{"task_id": 1, "answer": {"choice": 0}',  # truncated
    ]
    for body in raw:
        r = ann.post(
            "/api/labels",
            content=body,
            headers={"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"},
        )
        assert_refused(r, (400, 422))
    assert_refused(
        ann.post(
            "/api/labels", json={"task_id": task_id, "answer": {"choice": 0}}, headers={"Idempotency-Key": MARK + " x"}
        ),
        422,
    )
    assert_refused(server.admin.post("/api/admin/tasks", json={"prompt": MARK}), 422)  # an object, not a list
    r = server.admin.post(
        "/api/admin/tasks",
        content=b'[{"prompt": "x", "responses": ["a", "b"], "meta": {"score": NaN}}]',
        headers={"Content-Type": "application/json"},
    )
    assert_refused(r, 422)
    assert_refused(server.admin.get("/api/admin/export", params={"kind": MARK}), 422)
    assert_refused(server.admin.post(f"/api/admin/users/{MARK}/invite"), 404)
    assert_refused(ann.get(f"/api/projects/{MARK}"), 404)
    assert server.sql("SELECT count(*) FROM labels WHERE task_id = :t", t=task_id) == [(0,)]


def test_422_answers_never_contain_the_submitted_values(server):
    """A value longer than allowed, of the wrong type, or simply wrong: the answer names the field
    and what is expected, never the value (a password typed in the username box, say)."""
    secret = MARK + "-secret-password"
    cases = [
        server.request("POST", "/api/auth/login", json={"username": secret * 10, "password": secret}),
        server.request("POST", "/api/auth/login", json={"username": "x", "password": secret * 100}),
        server.request("POST", "/api/auth/login", json={"username": ["x"], "password": {"p": secret}}),
        server.request("POST", "/api/auth/invite", json={"token": secret, "password": "short"}),
        server.admin.post("/api/admin/users", json={"username": secret + "!", "role": "annotator"}),
        server.admin.post("/api/admin/users", json={"username": "ok-name", "role": secret}),
        server.admin.post("/api/admin/tasks", json=[{"prompt": secret, "responses": [secret], "kind": secret}]),
        server.admin.post("/api/admin/tasks", json=[{"prompt": "p", "responses": ["a", "b"], "kind": secret}]),
        server.admin.post("/api/admin/tasks", json=[{"prompt": "p", "responses": ["a", "b"], "scale": secret}]),
        server.admin.post(
            "/api/admin/tasks", json=[{"prompt": "p", "responses": ["a", "b"], "gold": {"choice": secret}}]
        ),
    ]
    # a client's own keys are input too: a dict field's keys, a field the schema does not have
    [task_id] = server.load([PAIR])
    _, ann = server.new_user()
    serve_until(ann, task_id)
    cases.append(submit(ann, task_id, {"choice": 0}, flags={secret: "not a list"}))
    cases.append(submit(ann, task_id, {"choice": 0}, flags={"0": {secret: 1}}))
    for r in cases:
        assert r.status_code in (401, 422), (r.status_code, r.text[:200])
        assert MARK not in r.text and "secret" not in r.text, r.text[:300]
    assert "flags.<key>" in cases[-2].json()["detail"]  # still says where


def test_every_route_answers_hostile_bodies_and_parameters_with_4xx(server):
    """Every API route, called by an admin with a body of wrong types and hostile query parameters.
    A fresh admin account: its 200-request burst covers the ~180 calls, so none is throttled (a 429
    would hide what the route itself does)."""
    spec = server.request("GET", "/openapi.json").json()
    _, admin = server.new_user("admin")
    checked = 0
    for path, methods in spec["paths"].items():
        for method in methods:
            url = re.sub(r"\{[^}]+\}", MARK, path)
            for body in ({"x": MARK, "task_id": [MARK]}, [MARK] * 3, MARK):
                r = admin.request(method.upper(), url, json=body, params={"project": MARK + "\x00", "limit": MARK})
                assert r.status_code < 500 and r.status_code != 429, (method, path, r.status_code, r.text[:200])
                assert MARK not in r.text, (method, path, r.text[:200])
                checked += 1
    assert checked >= 60
    assert server.proc.poll() is None


# ---------------------------------------------------------------- redirects

OFF_SITE = [
    "/%5Cexample.org/",  # /\example.org/ once decoded: browsers read it as //example.org/
    "/\\example.org/",
    "//evil.example",
    "https://evil.example",
    "http:evil.example",
    "/\\/evil.example",
    "/%2F%2Fevil.example",  # decodes to ///evil.example
    "%2F%2Fevil.example",
    "/%09/evil.example",  # a tab, which browsers drop: //evil.example
    "/\t/evil.example",
    " //evil.example",
    "javascript:alert(1)",
    "\\\\evil.example",
]


@pytest.mark.parametrize("target", OFF_SITE)
def test_login_page_drops_an_off_site_next(server, target):
    r = server.request("GET", "/login", params={"next": target})
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_login_page_keeps_a_same_site_next(server):
    for target in ("/admin", "/history?project=default", "/review#top"):
        assert server.request("GET", "/login", params={"next": target}).status_code == 200


# ---------------------------------------------------------------- accounts


def test_deactivate_role_change_and_revoke_take_effect_at_once(server):
    name, ann = server.new_user(password="first-password")
    assert ann.get("/api/me").status_code == 200
    r = server.admin.patch(f"/api/admin/users/{name}", json={"role": "reviewer"})
    assert r.status_code == 200 and r.json()["role"] == "reviewer"
    assert ann.get("/api/review/queue").status_code == 200  # the same session, the new role
    r = server.admin.patch(f"/api/admin/users/{name}", json={"role": "annotator"})
    assert ann.get("/api/review/queue").status_code == 403

    r = server.admin.post(f"/api/admin/users/{name}/revoke")
    assert r.status_code == 200 and r.json()["sessions_ended"] == 1
    assert ann.get("/api/me").status_code == 401

    ann = server.login(name, "first-password")
    r = server.admin.patch(f"/api/admin/users/{name}", json={"active": False})
    assert r.status_code == 200 and r.json()["active"] is False and r.json()["sessions"] == 0
    assert ann.get("/api/me").status_code == 401
    r = server.request("POST", "/api/auth/login", json={"username": name, "password": "first-password"})
    assert r.status_code == 401  # same answer as a wrong password: says nothing about the account
    server.admin.patch(f"/api/admin/users/{name}", json={"active": True})
    assert server.login(name, "first-password").get("/api/me").status_code == 200


def test_a_new_invite_or_a_password_change_ends_old_sessions(server):
    name, first = server.new_user(password="first-password")
    second = server.login(name, "first-password")
    r = second.post("/api/auth/password", json={"current_password": "wrong-one!", "new_password": "second-password"})
    assert r.status_code == 403
    r = second.post(
        "/api/auth/password", json={"current_password": "first-password", "new_password": "second-password"}
    )
    assert r.status_code == 200
    fresh = server.client(r.json()["token"])
    assert first.get("/api/me").status_code == 401 and second.get("/api/me").status_code == 401
    assert fresh.get("/api/me").status_code == 200
    assert (
        server.request("POST", "/api/auth/login", json={"username": name, "password": "first-password"}).status_code
        == 401
    )

    token = server.admin.post(f"/api/admin/users/{name}/invite").json()["invite_token"]
    assert fresh.get("/api/me").status_code == 401  # an invite is a reset: the old sessions end
    older = server.admin.post(f"/api/admin/users/{name}/invite").json()["invite_token"]
    assert server.request("POST", "/api/auth/invite", json={"token": token}).status_code == 401  # superseded
    r = server.request("POST", "/api/auth/invite", json={"token": older, "password": "third-password"})
    assert r.status_code == 200
    assert server.login(name, "third-password").get("/api/me").status_code == 200


def test_the_last_active_admin_cannot_be_demoted_or_deactivated(server):
    admins = [u for u in server.admin.get("/api/admin/users").json() if u["role"] == "admin" and u["active"]]
    if len(admins) == 1:
        assert server.admin.patch("/api/admin/users/admin", json={"role": "annotator"}).status_code == 409
        assert server.admin.patch("/api/admin/users/admin", json={"active": False}).status_code == 409
    name, helper = server.new_user("admin")
    assert helper.patch(f"/api/admin/users/{name}", json={"active": False}).status_code == 200  # another admin remains
    assert helper.get("/api/me").status_code == 401


def test_logins_wait_for_no_write_lock(server):
    """Twenty wrong-password logins in flight do not hold up a label: hashing runs outside the store's
    write lock (and behind the hashing gate), so the submission is answered while they are checked."""
    [task_id] = server.load([{**PAIR, "prompt": f"lock {uuid.uuid4().hex}"}])
    _, ann = server.new_user()
    serve_until(ann, task_id)
    import threading

    def flood(n):
        with from_address(server, 30 + n) as c:
            for _ in range(4):
                c.post("/api/auth/login", json={"username": f"ghost{n}", "password": "x" * 9})

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    r = submit(ann, task_id, {"choice": 1})
    took = time.perf_counter() - t0
    for t in threads:
        t.join()
    assert r.status_code == 201
    # Generous: a queue of 20 hashes at ~0.2 s each would take ~4 s if the label waited behind them.
    assert took < 2.0, took
