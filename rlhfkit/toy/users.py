"""Simulated users of a served model: they chat through the real HTTP API and leave feedback as people would.

Each user is one of the toy world's annotator personas (``annotators.py``: their own weights on helpfulness,
harm, honesty and concision, and 25% of their judgements flipped) with a user id of their own. A chat: ask a
toy prompt (streamed or not), give the answer a thumbs up or down (and, with ``rate``, a 1-5 rating); sometimes
"regenerate" (``regenerate_of``), judge the second answer too, and say which of the two they prefer (no preference
when they find them equal).
They see only the text; the gold utility judges results elsewhere, never them.

Feedback is sent with an idempotency key and retried with the same key until the server acknowledges it, so the
acknowledged set is what must be in the database; requests that fail are counted, not retried.

    stats = asyncio.run(simulate(url, "champion", make_users(100, seed=0), chats=5, regenerate=0.5))
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field

from rlhfkit.toy.annotators import Annotator, annotator_pool
from rlhfkit.toy.world import sample_prompt


@dataclass
class User:
    id: str
    persona: Annotator
    rng: random.Random


def make_users(n: int, seed: int, noise: float = 0.25, prefix: str = "user") -> list[User]:
    """``n`` users; user i is persona i mod 5 with its own label noise draws."""
    users = []
    for i in range(n):
        persona = annotator_pool(noise, seed=seed * 100_003 + i)[i % 5]
        users.append(User(f"{prefix}-{seed}-{i}", persona, random.Random(seed * 100_003 + i)))
    return users


@dataclass
class TrafficStats:
    requests: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    feedback_acknowledged: list[int] = field(default_factory=list)  # feedback ids the server confirmed
    feedback_failed: int = 0
    thumbs_up: int = 0
    thumbs: int = 0
    preferences: int = 0
    ratings: list[int] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)  # streamed requests: first content chunk, as the user sees it
    latency_ms: list[float] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    arms: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    def summary(self) -> dict:
        from rlhfkit.evaluate.ab import percentile

        return {
            "requests": self.requests,
            "failed": self.failed,
            "feedback_acknowledged": len(self.feedback_acknowledged),
            "feedback_failed": self.feedback_failed,
            "thumbs_up_rate": self.thumbs_up / self.thumbs if self.thumbs else None,
            "mean_rating": sum(self.ratings) / len(self.ratings) if self.ratings else None,
            "preferences": self.preferences,
            "ttft_ms": {f"p{q}": percentile(self.ttft_ms, q) for q in (50, 95, 99)},
            "latency_ms": {f"p{q}": percentile(self.latency_ms, q) for q in (50, 95, 99)},
            "versions": dict(self.versions),
            "arms": dict(self.arms),
            "wall_s": round(self.wall_s, 1),
        }


async def ask(client, stats: TrafficStats, model: str, user: User, messages: list[dict], stream: bool,
              regenerate_of: str | None = None, max_tokens: int | None = None) -> dict | None:  # fmt: skip
    """One chat completion; returns {id, text, version, arm} or None when it failed (counted)."""
    body = {"model": model, "messages": messages, "user": user.id, "stream": stream}
    if regenerate_of:
        body["regenerate_of"] = regenerate_of
    if max_tokens:
        body["max_tokens"] = max_tokens
    stats.requests += 1
    start = time.perf_counter()
    try:
        if not stream:
            r = await client.post("/v1/chat/completions", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            out = r.json()
            answer = {"id": out["id"], "text": out["choices"][0]["message"]["content"], **out["rlhfkit"]}
        else:
            answer, text, done = None, "", False
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}")
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"]["message"])
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta and not text:
                        stats.ttft_ms.append((time.perf_counter() - start) * 1000)
                    text += delta or ""
                    if "rlhfkit" in chunk:
                        answer = {"id": chunk["id"], "text": text, **chunk["rlhfkit"]}
            if not done or answer is None:
                raise RuntimeError("the stream ended before [DONE]")
    except Exception as e:  # noqa: BLE001 - a failed request is a figure of the run, not a crash of it
        stats.failed += 1
        stats.failures.append(f"{type(e).__name__}: {e}"[:300])
        return None
    stats.latency_ms.append((time.perf_counter() - start) * 1000)
    stats.versions[answer["version"]] = stats.versions.get(answer["version"], 0) + 1
    if answer.get("arm"):
        stats.arms[answer["arm"]] = stats.arms.get(answer["arm"], 0) + 1
    return answer


async def send_feedback(client, stats: TrafficStats, user: User, body: dict, tries: int = 30) -> None:
    """Send until acknowledged, always with the same key (a server restart in between loses nothing)."""
    key = uuid.uuid4().hex
    for attempt in range(tries):
        try:
            r = await client.post("/v1/feedback", json={**body, "user": user.id}, headers={"Idempotency-Key": key})
            if r.status_code in (200, 201):
                stats.feedback_acknowledged.append(r.json()["id"])
                return
            if r.status_code < 500:
                break
        except Exception:  # noqa: BLE001 - the server may be restarting: try again with the same key
            pass
        await asyncio.sleep(min(0.2 * (attempt + 1), 2.0))
    stats.feedback_failed += 1


async def judge(client, stats: TrafficStats, user: User, prompt, answer: dict, rate: bool) -> None:
    """A thumbs up or down on an answer, and with ``rate`` a 1-5 rating as well (the persona's judgements)."""
    up = user.persona.thumbs(prompt, answer["text"])
    stats.thumbs, stats.thumbs_up = stats.thumbs + 1, stats.thumbs_up + up
    await send_feedback(client, stats, user, {"response_id": answer["id"], "kind": "thumbs", "value": up})
    if rate:
        stats.ratings.append(user.persona.rate(prompt, answer["text"]))
        await send_feedback(
            client, stats, user, {"response_id": answer["id"], "kind": "rating", "value": stats.ratings[-1]}
        )


async def chat(client, stats: TrafficStats, model: str, user: User, regenerate: float, stream_share: float,
               max_tokens: int | None = None, rate: bool = False) -> None:  # fmt: skip
    prompt = sample_prompt(user.rng)
    messages = [{"role": "user", "content": prompt.text}]
    stream = user.rng.random() < stream_share
    first = await ask(client, stats, model, user, messages, stream, max_tokens=max_tokens)
    if first is None:
        return
    await judge(client, stats, user, prompt, first, rate)
    if user.rng.random() >= regenerate:
        return
    second = await ask(client, stats, model, user, messages, stream, regenerate_of=first["id"], max_tokens=max_tokens)
    if second is None:
        return
    await judge(client, stats, user, prompt, second, rate)
    if first["text"] == second["text"]:
        return
    verdict = user.persona.compare(prompt, first["text"], second["text"])
    if verdict == "tie":
        return
    chosen, other = (first, second) if verdict == "a" else (second, first)
    stats.preferences += 1
    await send_feedback(client, stats, user, {"response_id": chosen["id"], "kind": "preference",
                                              "other_response_id": other["id"]})  # fmt: skip


async def simulate(url: str, model: str, users: list[User], chats: int, regenerate: float = 0.5,
                   concurrency: int = 16, stream_share: float = 0.5, max_tokens: int | None = None,
                   rate: bool = False) -> TrafficStats:  # fmt: skip
    """Every user holds ``chats`` chats, one after another; ``concurrency`` users at a time."""
    import httpx

    stats = TrafficStats()
    gate = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def session(user: User) -> None:
            async with gate:
                for _ in range(chats):
                    await chat(client, stats, model, user, regenerate, stream_share, max_tokens, rate)

        await asyncio.gather(*(session(u) for u in users))
    stats.wall_s = time.perf_counter() - start
    return stats
