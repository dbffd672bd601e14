"""``rlhfkit vllm-serve``: a vLLM engine on its own GPU(s) that samples for a trainer and takes its weights.

    CUDA_VISIBLE_DEVICES=7 rlhfkit vllm-serve --model runs/sft-1 --port 8000
    CUDA_VISIBLE_DEVICES=0-6 accelerate launch ... -m rlhfkit.cli ppo ... --rollout-backend vllm --vllm-mode server

Routes (JSON over HTTP): ``GET /health``; ``GET /info`` (the engine's worker count and dtype); ``POST /generate``
(token-id prompts, one seed per row, the sampling settings -> token ids, finish reasons, texts); ``POST
/weights/init`` (join an NCCL group with the trainer: the engine's workers are ranks 0..W-1, the trainer W);
``POST /weights/bucket`` (names, shapes, dtype of the next bucket: the workers receive it as one flat tensor by
NCCL broadcast and load it); ``POST /weights/done`` (waits until every bucket is loaded, resets the prefix cache);
``POST /weights/close``.

Every engine call runs on one worker thread, in the order the requests came: a bucket is received before the
next, and a generation asked for after ``/weights/done`` sees the new weights. Each collective call has the
timeout the trainer sent (``vllm_sync_timeout``), so a trainer that died mid-push makes the call raise, not hang.

Untested here: it needs vLLM and a GPU (tests/test_vllm.py runs where both exist).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch


class WeightReceiver:
    """Methods vLLM adds to each of its workers (``worker_extension_cls``): join the trainer's NCCL group,
    receive a bucket, load it. ``self.device`` and ``self.model_runner`` are the worker's own."""

    weight_group = None
    sender = None

    def init_weight_group(self, host: str, port: int, world_size: int) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host=host, port=port, rank=get_world_group().rank, world_size=world_size)
        self.weight_group = PyNcclCommunicator(group, device=self.device)
        self.sender = world_size - 1  # the trainer joins last

    def receive_bucket(self, names: list[str], shapes: list[list[int]], dtype: str) -> None:
        if self.weight_group is None:
            raise RuntimeError("no weight group: POST /weights/init first")
        sizes = [math.prod(s) for s in shapes]
        flat = torch.empty(sum(sizes), dtype=getattr(torch, dtype), device=self.device)
        self.weight_group.broadcast(flat, src=self.sender, stream=torch.cuda.current_stream())
        torch.cuda.current_stream().synchronize()
        parts = flat.split(sizes)
        self.model_runner.model.load_weights(weights=[(n, p.view(s)) for n, p, s in zip(names, parts, shapes)])

    def close_weight_group(self) -> None:
        self.weight_group = self.sender = None


def make_app(
    model: str,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    dtype: str = "auto",
    max_model_len: int | None = None,
):
    """The FastAPI app around one engine."""
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
    from vllm import LLM, SamplingParams

    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # CUDA cannot be re-initialised in a fork
    llm = LLM(
        model=model,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        dtype=dtype,
        max_model_len=max_model_len,
        enable_prefix_caching=True,
        worker_extension_cls="rlhfkit.vllm_backend.server.WeightReceiver",
    )
    engine = ThreadPoolExecutor(max_workers=1)  # one engine call at a time, in arrival order
    pending = []  # weight calls not yet waited for

    def on_engine(fn, *args, **kwargs):
        return engine.submit(fn, *args, **kwargs)

    app = FastAPI(title="rlhfkit vllm-serve")

    class Generate(BaseModel):
        prompt_token_ids: list[list[int]]
        seeds: list[int]
        sampling: dict
        timeout: float = 600.0

    class Init(BaseModel):
        host: str
        port: int
        world_size: int
        timeout: float = 300.0

    class Bucket(BaseModel):
        names: list[str]
        shapes: list[list[int]]
        dtype: str
        timeout: float = 300.0

    class Done(BaseModel):
        timeout: float = 300.0

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/info")
    def info():
        config = llm.llm_engine.vllm_config
        workers = config.parallel_config.world_size
        return {"workers": workers, "dtype": str(config.model_config.dtype).removeprefix("torch."), "model": model}

    @app.post("/generate")
    def generate(req: Generate):
        if len(req.seeds) != len(req.prompt_token_ids):
            raise HTTPException(422, "one seed per prompt row")

        def run():
            params = [SamplingParams(**req.sampling, seed=seed) for seed in req.seeds]
            outs = llm.generate([{"prompt_token_ids": r} for r in req.prompt_token_ids], params, use_tqdm=False)
            return [
                {
                    "token_ids": list(o.outputs[0].token_ids),
                    "finish_reason": o.outputs[0].finish_reason,
                    "stop_reason": o.outputs[0].stop_reason,
                    "text": o.outputs[0].text,
                }
                for o in outs
            ]

        return {"outputs": on_engine(run).result(timeout=req.timeout)}

    @app.post("/weights/init")
    def init(req: Init):
        # returns at once: the trainer joins the group after this answer, and the join completes on both sides
        pending.append(
            on_engine(
                llm.collective_rpc, "init_weight_group", timeout=req.timeout, args=(req.host, req.port, req.world_size)
            )
        )
        return {"status": "joining"}

    @app.post("/weights/bucket")
    def bucket(req: Bucket):
        pending.append(
            on_engine(
                llm.collective_rpc, "receive_bucket", timeout=req.timeout, args=(req.names, req.shapes, req.dtype)
            )
        )
        return {"status": "receiving"}

    @app.post("/weights/done")
    def done(req: Done):
        try:
            while pending:
                pending.pop(0).result(timeout=req.timeout)
        except Exception as e:  # a receive that failed or timed out: the weights are not the trainer's
            raise HTTPException(500, f"weight update failed: {e!r}") from None
        on_engine(llm.reset_prefix_cache).result(timeout=req.timeout)
        return {"status": "loaded"}

    @app.post("/weights/close")
    def close():
        on_engine(llm.collective_rpc, "close_weight_group").result()
        return {"status": "closed"}

    return app


def serve(model: str, host: str, port: int, **engine) -> None:
    import uvicorn

    uvicorn.run(make_app(model, **engine), host=host, port=port, log_level="warning")
