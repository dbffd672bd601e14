"""A vLLM engine inside each training process ("colocate"), as TRL's ``vllm_mode="colocate"`` runs it.

Each training process (or each group of ``vllm_tensor_parallel_size`` consecutive processes, which then pool
their prompts, since the ranks of one tensor-parallel engine must all be given the same requests) holds an
engine started with ``distributed_executor_backend="external_launcher"``: vLLM joins the process group the
launcher (torchrun / ``accelerate launch``) made, instead of starting workers of its own. The trainer's weights
are loaded into the engine's model in place, bucket by bucket (no copy over a wire); with ``vllm_sleep`` the
engine offloads its weights and frees its KV cache between rollouts (vLLM's sleep mode, level 1), leaving the
GPU memory to training.

Untested here: it needs vLLM and a GPU (tests/test_vllm.py runs where both exist).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from rlhfkit.config import SamplingPart
from rlhfkit.models.sharded import named_full_weights
from rlhfkit.rollout import Rollout, RowSeeds
from rlhfkit.vllm_backend import (
    engine_model_path,
    eos_ids,
    prompt_rows,
    row_seeds,
    sampling_requests,
    to_rollout,
    weight_buckets,
)


def _distributed_env() -> None:
    """external_launcher reads the torch.distributed variables; a single process started without a launcher
    is a world of one (as TRL sets them)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    for name, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": os.environ.get("MASTER_PORT", "29591"),
    }.items():
        os.environ.setdefault(name, value)


class ColocatedSampler:
    def __init__(
        self,
        model,
        tokenizer,
        params: SamplingPart,
        *,
        model_spec: str | None = None,
        max_prompt_tokens: int | None = None,
        dtype: torch.dtype | None = None,
    ):
        """``dtype``: the engine's (default bfloat16, or float16 on GPUs without it; the trainer recomputes the
        log-probs in its own precision, so only the samples depend on it)."""
        from vllm import LLM

        self.tokenizer, self.params, self.max_prompt_tokens = tokenizer, params, max_prompt_tokens
        self.eos = eos_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        self.dtype = dtype or (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        self.lora_request, self.adapter_version = None, 0
        self.adapter_mode = params.vllm_lora == "adapter" and hasattr(model, "peft_config")
        self.tp_group, self.tp_rank, self.tp_size = _tensor_parallel_group(params.vllm_tensor_parallel_size)
        _distributed_env()
        lora = dict(enable_lora=True, max_lora_rank=_lora_rank(model)) if self.adapter_mode else {}
        self.llm = LLM(
            model=engine_model_path(model, tokenizer, model_spec),
            dtype=str(self.dtype).removeprefix("torch."),
            gpu_memory_utilization=params.vllm_gpu_memory_utilization,
            tensor_parallel_size=params.vllm_tensor_parallel_size,
            distributed_executor_backend="external_launcher",
            enable_sleep_mode=params.vllm_sleep,
            enable_prefix_caching=True,
            max_model_len=(max_prompt_tokens + params.max_new_tokens) if max_prompt_tokens else None,
            **lora,
        )
        self.asleep = False
        self.sync_weights(model)

    # --- weights -------------------------------------------------------------------------------------------

    def sync_weights(self, model) -> None:
        """The trainer's current weights into the engine (collective under a sharded policy: every process calls
        it). Merged: every weight, LoRA added in, loaded in place bucket by bucket. Adapter: the LoRA weights
        saved as a new adapter version that the next rollouts name."""
        self._wake()
        if self.adapter_mode:
            self._save_adapter(model)
        else:
            target = _engine_model(self.llm)
            bucket_bytes = self.params.vllm_sync_bucket_mb << 20
            for bucket in weight_buckets(named_full_weights(model, merge_lora=True), bucket_bytes, self.dtype):
                target.load_weights(weights=[(name, t.to(self.device)) for name, t in bucket])
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights

    def _save_adapter(self, model) -> None:
        from vllm.lora.request import LoRARequest

        self.adapter_version += 1
        folder = Path(tempfile.mkdtemp(prefix=f"rlhfkit-adapter-{self.adapter_version}-"))
        state = {name: t.cpu() for name, t in named_full_weights(model, merge_lora=False) if "lora_" in name}
        model.save_pretrained(folder, state_dict=state)
        self.lora_request = LoRARequest(f"policy-{self.adapter_version}", self.adapter_version, str(folder))

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    # --- sampling ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self, prompts: list, n: int = 1, generator: torch.Generator | None = None, rows: RowSeeds | None = None
    ) -> Rollout:
        from vllm import SamplingParams

        self._wake()
        prompts, query_ids, query_mask, ids = prompt_rows(self.tokenizer, prompts, n, self.max_prompt_tokens)
        seeds = list(row_seeds(rows, generator, len(ids)))
        # the ranks of one tensor-parallel engine must submit the same requests: pool them, keep our rows
        pooled_ids, pooled_seeds, mine = _pool(self.tp_group, self.tp_size, self.tp_rank, ids, seeds)
        requests = sampling_requests(self.params, len(pooled_ids), self.eos, iter(pooled_seeds))
        outs = self.llm.generate(
            [{"prompt_token_ids": r} for r in pooled_ids],
            [SamplingParams(**kw) for kw in requests],
            use_tqdm=False,
            lora_request=self.lora_request,
        )
        outputs = [
            dict(
                token_ids=o.outputs[0].token_ids,
                finish_reason=o.outputs[0].finish_reason,
                stop_reason=o.outputs[0].stop_reason,
                text=o.outputs[0].text,
            )
            for o in outs[mine]
        ]
        if self.params.vllm_sleep:
            self.llm.sleep(level=1)
            self.asleep = True
        return to_rollout(prompts, query_ids, query_mask, outputs, self.eos, self.tokenizer, self.device)


def _engine_model(llm):
    """The engine's model object (in this process, with the external launcher), whose ``load_weights`` takes
    Hugging Face names and full tensors and shards them itself under tensor parallelism."""
    executor = llm.llm_engine.model_executor
    worker = executor.driver_worker
    worker = getattr(worker, "worker", worker)  # vLLM wraps the worker in a WorkerWrapperBase
    return worker.model_runner.model


def _lora_rank(model) -> int:
    return max(int(c.r) for c in model.peft_config.values())


def _tensor_parallel_group(tp: int):
    """(group, rank in it, size) of the consecutive processes that share one engine; (None, 0, 1) alone."""
    import torch.distributed as dist

    if tp == 1:
        return None, 0, 1
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() % tp:
        raise ValueError(f"vllm_tensor_parallel_size {tp} must divide the number of training processes")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = None
    for start in range(0, world, tp):
        group = dist.new_group(list(range(start, start + tp)))  # every process creates every group
        if start <= rank < start + tp:
            mine = group
    return mine, rank % tp, tp


def _pool(group, size: int, rank: int, ids: list, seeds: list):
    """All requests of the tensor-parallel group in rank order, and the slice that is this process's own."""
    if group is None:
        return ids, seeds, slice(0, len(ids))
    import torch.distributed as dist

    gathered = [None] * size
    dist.all_gather_object(gathered, (ids, seeds), group=group)
    start = sum(len(g[0]) for g in gathered[:rank])
    return [r for g in gathered for r in g[0]], [s for g in gathered for s in g[1]], slice(start, start + len(ids))
