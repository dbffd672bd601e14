"""Streaming: what a client that hangs up, a character spread over tokens and an upstream that sends chunks of
another shape leave behind (the rest of serving: test_serve.py)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from rlhfkit.registry.store import Registry
from rlhfkit.registry.tables import responses
from tests.production.test_serve import rows


class SlowUpstream:
    """An upstream endpoint that answers ten words, one every 0.2 s."""

    async def stream(self, endpoint, messages, params):
        import asyncio

        from rlhfkit.serve.engine import Event

        for i in range(10):
            await asyncio.sleep(0.2)
            yield Event("delta", text=f"w{i} ")
        yield Event("done", finish_reason="stop", completion_tokens=10)


def test_a_client_that_leaves_a_stream_keeps_the_answer_it_was_shown(tmp_path):
    """The client reads three chunks of a streamed answer and hangs up: the answer is stored as far as it went
    (finish_reason 'cancelled'), so feedback on its id finds it; it was lost, and the feedback a 404."""
    import socket
    import threading

    import uvicorn

    from rlhfkit.serve.app import create_app

    db = str(tmp_path / "prod.db")
    registry = Registry.open(db)
    registry.register("nowhere", name="policy", endpoint="http://127.0.0.1:9/v1#a")
    registry.promote("champion", "policy:1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(registry.store, upstream=SlowUpstream()), port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        body = {"model": "champion", "messages": [{"role": "user", "content": "hi"}], "user": "u", "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            chunks = [json.loads(line[6:]) for line, _ in zip(r.iter_lines(), range(3)) if line.startswith("data: ")]
        response_id = chunks[-1]["id"]
        deadline = time.time() + 10
        while time.time() < deadline and not rows(db, responses, id=response_id):
            time.sleep(0.1)
        [row] = rows(db, responses, id=response_id)
        assert row["finish_reason"] == "cancelled" and row["text"].startswith("w0 ") and len(row["text"]) < 30
        thumbs = {"response_id": response_id, "user": "u", "kind": "thumbs", "value": False}
        assert httpx.post(url + "/v1/feedback", json=thumbs, headers={"Idempotency-Key": "k"}).status_code == 201
    finally:
        server.should_exit = True
        thread.join(10)


def test_streamed_text_never_sends_half_a_character(monkeypatch):
    """One byte a token (as byte-level tokenizers decode): "é" and "€" span two and three tokens, and the partial
    decode ends in U+FFFD. That was sent at once and never corrected: the answer streamed and stored as 'h�llo �'."""
    import asyncio
    import types

    import torch

    from rlhfkit import rollout
    from rlhfkit.serve import engine

    data = "héllo €".encode()

    class ByteTokenizer:
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    def steps(model, tok, sampling, query, mask, eos=None, generator=None):
        for i, b in enumerate(data):
            last = torch.tensor([i == len(data) - 1])
            yield types.SimpleNamespace(tokens=torch.tensor([b]), done=last, ended=last, index=i)

    monkeypatch.setattr(rollout, "sample_steps", steps)
    monkeypatch.setattr(rollout, "encode_prompts", lambda *a: (torch.zeros(1, 1, dtype=torch.long),) * 2)
    eng = engine.Engine.__new__(engine.Engine)
    eng.batches, eng.generator = 0, None
    eng._model = lambda version: types.SimpleNamespace(tokenizer=ByteTokenizer(), max_positions=100, eos=[], model=None)
    loop = asyncio.new_event_loop()
    job = engine.Job(version=types.SimpleNamespace(id=1), messages=[{"role": "user", "content": "x"}],
                     params=engine.GenParams(max_tokens=50), loop=loop)  # fmt: skip
    eng._run([job])
    loop.run_until_complete(asyncio.sleep(0))
    events = []
    while not job.events.empty():
        events.append(job.events.get_nowait())
    loop.close()
    deltas = [e.text for e in events if e.kind == "delta"]
    assert "".join(deltas) == "héllo €" and not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("chunk", ['{"choices": ["hi"]}', '{"choices": [{"delta": "x"}]}',
                                   '{"choices": [{"delta": {"content": 5}}]}',
                                   '{"choices": [{"delta": {}, "finish_reason": 3}]}'])  # fmt: skip
def test_an_upstream_chunk_of_another_shape_is_an_upstream_error(chunk):
    """Chunks that parse as JSON but are no chat chunk raised AttributeError (a 500, or a stream cut mid-answer) or
    passed a number on as text; each is the upstream's fault, which the app answers 502."""
    import asyncio

    import httpx

    from rlhfkit.serve.engine import GenParams
    from rlhfkit.serve.upstream import Upstream, UpstreamError

    body = f"data: {chunk}\n\ndata: [DONE]\n\n".encode()
    upstream = Upstream()
    upstream.client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    )

    async def read():
        return [e async for e in upstream.stream("http://127.0.0.1:9/v1#m", [{"role": "user", "content": "x"}],
                                                 GenParams(max_tokens=4))]  # fmt: skip

    with pytest.raises(UpstreamError, match="not a chat chunk"):
        asyncio.run(read())
