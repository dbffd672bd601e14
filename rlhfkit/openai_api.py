"""A small client for OpenAI-compatible chat servers (vLLM's, llama.cpp's, Ollama's, ``rlhfkit serve``), so a
judge, a feedback model or a serving backend can be any model a user already serves.

    server = ChatServer.parse("http://127.0.0.1:8080/v1#qwen2.5-7b-instruct")   # base URL, '#' model name
    reply = server.chat([{"role": "user", "content": "hi"}], max_tokens=16)       # -> Completion

One request at a time, no retries (a judge asks thousands of small questions: a failing server should fail
the command at once, naming the URL, not hang). Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from urllib.parse import urlparse


class ServerError(ValueError):
    """The server could not be reached or answered something else than a chat completion; names the URL."""


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    # For the first generated token: {token text: probability} of the alternatives the server returned
    # (``top_logprobs``), empty when the server gives no log-probs.
    first_token_probs: dict[str, float]


@dataclass(frozen=True)
class ChatServer:
    base_url: str  # ends with /v1 (or whatever prefix precedes /chat/completions)
    model: str
    api_key: str | None = None
    timeout: float = 120.0

    @classmethod
    def parse(cls, text: str, timeout: float = 120.0) -> ChatServer:
        """``URL#MODEL``: the server's base URL and the model it serves (``#`` part optional for one-model
        servers). A trailing ``/chat/completions`` is accepted and dropped. The key comes from
        ``OPENAI_API_KEY`` when set."""
        url, _, model = text.partition("#")
        url = url.rstrip("/").removesuffix("/chat/completions")
        if not urlparse(url).netloc:
            raise ServerError(f"{text}: not a URL with a host (give e.g. http://127.0.0.1:8000/v1#MODEL)")
        return cls(url, model or "default", os.environ.get("OPENAI_API_KEY"), timeout)

    def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Completion:
        import httpx

        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if top_logprobs:
            body.update(logprobs=True, top_logprobs=top_logprobs)
        if stop:
            body["stop"] = stop
        if seed is not None:
            body["seed"] = seed
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = f"{self.base_url}/chat/completions"
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as e:
            raise ServerError(f"{url}: {type(e).__name__}: {e}") from None
        if response.status_code != 200:
            raise ServerError(f"{url}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            choice = response.json()["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise ServerError(f"{url}: the answer is not a chat completion: {response.text[:200]}") from None
        return Completion(text, choice.get("finish_reason"), _first_token_probs(choice))


def _first_token_probs(choice: dict) -> dict[str, float]:
    """OpenAI's ``logprobs.content[0].top_logprobs`` as {token: probability}; {} when absent."""
    try:
        first = choice["logprobs"]["content"][0]
    except (KeyError, IndexError, TypeError):
        return {}
    alternatives = first.get("top_logprobs") or [{"token": first.get("token"), "logprob": first.get("logprob")}]
    probs: dict[str, float] = {}
    for alt in alternatives:
        if alt.get("token") is not None and alt.get("logprob") is not None:
            probs[alt["token"]] = probs.get(alt["token"], 0.0) + math.exp(alt["logprob"])
    return probs
