"""``rlhfkit serve`` as a real server process on SQLite and PostgreSQL: OpenAI-compatible answers streamed and not,
every response stored with its version and user, feedback of every kind stored once per idempotency key, sticky
A/B arms, promotion and rollback without a restart, hostile input answered with a 4xx that does not echo it, an
OpenAI-compatible upstream (a second server), an API key."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from rlhfkit.feedback.db import Store
from rlhfkit.registry.experiments import Arm, Experiments
from rlhfkit.registry.store import Registry
from rlhfkit.registry.tables import feedback, responses
from tests.production.conftest import ServeServer, tiny_policy

REPO = Path(__file__).resolve().parents[2]
ASK = "what is the capital of france ?"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    db = str(tmp / "prod.db") if request.param == "sqlite" else request.getfixturevalue("postgres")()
    registry = Registry.open(db)
    for seed in (0, 1):
        registry.register(str(tiny_policy(tmp_path_factory.getbasetemp(), f"tiny-{seed}", seed)), kind="policy")
    registry.promote("champion", "policy:1")
    Experiments(registry).create("exp", [Arm("control", "policy:1", 1), Arm("treatment", "policy:2", 1)])
    registry.close()
    server = ServeServer(db, tmp, "--refresh", "0.2").start()
    yield server
    server.stop()


def rows(db: str, table, **where):
    store = Store(db)
    try:
        with store.read_conn() as conn:
            query = select(table)
            for name, value in where.items():
                query = query.where(table.c[name] == value)
            return [dict(r._mapping) for r in conn.execute(query)]
    finally:
        store.dispose()


def stream(server: ServeServer, content: str, **extra) -> tuple[list[dict], str]:
    body = {"model": "champion", "messages": [{"role": "user", "content": content}], "user": "u1", "stream": True,
            **extra}  # fmt: skip
    chunks = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
            elif line == "data: [DONE]":
                chunks.append("DONE")
    return chunks, "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c != "DONE")


def test_answers_streamed_and_not_are_stored_with_version_and_user(served):
    r = served.chat(ASK, max_tokens=12)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-") and out["model"] == "champion"
    assert out["choices"][0]["message"]["role"] == "assistant" and out["choices"][0]["finish_reason"] in (
        "stop",
        "length",
    )
    assert out["usage"]["completion_tokens"] <= 12 and out["rlhfkit"]["version"] == "policy:1"
    [stored] = rows(served.db, responses, id=out["id"])
    assert stored["text"] == out["choices"][0]["message"]["content"] and stored["user_id"] == "u1"
    assert stored["messages"] == [{"role": "user", "content": ASK}] and stored["ttft_ms"] > 0 and not stored["stream"]
    chunks, text = stream(served, ASK, max_tokens=12)
    assert chunks[-1] == "DONE" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks[:-1]}) == 1 and chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    [stored] = rows(served.db, responses, id=chunks[0]["id"])
    assert stored["text"] == text and stored["stream"] and stored["latency_ms"] >= stored["ttft_ms"]
    # a fixed seed decides the text; temperature 0 is greedy
    same = [served.chat(ASK, seed=7, max_tokens=10).json()["choices"][0]["message"]["content"] for _ in range(2)]
    greedy = [
        served.chat(ASK, temperature=0, max_tokens=10).json()["choices"][0]["message"]["content"] for _ in range(2)
    ]
    assert same[0] == same[1] and greedy[0] == greedy[1]


def test_feedback_of_every_kind_is_stored_once_with_version_arm_and_user(served):
    first = served.chat(ASK, user="fb-user").json()
    again = served.chat(ASK, user="fb-user", regenerate_of=first["id"]).json()
    thumbs = dict(response_id=first["id"], user="fb-user", kind="thumbs", value=False)
    r1 = served.feedback("key-1", **thumbs)
    r2 = served.feedback("key-1", **thumbs)  # a retry: the stored row back, not a second one
    assert (r1.status_code, r2.status_code) == (201, 200) and r2.headers["Idempotent-Replayed"] == "true"
    assert r1.json()["id"] == r2.json()["id"]
    for body in (
        dict(response_id=again["id"], user="fb-user", kind="rating", value=4, scale=5),
        dict(response_id=again["id"], user="fb-user", kind="flag", value="untrue", comment="made up"),
        dict(response_id=again["id"], user="fb-user", kind="preference", other_response_id=first["id"]),
    ):
        assert served.feedback(**body).status_code == 201, body
    stored = rows(served.db, feedback, user_id="fb-user")
    assert Counter(f["kind"] for f in stored) == {"thumbs": 1, "rating": 1, "flag": 1, "preference": 1}
    assert all(f["version_id"] == rows(served.db, responses, id=first["id"])[0]["version_id"] for f in stored)
    assert rows(served.db, responses, id=again["id"])[0]["regenerate_of"] == first["id"]
    # someone else's response is as good as missing; a preference must be between answers to the same messages
    assert served.feedback(**{**thumbs, "user": "other"}).status_code == 404
    replayed = served.feedback("key-1", **{**thumbs, "user": "other"})  # another user with the key: no replay
    assert replayed.status_code == 404 and "comment" not in replayed.text
    other = served.chat("what is two plus two ?", user="fb-user").json()
    bad = served.feedback(response_id=other["id"], user="fb-user", kind="preference", other_response_id=first["id"])
    assert bad.status_code == 422 and "same messages" in bad.json()["error"]["message"]
    no_key = httpx.post(served.url + "/v1/feedback", json=thumbs)
    assert no_key.status_code == 422 and "Idempotency-Key" in no_key.json()["error"]["message"]
    for body, field in (
        ({**thumbs, "value": "yes"}, "value"),
        ({**thumbs, "kind": "rating", "value": 6}, "value"),
        ({**thumbs, "kind": "flag", "value": "rude"}, "value"),
        ({**thumbs, "kind": "preference"}, "other_response_id"),
        ({**thumbs, "colour": "red"}, "<key>"),  # a field the schema lacks: the client's word, not repeated
    ):
        r = served.feedback(**body)
        assert r.status_code == 422 and r.json()["error"]["param"] == field, (body, r.text)
    arm = served.chat(ASK, model="exp", user="fb-arm").json()
    assert served.feedback(response_id=arm["id"], user="fb-arm", kind="thumbs", value=True).status_code == 201
    [row] = rows(served.db, feedback, user_id="fb-arm")
    assert (row["experiment"], row["arm"]) == ("exp", arm["rlhfkit"]["arm"])


def test_experiment_arms_are_sticky_per_user(served):
    seen: dict[str, set] = {}
    for i in range(24):
        for _ in range(2):
            out = served.chat(ASK, model="exp", user=f"sticky-{i}", max_tokens=4).json()
            seen.setdefault(f"sticky-{i}", set()).add((out["rlhfkit"]["arm"], out["rlhfkit"]["version"]))
    assert all(len(arms) == 1 for arms in seen.values())
    arms = Counter(next(iter(a))[0] for a in seen.values())
    assert set(arms) == {"control", "treatment"} and {v for a in seen.values() for _, v in a} == {
        "policy:1",
        "policy:2",
    }


def test_promotion_and_rollback_apply_without_a_restart(served):
    def version():
        return served.chat(ASK, max_tokens=2).json()["rlhfkit"]["version"]

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "rlhfkit.cli", "registry", *args, "--db", served.db],
                             capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr

    assert version() == "policy:1"
    cli("promote", "champion", "policy:2")
    assert _eventually(version, "policy:2")
    cli("rollback", "champion")
    assert _eventually(version, "policy:1")


def _eventually(fn, want, tries: int = 20) -> bool:
    import time

    for _ in range(tries):
        if fn() == want:
            return True
        time.sleep(0.2)
    return False


HOSTILE = "<script>alert('x')</script>' OR 1=1 --"


def test_hostile_or_malformed_requests_get_a_4xx_that_does_not_echo_them(served):
    url = served.url + "/v1/chat/completions"
    msg = [{"role": "user", "content": "hi"}]
    cases = [
        (dict(content=b"{not json " + HOSTILE.encode(), headers={"content-type": "application/json"}), 400),
        (dict(json=[HOSTILE]), 422),
        (dict(json={"model": HOSTILE, "messages": msg}), 404),
        (dict(json={"model": "champion", "messages": []}), 422),
        (dict(json={"model": "champion", "messages": [{"role": HOSTILE, "content": "x"}]}), 422),
        (dict(json={"model": "champion", "messages": [{"role": "user", "content": 5}]}), 422),
        (dict(json={"model": "champion", "messages": msg, "max_tokens": 10**9}), 422),
        (dict(json={"model": "champion", "messages": msg, "n": 2}), 422),
        (dict(json={"model": "champion", "messages": msg, "seed": 2**80}), 422),  # the sampler's seed is 64-bit
        (dict(json={"model": "champion", "messages": msg, "temperature": 7}), 422),
        (dict(json={"model": "champion", "messages": msg, "stop": ["a", "b", "c", "d", "e"]}), 422),
        (dict(json={"model": "champion", "messages": msg, "user": "x" * 500}), 422),
        (dict(json={"model": "champion", "messages": msg, "regenerate_of": "chatcmpl-" + "0" * 24}), 404),
        (dict(json={"model": "champion", "messages": [{"role": "user", "content": "x" * 40_000}]}), 422),
        (dict(content=b"x" * (2 << 20), headers={"content-type": "application/json"}), 413),
        # NUL and a lone surrogate, which PostgreSQL cannot store: refused before anything is generated
        (dict(json={"model": "champion", "messages": [{"role": "user", "content": "a\x00b"}]}), 422),
        (
            dict(
                json={
                    "model": "champion",
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "\x00"}]}],
                }
            ),
            422,
        ),
        (dict(json={"model": "champion", "messages": msg, "user": "u\x00"}), 422),
        (dict(json={"model": "champion", "messages": msg, "stop": ["\x00"]}), 422),
        (
            dict(
                content=b'{"model": "champion", "messages": [{"role": "user", "content": "\\udc80"}]}',
                headers={"content-type": "application/json"},
            ),
            422,
        ),
    ]
    for kwargs, status in cases:
        r = httpx.post(url, timeout=60, **kwargs)
        assert r.status_code == status, (kwargs.get("json"), r.status_code, r.text[:300])
        assert HOSTILE not in r.text and "'x')" not in r.text and set(r.json()) == {"error"}
    for response_id, status in ((HOSTILE, 404), (HOSTILE * 2, 422)):  # the second is longer than an id may be
        r = httpx.post(served.url + "/v1/feedback", json={"response_id": response_id, "user": "u", "kind": "thumbs",
                                                           "value": True}, headers={"Idempotency-Key": "k"})  # fmt: skip
        assert r.status_code == status and HOSTILE not in r.text
    for field, value in (("comment", "\x00"), ("user", "u\x00")):  # unchecked, an unknown id would be a 404
        body = {"response_id": "chatcmpl-" + "0" * 24, "user": "u", "kind": "thumbs", "value": True, field: value}
        r = httpx.post(served.url + "/v1/feedback", json=body, headers={"Idempotency-Key": "nul-" + field})
        assert r.status_code == 422, (field, r.status_code, r.text[:300])
    # a field the schema does not have is the client's own word: named as <key>, not repeated
    body = {"response_id": "chatcmpl-" + "0" * 24, "kind": "thumbs", "value": True, HOSTILE: 1}
    r = httpx.post(served.url + "/v1/feedback", json=body, headers={"Idempotency-Key": "extra"})
    assert r.status_code == 422 and HOSTILE not in r.text and r.json()["error"]["param"] == "<key>", r.text[:300]
    assert httpx.get(served.url + "/v1/monitor?hours=-1").status_code == 422
    assert httpx.get(served.url + "/v1/monitor?experiment=nope").status_code == 404
    r = httpx.get(served.url + "/v1/monitor", params={"experiment": HOSTILE})
    assert r.status_code == 404 and HOSTILE not in r.text
    for model in ("champion:\u00b2", "champion:" + "9" * 30):  # a digit that int() refuses; past an INTEGER
        r = httpx.post(url, json={"model": model, "messages": msg}, timeout=60)
        assert r.status_code == 404 and model not in r.text, (model, r.status_code, r.text[:200])
    page = httpx.get(served.url + "/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]


def test_a_version_served_by_an_openai_compatible_upstream(served, tmp_path):
    """A second server routes a version whose endpoint is the first server: rlhfkit records, the upstream answers."""
    db = str(tmp_path / "front.db")
    registry = Registry.open(db)
    registry.register("external-policy", kind="policy", endpoint=f"{served.url}/v1#champion", name="external")
    registry.promote("champion", "external:1")
    registry.close()
    front = ServeServer(db, tmp_path).start()
    try:
        r = front.chat(ASK, user="up-user", max_tokens=8)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["rlhfkit"]["version"] == "external:1"
        [mine] = rows(db, responses, id=out["id"])
        [theirs] = [x for x in rows(served.db, responses, route="champion") if x["text"] == mine["text"]][-1:]
        assert mine["text"] == out["choices"][0]["message"]["content"] and theirs["messages"] == mine["messages"]
        chunks, text = stream(front, ASK, max_tokens=8)
        assert chunks[-1] == "DONE" and rows(db, responses, id=chunks[0]["id"])[0]["text"] == text
    finally:
        front.stop()
    dead = Registry.open(db)
    dead.register("gone", kind="policy", endpoint="http://127.0.0.1:9/v1#x", name="gone")
    dead.promote("champion", "gone:1")
    dead.close()
    front = ServeServer(db, tmp_path).start()
    try:
        r = front.chat(ASK)
        assert r.status_code == 502 and "127.0.0.1:9" in r.json()["error"]["message"]
    finally:
        front.stop()


def test_an_api_key_guards_the_api(served, tmp_path):
    keyed = ServeServer(served.db, tmp_path, "--no-preload", env={"RLHFKIT_SERVE_API_KEY": "s3cret-key"}).start()
    try:
        assert keyed.chat(ASK).status_code == 401
        r = httpx.post(keyed.url + "/v1/chat/completions", headers={"Authorization": "Bearer s3cret-key"},
                       json={"model": "champion", "messages": [{"role": "user", "content": ASK}]}, timeout=120)  # fmt: skip
        assert r.status_code == 200
        assert httpx.get(keyed.url + "/v1/models").status_code == 401
    finally:
        keyed.stop()


def test_a_server_of_endpoints_never_imports_torch(tmp_path):
    code = f"""
