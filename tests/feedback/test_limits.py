"""Rate limiting, the hashing gate, the post-login redirect check and the per-account API limit."""

from __future__ import annotations

import asyncio

import pytest

from rlhfkit.feedback.limits import HashGate, RateLimiter, TooMany, safe_next
from tests.feedback.test_attacks import OFF_SITE


def test_token_bucket_spends_refills_and_says_how_long_to_wait():
    """Capacity 3, one token per 2 s: three takes at t=0 pass, the fourth waits 2 s; at t=1 half a
    token is back (wait 1 s); at t=2 one is, and it can be taken."""
    bucket = RateLimiter(capacity=3, rate=0.5)
    assert [bucket.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a", now=0.0) == pytest.approx(2.0)
    assert bucket.wait("a", now=1.0) == pytest.approx(1.0)
    assert bucket.take("a", now=2.0) == 0.0 and bucket.wait("a", now=2.0) == pytest.approx(2.0)
    assert bucket.take("b", now=0.0) == 0.0  # keys are independent
    assert bucket.wait("a", now=100.0) == 0.0  # refills to capacity, never beyond
    assert [bucket.take("a", now=100.0) for _ in range(4)][-1] > 0


def test_token_bucket_memory_is_bounded():
    bucket = RateLimiter(capacity=1, rate=0.001, max_keys=100)
    for i in range(1000):
        bucket.take(f"spray-{i}", now=0.0)
    assert len(bucket._buckets) == 100
    assert bucket.take("spray-999", now=0.0) > 0  # the most recent keys are kept


def test_hash_gate_refuses_beyond_its_queue():
    async def scenario():
        gate = HashGate(concurrency=1, queue=2)
        release = asyncio.Event()
        results = []

        async def login(n):
            try:
                async with gate:
                    await release.wait()
                results.append(n)
            except TooMany as e:
                results.append(("429", e.headers["Retry-After"]))

        tasks = [asyncio.create_task(login(n)) for n in range(5)]
        await asyncio.sleep(0.01)  # 1 running, 2 waiting; the other 2 were refused at once
        refused = [r for r in results if isinstance(r, tuple)]
        release.set()
        await asyncio.gather(*tasks)
        return refused, sorted(r for r in results if not isinstance(r, tuple))

    refused, done = asyncio.run(scenario())
    assert refused == [("429", "1"), ("429", "1")] and done == [0, 1, 2]


@pytest.mark.parametrize("target", OFF_SITE)
def test_off_site_targets_are_refused(target):
    assert safe_next(target) is None


@pytest.mark.parametrize("target", ["/", "/admin", "/history?project=a-b", "/review#x", "/%E2%9C%93"])
def test_same_site_paths_are_kept(target):
    assert safe_next(target) == target


def test_per_account_api_limit_answers_429_with_retry_after(tmp_path):
    from fastapi.testclient import TestClient

    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.limits import Limits
    from tests.feedback.conftest import ADMIN_PASSWORD, bootstrap

    db = str(tmp_path / "limits.db")
    bootstrap(db)
    from rlhfkit.feedback.db import Store

    app = create_app(Store(db), limits=Limits(api_rate=0.5, api_burst=3))
    with TestClient(app) as client:
        token = client.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        codes = [client.get("/api/me", headers=auth).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = client.get("/api/me", headers=auth)
        assert r.status_code == 429 and r.headers["retry-after"] == "2" and "account" in r.json()["detail"]
