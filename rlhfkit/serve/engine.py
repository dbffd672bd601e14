"""The built-in CPU backend: registry versions loaded once, requests batched, tokens streamed as they are sampled.

One worker thread owns torch: it loads models (a version's ``final/`` folder, its hash checked against the
registry), takes every waiting request that shares a version and sampling settings (up to ``max_batch``), and
runs them as one batch through the sampler's own loop (``rlhfkit.rollout.sample_steps``, the same decoders as
training). Each new token is decoded per row and the new text handed to the request's asyncio queue. A request
that arrives while a batch runs waits for the next batch (static batching: simple, and with many users the
batches fill up by themselves); requests with a fixed ``seed`` run alone, so the seed decides their text.

Text that could be the start of a stop string is held back until it is known not to be one, so a stop string
never reaches a client.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from rlhfkit.config import SamplingPart
from rlhfkit.registry.store import Version


@dataclass(frozen=True)
class GenParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 1: greedy (a request's temperature 0)
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def batch_key(self, version_id: int) -> tuple:
        return (version_id, self.max_tokens, self.temperature, self.top_p, self.top_k, self.stop, self.seed)


@dataclass
class Event:
    kind: str  # delta | done | error
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0


@dataclass
class Job:
    version: Version
    messages: list[dict]
    params: GenParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def emit(self, event: Event) -> None:
        if not self.cancelled:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class LoadedModel:
    def __init__(self, version: Version):
        import torch

        from rlhfkit.models.load import load_causal_lm
        from rlhfkit.rollout import eos_ids

        version.verify()  # the files are those that were registered
        self.model, self.tokenizer = load_causal_lm(str(version.model_path), "float32")
        self.model.eval().requires_grad_(False)
        self.eos = eos_ids(self.model, self.tokenizer)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", 2048)
        self.torch = torch


class Engine:
    """Serves registry versions with the built-in sampler; ``submit`` from the event loop, results as events."""

    def __init__(self, max_batch: int = 32, threads: int = 1, max_models: int = 4, seed: int = 0):
        self.max_batch, self.threads, self.max_models = max_batch, threads, max_models
        self.inbox: queue.Queue[Job | Version | None] = queue.Queue()
        self.models: OrderedDict[int, LoadedModel] = OrderedDict()  # least recently used first
        self.seed, self.generator = seed, None
        self.batches = 0
        # Preloads asked for and not yet done: /healthz reports the server ready when none is left, so a load
        # balancer (or a test) sends no request that would wait for a model to load.
        self.preloading = 0
        self.thread = threading.Thread(target=self._work, name="rlhfkit-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.inbox.put(job)

    def preload(self, version: Version) -> None:
        """Load ``version`` now, before its first request (in the worker thread, which owns torch)."""
        self.preloading += 1
        self.inbox.put(version)

    @property
    def ready(self) -> bool:
        return self.preloading == 0

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join(timeout=10)

    # ---------------------------------------------------------------- the worker thread

    def _work(self) -> None:
        pending: list[Job] = []
        while True:
            if not pending:
                job = self.inbox.get()
                if job is None:
                    return
                pending.append(job)
            while True:  # everything that arrived meanwhile joins the choice of the next batch
                try:
                    job = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    return
                pending.append(job)
            for version in [j for j in pending if isinstance(j, Version)]:  # preloads
                pending.remove(version)
                try:
                    self._model(version)
                except Exception as e:  # noqa: BLE001 - a request for it will report the error
                    print(f"could not preload {version.ref}: {type(e).__name__}: {e}", flush=True)
                finally:
                    self.preloading -= 1  # only this thread decrements; the GIL makes the int update atomic enough
            pending = [j for j in pending if not j.cancelled]
            if not pending:
                continue
            key = pending[0].params.batch_key(pending[0].version.id)
            limit = 1 if pending[0].params.seed is not None else self.max_batch
            batch = [j for j in pending if j.params.batch_key(j.version.id) == key][:limit]
            pending = [j for j in pending if j not in batch]
            try:
                self._run(batch)
            except Exception as e:  # noqa: BLE001 - every request of the batch hears of it; the server lives on
                for j in batch:
                    j.emit(Event("error", text=f"{type(e).__name__}: {e}"))

    def _model(self, version: Version) -> LoadedModel:
        if self.generator is None:
            import torch

            torch.set_num_threads(self.threads)
            self.generator = torch.Generator().manual_seed(self.seed)
        if version.id in self.models:
            self.models.move_to_end(version.id)
            return self.models[version.id]
        loaded = LoadedModel(version)
        self.models[version.id] = loaded
        while len(self.models) > self.max_models:
            self.models.popitem(last=False)
        return loaded

    def _run(self, batch: list[Job]) -> None:
        import torch

        from rlhfkit.data.records import Message
        from rlhfkit.rollout import _cut_at_stop, encode_prompts, sample_steps

        loaded = self._model(batch[0].version)
        params = batch[0].params
        tok = loaded.tokenizer
        budget = max(1, loaded.max_positions - params.max_tokens)
        prompts = [[Message(role=m["role"], content=m["content"]) for m in j.messages] for j in batch]
        query_ids, query_mask = encode_prompts(tok, prompts, None, budget)
        prompt_tokens = query_mask.sum(-1).tolist()
        sampling = SamplingPart(
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            stop=list(params.stop),
            missing_eos_penalty=None,
        )
        generator = self.generator if params.seed is None else torch.Generator().manual_seed(params.seed)
        hold = max((len(s) for s in params.stop), default=1) - 1  # characters that could start a stop string
        rows: list[list[int]] = [[] for _ in batch]
        sent = [0] * len(batch)
        finished = [False] * len(batch)
        self.batches += 1
        for step in sample_steps(
            loaded.model, tok, sampling, query_ids, query_mask, eos=loaded.eos, generator=generator
        ):
            tokens = step.tokens.tolist()
            for i, job in enumerate(batch):
                if finished[i]:
                    continue
                rows[i].append(tokens[i])
                done = bool(step.done[i]) or step.index == params.max_tokens - 1
                text, _ = _cut_at_stop(tok.decode(rows[i], skip_special_tokens=True), list(params.stop))
                visible = len(text) if done else max(sent[i], len(text) - hold)
                while not done and visible > sent[i] and text[visible - 1] == "\ufffd":
                    visible -= 1  # a character whose bytes span tokens decodes as U+FFFD until its last byte comes
                if visible > sent[i]:
                    job.emit(Event("delta", text=text[sent[i] : visible]))
                    sent[i] = visible
                if done:
                    finished[i] = True
                    reason = "stop" if bool(step.ended[i]) else "length"
                    job.emit(Event("done", finish_reason=reason, completion_tokens=len(rows[i]),
                                   prompt_tokens=int(prompt_tokens[i])))  # fmt: skip
            if all(finished) or all(j.cancelled for j in batch):
                break
        for i, job in enumerate(batch):  # a batch cut short (every client gone): close what is left
            if not finished[i]:
                job.emit(Event("done", finish_reason="length", completion_tokens=len(rows[i])))


def wall_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
