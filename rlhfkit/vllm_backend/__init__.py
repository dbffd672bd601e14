"""vLLM as the sampler: an engine in each training process ("colocate") or a separate server ("server").

    rlhfkit ppo ... --rollout-backend vllm                                   # colocated: one engine per process
    rlhfkit vllm-serve --model runs/sft-1 --port 8000                         # on its own GPU(s), then:
    rlhfkit ppo ... --rollout-backend vllm --vllm-mode server --vllm-server http://host:8000

Both give the ``TransformersSampler`` interface (``generate(prompts, n, generator=, rows=)`` -> ``Rollout``;
``sync_weights(model)``), so PPO, best-of-N, rejection sampling and ``annotate generate`` take either. What differs
from the built-in sampler:

- The engine holds its own copy of the weights. ``sync_weights`` pushes the trainer's (LoRA merged in, or the
  adapter alone with ``vllm_lora: adapter``; gathered one tensor at a time when the policy is sharded) in buckets
  of ``vllm_sync_bucket_mb``: in place for a colocated engine, over NCCL to a server, where every step has a
  timeout (``vllm_sync_timeout``) that raises instead of waiting forever on a peer that is gone.
- Every response row gets its own seed (``RowSeeds.row_seed``), so repeated prompts get different samples and a
  row samples the same on any number of processes; vLLM's kernels differ from the trainer's, so its tokens
  are not the built-in sampler's.
- Log-probs are not taken from vLLM: the trainer recomputes them with its own forward (``Rollout.logprobs`` is
  zero), so vLLM's numerics never enter the PPO ratio.

vLLM needs a GPU and the optional extra (``pip install rlhfkit[vllm]``); nothing here is imported otherwise.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from rlhfkit.config import SamplingPart
from rlhfkit.rollout import Rollout, RowSeeds, encode_prompts, eos_ids


def make_vllm_sampler(model, tokenizer, params: SamplingPart, *, model_spec: str | None = None, **options):
    """The vLLM sampler ``params.vllm_mode`` names. ``model_spec``: the model setting the engine starts from
    (its weights are replaced by the trainer's at the first ``sync_weights``)."""
    if params.vllm_mode == "server":
        from rlhfkit.vllm_backend.client import ServerSampler

        return ServerSampler(model, tokenizer, params, **_known(options, ServerSampler))
    from rlhfkit.vllm_backend.colocate import ColocatedSampler

    return ColocatedSampler(model, tokenizer, params, model_spec=model_spec, **_known(options, ColocatedSampler))


def _known(options: dict, cls) -> dict:
    """The options ``cls`` takes (``return_states``, ``packed_decode``, ``weights_owner`` are the built-in
    sampler's: vLLM returns no hidden states, and gathers sharded weights through ``named_full_weights``)."""
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in accepted}


def engine_model_path(model, tokenizer, model_spec: str | None) -> str:
    """A folder a vLLM engine can start from: the model setting's Hugging Face folder, or, for a model built from
    code (``tiny``) or none given, the model saved to a temporary folder (its weights are synced anyway)."""
    from rlhfkit.specs import parse_model_spec

    if model_spec is not None and parse_model_spec(model_spec).kind != "tiny":
        from rlhfkit.models.load import resolve_model_path

        return resolve_model_path(model_spec)
    from rlhfkit.models.load import save_model

    folder = Path(tempfile.mkdtemp(prefix="rlhfkit-vllm-"))
    save_model(model, tokenizer, folder, merge_lora=True)
    return str(folder)


def weight_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int, dtype: torch.dtype):
    """(name, tensor) pairs cast to ``dtype`` and grouped into buckets of about ``bucket_bytes``, so that a push
    is a few large transfers rather than one per tensor. Yields lists of (name, tensor)."""
    bucket, size = [], 0
    for name, tensor in named:
        tensor = tensor.to(dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def sampling_requests(params: SamplingPart, rows: int, eos: list[int], seeds: Iterator[int]) -> list[dict]:
    """One vLLM ``SamplingParams`` keyword set per row: the shared settings and the row's own seed."""
    return [
        dict(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k or -1,
            max_tokens=params.max_new_tokens,
            stop=params.stop or None,
            stop_token_ids=eos,
            seed=next(seeds),
        )
        for _ in range(rows)
    ]


def row_seeds(rows: RowSeeds | None, generator: torch.Generator | None, count: int) -> Iterator[int]:
    """Each row's seed: from ``rows`` (global rows), else drawn from ``generator`` (or fresh)."""
    if rows is not None:
        return (rows.row_seed(i) for i in range(count))
    drawn = torch.randint(0, 2**62, (count,), generator=generator) if generator is not None else None
    if drawn is None:
        drawn = torch.randint(0, 2**62, (count,))
    return iter(drawn.tolist())


def prompt_rows(tokenizer, prompts: list, n: int, max_prompt_tokens: int | None):
    """The prompts repeated n times, their left-padded ids and mask (B, P), and each row's unpadded ids."""
    prompts = [q for q in prompts for _ in range(n)]
    query_ids, query_mask = encode_prompts(tokenizer, prompts, None, max_prompt_tokens)
    return prompts, query_ids, query_mask, [r[m.bool()].tolist() for r, m in zip(query_ids, query_mask)]


def to_rollout(prompts, query_ids, query_mask, outputs: list[dict], eos: list[int], tokenizer, device) -> Rollout:
    """A ``Rollout`` from vLLM's outputs (``token_ids``, ``finish_reason``, ``stop_reason``, ``text`` per row), on
    the trainer's device. A response that stopped at an EOS id keeps that token, as the built-in sampler does
    (the policy must learn to end); log-probs are zero (the trainer recomputes them)."""
    pad = tokenizer.pad_token_id
    token_lists, ended = [], []
    for out in outputs:
        ids = list(out["token_ids"])
        done = out["finish_reason"] == "stop"
        if done and not isinstance(out.get("stop_reason"), str) and (not ids or ids[-1] not in eos):
            ids.append(out["stop_reason"] if isinstance(out.get("stop_reason"), int) else eos[0])
        token_lists.append(ids or [pad])  # of the built-in sampler always has at least one token
        ended.append(done)
    B, T = len(outputs), max(len(ids) for ids in token_lists)
    response_ids = torch.full((B, T), pad, dtype=torch.long)
    response_mask = torch.zeros(B, T, dtype=torch.long)
    for i, ids in enumerate(token_lists):
        response_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        response_mask[i, : len(ids)] = 1  # an empty response (a stop string at once) is one pad token, as a row
    return Rollout(
        prompts,
        query_ids.to(device),
        query_mask.to(device),
        response_ids.to(device),
        response_mask.to(device),
        torch.zeros(B, T, device=device),
        torch.tensor(ended, device=device),
        [out["text"] for out in outputs],
    )


__all__ = [
    "make_vllm_sampler",
    "engine_model_path",
    "weight_buckets",
    "sampling_requests",
    "row_seeds",
    "prompt_rows",
    "to_rollout",
    "eos_ids",
]