import sys
from fastapi.testclient import TestClient
from rlhfkit.registry.store import Registry
from rlhfkit.serve.app import create_app
from rlhfkit.serve.engine import Engine
from rlhfkit.serve.upstream import Upstream
registry = Registry.open({str(tmp_path / "e.db")!r})
registry.register("ext", kind="policy", endpoint="http://127.0.0.1:9/v1#m", name="ext")
registry.promote("champion", "ext:1")
client = TestClient(create_app(registry.store, Engine(), Upstream()))
r = client.post("/v1/chat/completions", json={{"model": "champion", "messages": [{{"role": "user", "content": "hi"}}]}})
print(r.status_code, client.get("/healthz").json()["ready"], [m for m in ("torch", "transformers") if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "502 True []"


def test_the_server_is_ready_once_its_preloads_are_done_even_one_that_failed(tmp_path):
    """/healthz says ready only when no preload is outstanding; a model that cannot load does not hold it back
    for ever (its requests report the error)."""
    from rlhfkit.serve.engine import Engine
    from tests.production.conftest import fake_run

    registry = Registry.open(str(tmp_path / "p.db"))
    broken = registry.register(str(fake_run(tmp_path, "broken")), name="broken")  # weights.bin: not a model
    engine = Engine()
    assert engine.ready
    engine.preload(broken)
    deadline = time.monotonic() + 600  # importing torch alone took 6 minutes at a load average of 51
    while not engine.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.ready and engine.preloading == 0
    engine.close()


def test_simulated_users_chat_and_every_acknowledged_feedback_is_stored_once(served):
    """The toy world's users (personas) over real HTTP: streamed and plain requests, regenerate and prefer."""
    import asyncio

    from rlhfkit.toy.users import make_users, simulate

    users = make_users(4, seed=5, prefix="sim")
    stats = asyncio.run(simulate(served.url, "exp", users, chats=3, regenerate=1.0, concurrency=4, max_tokens=6))
    assert stats.failed == 0 and stats.requests == 4 * 3 * 2 and stats.feedback_failed == 0
    assert sum(stats.arms.values()) == stats.requests and len(stats.ttft_ms) > 0
    stored = [f for u in users for f in rows(served.db, feedback, user_id=u.id)]
    assert sorted(f["id"] for f in stored) == sorted(stats.feedback_acknowledged)
    kinds = Counter(f["kind"] for f in stored)
    assert (kinds["thumbs"], kinds["preference"]) == (stats.thumbs, stats.preferences)


def test_an_answer_with_a_nul_character_is_stored_on_either_database(db, tmp_path):
    """Tiny byte-level models sample NUL now and then; PostgreSQL refused it and the request failed mid-stream."""
    from rlhfkit.serve.records import insert_response
    from tests.production.conftest import fake_run

    registry = Registry.open(db)
    version = registry.register(str(fake_run(tmp_path, "a")), name="policy")
    row = dict(id="chatcmpl-nul", user_id="u", route="policy:1", version_id=version.id,
               messages=[{"role": "user", "content": "hi"}], text="a\x00b", stream=True, refusal=False)  # fmt: skip
    with registry.store.engine.begin() as conn:
        insert_response(conn, row)
    registry.close()
    assert [r["text"] for r in rows(db, responses, id="chatcmpl-nul")] == ["a\ufffdb"]


def test_a_user_who_changes_their_mind_twice_is_taken_at_their_last_word(served):
    """A over B, then B over A, then A over B again: the pair's preference is the third (it was the second, whose
    pair had kept the first one's place in a dict)."""
    from rlhfkit.serve.records import _latest_feedback

    a = served.chat(ASK, user="mind").json()["id"]
    b = served.chat(ASK, user="mind", regenerate_of=a).json()["id"]
    said = []
    for win, lose in ((a, b), (b, a), (a, b)):
        r = served.feedback(response_id=win, user="mind", kind="preference", other_response_id=lose)
        assert r.status_code == 201
        said.append(r.json()["id"])
    store = Store(served.db)
    try:
        kept = [r.id for r in _latest_feedback(store, ("preference",), 0, None, None) if r.id in said]
    finally:
        store.dispose()
    assert kept == [said[2]]


def test_thumbs_and_stars_on_one_prompt_give_pairs_within_each_scale(served):
    """Two users thumb answers to one prompt up and down, a third gives one four stars: the loop's live labels pair
    the thumbs and leave the stars alone (the mixed scales made the whole round fail, on every rerun)."""
    from rlhfkit.pipelines.loop_labels import live_labels
    from rlhfkit.serve.records import max_feedback_id

    prompt = "what is the capital of chile ?"
    answers = [served.chat(prompt, user=f"scale-{i}").json() for i in range(3)]
    for (i, value), kind in zip(((0, True), (1, False), (2, 4)), ("thumbs", "thumbs", "rating")):
        body = dict(response_id=answers[i]["id"], user=f"scale-{i}", kind=kind, value=value)
        assert served.feedback(**body, **({"scale": 5} if kind == "rating" else {})).status_code == 201
    store = Store(served.db)
    try:
        rows = live_labels(store, 0, max_feedback_id(store), thumbs=True, seed=0)
    finally:
        store.dispose()
    texts = [a["choices"][0]["message"]["content"] for a in answers]
    mine = [r for r in rows if r["source"] == "live-thumbs" and r["prompt"][-1]["content"] == prompt]
    # the thumbs' pair, up over down (none if the two answers came out the same); the stars pair with nothing
    assert [(r["chosen"], r["rejected"]) for r in mine] == ([(texts[0], texts[1])] if texts[0] != texts[1] else [])
