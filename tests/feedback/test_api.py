"""The HTTP API against a real server process on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.feedback.conftest import serve_until

PAIR = {"prompt": "Which is kinder?", "responses": ["Thank you!", "Whatever."], "kind": "pairwise"}


def submit(client, task_id, answer, key=None, **extra):
    return client.post(
        "/api/labels",
        json={"task_id": task_id, "answer": answer, **extra},
        headers={"Idempotency-Key": key or uuid.uuid4().hex},
    )


def test_health_names_the_database(server):
    body = server.request("GET", "/healthz").json()
    assert body["ok"] is True and body["database"] in ("sqlite", "postgresql")


def test_login_sets_a_safe_cookie_and_rejects_wrong_password(server):
    name, _ = server.new_user()
    assert (
        server.request("POST", "/api/auth/login", json={"username": name, "password": "wrong-one"}).status_code == 401
    )
    assert (
        server.request("POST", "/api/auth/login", json={"username": "nobody", "password": "x" * 9}).status_code == 401
    )
    r = server.request("POST", "/api/auth/login", json={"username": name, "password": "a-good-password"})
    cookie = r.headers["set-cookie"].lower()
    assert r.status_code == 200 and "httponly" in cookie and "samesite=lax" in cookie
    with server.client(r.json()["token"], cookie=True) as browser_like:
        assert browser_like.get("/api/me").json()["username"] == name


def test_label_lands_in_the_database(server):
    [task_id] = server.load([PAIR])
    name, ann = server.new_user()
    task = serve_until(ann, task_id)
    assert {r["index"] for r in task["responses"]} == {0, 1}
    r = submit(ann, task_id, {"choice": 1}, reason="B is rude", flags={"1": ["unhelpful"]}, duration_ms=4200)
    assert r.status_code == 201, r.text
    label = r.json()
    assert label["answer"] == {"choice": 1} and label["annotator"] == name
    assert ann.get(f"/api/labels/{label['id']}").json()["reason"] == "B is rude"
    rows = server.sql(
        "SELECT l.task_id, l.reason, l.duration_ms, t.n_labels FROM labels l JOIN tasks t "
        "ON t.id = l.task_id WHERE l.id = :id",
        id=label["id"],
    )
    assert rows == [(task_id, "B is rude", 4200, 1)]
    assert ann.get("/api/labels").json()[0]["id"] == label["id"]


def test_every_question_type_round_trips(server):
    ids = server.load(
        [
            {"prompt": "rank", "responses": ["a", "b", "c"], "kind": "ranking"},
            {"prompt": "rate", "responses": ["a", "b"], "kind": "rating", "scale": 7},
            {"prompt": "thumbs", "responses": ["a", "b"], "kind": "thumbs"},
            {**PAIR, "prompt": "tie?"},
            {**PAIR, "prompt": "both bad?"},
        ]
    )
    answers = [
        {"ranking": [2, 0, 1]},
        {"ratings": [7, 1]},
        {"thumbs": [True, False]},
        {"choice": "tie"},
        {"choice": "both_bad"},
    ]
    _, ann = server.new_user()
    for task_id, answer in zip(ids, answers):
        serve_until(ann, task_id)
        r = submit(ann, task_id, answer)
        assert r.status_code == 201 and r.json()["answer"] == answer, r.text


def test_invalid_answers_are_refused_with_the_field_named(server):
    ids = server.load(
        [
            {"prompt": "rank", "responses": ["a", "b", "c"], "kind": "ranking"},
            {"prompt": "rate", "responses": ["a", "b"], "kind": "rating", "scale": 5},
        ]
    )
    _, ann = server.new_user()
    serve_until(ann, ids[0])
    for ranking in ([0, 0, 1], [0, 1, 2, "x"], [0, 1, 2, None], [0, 1, 2, [0]], [True, 0, 2], [0, 1, 2.0]):
        r = submit(ann, ids[0], {"ranking": ranking})
        assert r.status_code == 422 and "answer.ranking" in r.json()["detail"], ranking
    r = submit(ann, ids[0], {"ranking": [0, 1, 2]}, flags={"7": ["harmful"]})
    assert r.status_code == 422 and "flags" in r.json()["detail"] and "7" not in r.json()["detail"]
    r = submit(ann, ids[0], {"ranking": [0, 1, 2]}, flags={"1": ["harmful"], "01": []})  # "01" would overwrite "1"
    assert r.status_code == 422 and "flags" in r.json()["detail"]
    serve_until(ann, ids[1])
    r = submit(ann, ids[1], {"ratings": [3, 6]})
    assert r.status_code == 422 and "answer.ratings.1" in r.json()["detail"]
    assert server.sql("SELECT count(*) FROM labels WHERE task_id IN (:a, :b)", a=ids[0], b=ids[1]) == [(0,)]


def test_retry_with_same_key_returns_the_stored_label(server):
    [task_id] = server.load([PAIR])
    _, ann = server.new_user()
    serve_until(ann, task_id)
    key = uuid.uuid4().hex
    first = submit(ann, task_id, {"choice": 0}, key=key)
    again = submit(ann, task_id, {"choice": 0}, key=key)
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]
    other_task = server.load([PAIR])[0]
    assert submit(ann, other_task, {"choice": 0}, key=key).status_code == 422  # key reused elsewhere
    assert submit(ann, task_id, {"choice": 1}).status_code == 409  # a second label for the same item
    assert server.sql("SELECT count(*) FROM labels WHERE idempotency_key = :k", k=key) == [(1,)]


def test_concurrent_retries_store_one_label(server):
    [task_id] = server.load([PAIR])
    _, ann = server.new_user()
    serve_until(ann, task_id)
    key = uuid.uuid4().hex
    token = ann.headers["authorization"]

    def send(_):
        with httpx.Client(base_url=server.url, headers={"Authorization": token}, timeout=30) as c:
            return submit(c, task_id, {"choice": 0}, key=key)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(8)))
    assert sorted(r.status_code for r in results) == [200] * 7 + [201], [(r.status_code, r.text[:300]) for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    assert server.sql("SELECT count(*) FROM labels WHERE task_id = :t", t=task_id) == [(1,)]
    assert server.sql("SELECT n_labels FROM tasks WHERE id = :t", t=task_id) == [(1,)]


def test_a_task_must_be_served_before_it_is_labelled(server):
    [task_id] = server.load([PAIR])
    _, ann = server.new_user()
    r = submit(ann, task_id, {"choice": 0})
    assert r.status_code == 403 and "not served" in r.json()["detail"]
    assert submit(ann, 10**9, {"choice": 0}).status_code == 404


def test_skipped_items_are_not_served_again(server):
    [task_id] = server.load([PAIR])
    _, ann = server.new_user()
    serve_until(ann, task_id)
    assert ann.post(f"/api/tasks/{task_id}/skip").status_code == 204
    seen = set()
    while (task := ann.get("/api/next").json()["task"]) is not None:
        seen.add(task["id"])
        ann.post(f"/api/tasks/{task['id']}/skip")
    assert task_id not in seen


def test_changing_ones_own_label(server):
    [task_id] = server.load([PAIR])
    _, ann = server.new_user()
    serve_until(ann, task_id)
    label = submit(ann, task_id, {"choice": 0}).json()
    r = ann.put(f"/api/labels/{label['id']}", json={"answer": {"choice": "tie"}, "reason": "on reflection"})
    assert r.status_code == 200 and r.json()["answer"] == {"choice": "tie"}
    assert server.sql("SELECT reason FROM labels WHERE id = :i", i=label["id"]) == [("on reflection",)]


def test_invite_token_logs_in_once_and_sets_a_password(server):
    r = server.admin.post("/api/admin/users", json={"username": f"inv-{uuid.uuid4().hex[:6]}", "role": "annotator"})
    token, name = r.json()["invite_token"], r.json()["user"]["username"]
    assert token
    r = server.request("POST", "/api/auth/invite", json={"token": token, "password": "chosen-password"})
    assert r.status_code == 200 and r.json()["user"]["username"] == name
    assert server.request("POST", "/api/auth/invite", json={"token": token}).status_code == 401
    assert server.login(name, "chosen-password").get("/api/me").status_code == 200


def test_sessions_expire_and_logout_ends_them(server):
    name, ann = server.new_user()
    assert ann.get("/api/me").status_code == 200
    server.sql(
        "UPDATE sessions SET expires_at = :past WHERE user_id = (SELECT id FROM users WHERE username = :u)",
        past="2000-01-01 00:00:00",
        u=name,
    )
    assert ann.get("/api/me").status_code == 401
    ann = server.login(name, "a-good-password")
    assert ann.post("/api/auth/logout").status_code == 204
    assert ann.get("/api/me").status_code == 401


def test_openapi_docs_are_served_without_a_cdn(server):
    spec = server.request("GET", "/openapi.json").json()
    assert "/api/labels" in spec["paths"] and "/api/next" in spec["paths"]
    page = server.request("GET", "/docs").text
    assert "/static/swagger/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert server.request("GET", "/static/swagger/swagger-ui-bundle.js").status_code == 200


def test_admin_export_reads_back_as_training_records(server, tmp_path):
    from rlhfkit.data import read_records

    [task_id] = server.load([{**PAIR, "prompt": f"export {uuid.uuid4().hex}"}])
    name, ann = server.new_user()
    serve_until(ann, task_id)
    submit(ann, task_id, {"choice": 0})
    r = server.admin.get("/api/admin/export", params={"kind": "comparison"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    path = tmp_path / "c.jsonl"
    path.write_text(r.text)
    records, _ = read_records(path, "comparison")
    mine = [rec for rec in records if rec.annotator == name]
    assert len(mine) == 1 and mine[0].chosen == "Thank you!" and mine[0].rejected == "Whatever."
