"""The trainer's side of ``rlhfkit vllm-serve`` (``vllm_mode: server``): requests go to the server over HTTP,
weights over NCCL.

With several training processes the main process alone talks to the server: every process hands it its
prompts (and their row seeds), it sends one request, and each process takes its own rows of the answer. A weight
push gathers the full weights on every process (collective under a sharded policy) and the main process sends
them, bucket by bucket: ``POST /weights/bucket`` with the names and shapes, then one broadcast of the flattened
bucket. The broadcast runs on a helper thread that is given ``vllm_sync_timeout`` seconds: if the server does not
take part (it died, or is stuck), the push raises ``TimeoutError`` instead of blocking the run for ever.

Untested here: it needs vLLM and a GPU (tests/test_vllm.py runs where both exist).
"""

from __future__ import annotations

import threading
from urllib.parse import urlparse

import torch

from rlhfkit.config import SamplingPart
from rlhfkit.models.sharded import named_full_weights
from rlhfkit.rollout import Rollout, RowSeeds
from rlhfkit.vllm_backend import eos_ids, prompt_rows, row_seeds, sampling_requests, to_rollout, weight_buckets

GROUP_PORT_OFFSET = 1  # the NCCL group's rendezvous listens on the server's port + 1


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


class ServerSampler:
    def __init__(self, model, tokenizer, params: SamplingPart, *, max_prompt_tokens: int | None = None):
        if params.vllm_lora == "adapter" and hasattr(model, "peft_config"):
            raise ValueError("vllm_lora 'adapter' needs vllm_mode 'colocate' (a server is sent merged weights)")
        self.tokenizer, self.params, self.max_prompt_tokens = tokenizer, params, max_prompt_tokens
        self.eos = eos_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        self.url = params.vllm_server.rstrip("/")
        self.timeout = params.vllm_sync_timeout
        self.is_main = _dist() is None or _dist().get_rank() == 0
        self.group = None
        if self.is_main:
            import httpx

            self.http = httpx.Client(base_url=self.url, timeout=self.timeout)
            info = self._get("/info")
            self.workers, self.dtype = info["workers"], getattr(torch, info["dtype"])
        self.dtype = _broadcast(self.dtype if self.is_main else None)
        self.sync_weights(model)

    # --- HTTP ----------------------------------------------------------------------------------------------

    def _get(self, path: str) -> dict:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, **body) -> dict:
        response = self.http.post(path, json=body, timeout=body.get("timeout", self.timeout) + 30)
        if response.status_code != 200:
            raise RuntimeError(f"vllm-serve {self.url}{path}: {response.status_code} {response.text}")
        return response.json()

    # --- weights -------------------------------------------------------------------------------------------

    def _join_group(self) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        host = urlparse(self.url).hostname
        port = (urlparse(self.url).port or 80) + GROUP_PORT_OFFSET
        world = self.workers + 1
        self._post("/weights/init", host="0.0.0.0", port=port, world_size=world, timeout=self.timeout)
        store = StatelessProcessGroup.create(host=host, port=port, rank=self.workers, world_size=world)
        self.group = PyNcclCommunicator(store, device=torch.cuda.current_device())

    def sync_weights(self, model) -> None:
        """Push the trainer's weights (LoRA merged in) to the server; call it on every process."""
        if self.is_main and self.group is None:
            self._join_group()
        buckets = weight_buckets(
            named_full_weights(model, merge_lora=True), self.params.vllm_sync_bucket_mb << 20, self.dtype
        )
        for bucket in buckets:  # every process iterates: gathering a sharded weight is collective
            if self.is_main:
                self._send(bucket)
        if self.is_main:
            self._post("/weights/done", timeout=self.timeout)
        if _dist() is not None:
            _dist().barrier()  # no process samples before the server holds the new weights

    def _send(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        names = [name for name, _ in bucket]
        shapes = [list(t.shape) for _, t in bucket]
        flat = torch.cat([t.reshape(-1) for _, t in bucket]).to(f"cuda:{torch.cuda.current_device()}")
        self._post(
            "/weights/bucket",
            names=names,
            shapes=shapes,
            dtype=str(flat.dtype).removeprefix("torch."),
            timeout=self.timeout,
        )
        failure = []

        def broadcast():
            try:
                self.group.broadcast(flat, src=self.workers, stream=torch.cuda.current_stream())
                torch.cuda.current_stream().synchronize()
            except Exception as e:  # noqa: BLE001 - reported to the caller below
                failure.append(e)

        sender = threading.Thread(target=broadcast, daemon=True)
        sender.start()
        sender.join(self.timeout)
        if sender.is_alive():
            raise TimeoutError(
                f"weight push to {self.url} did not finish in {self.timeout:.0f} s (vllm_sync_timeout): is the "
                "server alive and the NCCL port reachable?"
            )
        if failure:
            raise RuntimeError(f"weight push to {self.url} failed: {failure[0]!r}")

    # --- sampling ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self, prompts: list, n: int = 1, generator: torch.Generator | None = None, rows: RowSeeds | None = None
    ) -> Rollout:
        prompts, query_ids, query_mask, ids = prompt_rows(self.tokenizer, prompts, n, self.max_prompt_tokens)
        seeds = list(row_seeds(rows, generator, len(ids)))
        shares = _gather((ids, seeds))  # every process's rows, in process order
        outputs = None
        if self.is_main:
            sampling = sampling_requests(self.params, 1, self.eos, iter([0]))[0]
            sampling.pop("seed")
            outputs = self._post(
                "/generate",
                prompt_token_ids=[r for share in shares for r in share[0]],
                seeds=[s for share in shares for s in share[1]],
                sampling=sampling,
                timeout=self.timeout,
            )["outputs"]
        outputs = _broadcast(outputs)
        start = sum(len(share[0]) for share in shares[: _rank()])
        mine = outputs[start : start + len(ids)]
        return to_rollout(prompts, query_ids, query_mask, mine, self.eos, self.tokenizer, self.device)


def _rank() -> int:
    return _dist().get_rank() if _dist() is not None else 0


def _gather(item) -> list:
    dist = _dist()
    if dist is None:
        return [item]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, item)
    return out


def _broadcast(item):
    dist = _dist()
    if dist is None:
        return item
    box = [item]
    dist.broadcast_object_list(box, src=0)
    return box[0]
