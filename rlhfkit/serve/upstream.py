"""The upstream backend: a version served by any OpenAI-compatible server (vLLM's, llama.cpp's, another
``rlhfkit serve``), so rlhfkit routes and records while an existing engine generates.

The version's ``endpoint`` (``URL#MODEL``, set at registration) says where; the request is always made with
``stream: true`` so the time to the first token is measured here as well, and passed on as events, streamed
or collected as the client asked. An unreachable or failing upstream is an ``UpstreamError`` (the client gets a
502 naming the upstream, never its raw answer).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from rlhfkit.openai_api import ChatServer
from rlhfkit.serve.engine import Event, GenParams


class UpstreamError(RuntimeError):
    pass


class Upstream:
    def __init__(self, timeout: float = 120.0, max_connections: int = 64):
        import httpx

        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0), limits=httpx.Limits(max_connections=max_connections)
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def stream(self, endpoint: str, messages: list[dict], params: GenParams) -> AsyncIterator[Event]:
        import httpx

        server = ChatServer.parse(endpoint)
        body = {
            "model": server.model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": 0.0 if params.top_k == 1 else params.temperature,
            "top_p": params.top_p,
            "stream": True,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
        url = f"{server.base_url}/chat/completions"
        n_chunks, finish = 0, None
        try:
            async with self.client.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    raise UpstreamError(f"upstream {url} answered HTTP {response.status_code}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        choice = json.loads(data)["choices"][0]
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or ""
                        reason = choice.get("finish_reason")
                        if not isinstance(text, str) or not isinstance(reason, str | None):
                            raise TypeError  # a chunk of another shape: the same answer as any other bad chunk
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        raise UpstreamError(f"upstream {url} sent something that is not a chat chunk") from None
                    if text:
                        n_chunks += 1
                        yield Event("delta", text=text)
                    finish = reason or finish
        except httpx.HTTPError as e:
            raise UpstreamError(f"upstream {url}: {type(e).__name__}") from None
        # Servers stream about one token per chunk; without a usage block that is the count we have.
        yield Event("done", finish_reason=finish or "stop", completion_tokens=n_chunks)
