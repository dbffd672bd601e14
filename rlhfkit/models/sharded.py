"""Full weights of a model whose parameters may be sharded across processes (FSDP2, FSDP1, DeepSpeed ZeRO-3).

Under those engines each process holds a shard of every parameter, but sampling (the packed decode step, a
vLLM engine) and saving need whole tensors. Two ways to get them, both collective (every process must call them,
in the same order, or the processes wait on each other forever):

- ``full_weights(model)``: a context in which every parameter of ``model`` reads as its full tensor (the whole
  model gathered at once; FSDP2 ``unshard``, FSDP1 ``summon_full_params``, ZeRO-3 ``GatheredParameters``). The
  transformers sampler builds its decoder inside it.
- ``named_full_weights(model)``: (name, full tensor) one parameter at a time, LoRA merged in and named as in the
  plain Hugging Face model, so that only one tensor is gathered at a time (weight sync to vLLM, the final save).

On a model that is not sharded both are free: the context does nothing and the names are the parameters' own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rlhfkit.models.load import base_causal_lm


def _is_dtensor(t) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "full_tensor")


def sharding_of(model) -> str | None:
    """'fsdp2', 'fsdp1', 'zero3', or None when every process holds whole parameters."""
    for p in model.parameters():
        if _is_dtensor(p):
            return "fsdp2"
        if hasattr(p, "ds_id"):  # a DeepSpeed ZeRO-3 partitioned parameter
            return "zero3"
        if type(p).__name__ == "FlatParameter":
            return "fsdp1"
    return None


def _fsdp2_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_weights(model, keep_through_forward: bool = False):
    """Every parameter of ``model`` whole inside the context (collective). ``keep_through_forward``: the model's
    own forward may run inside and must not reshard after each call (FSDP2 only: FSDP1 forbids forward while
    summoned, and a ZeRO-3 forward repartitions)."""
    kind = sharding_of(model)
    if kind is None:
        yield model
    elif kind == "fsdp2":
        modules = _fsdp2_modules(model)
        for m in modules:
            m.unshard()
            if keep_through_forward:
                m.set_reshard_after_forward(False, recurse=False)
        try:
            yield model
        finally:
            for m in modules:
                if keep_through_forward:
                    m.set_reshard_after_forward(True, recurse=False)
                m.reshard()
    elif keep_through_forward:
        raise NotImplementedError(
            f"sampling through the model's own forward under {kind}: use FSDP2 (configs/accelerate/fsdp2.yaml), a "
            "Llama-family model (the packed decode step reads the gathered weights once), or --rollout-backend vllm"
        )
    elif kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False, recurse=True):
            yield model
    else:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield model


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if _is_dtensor(t) else t).detach()


def _lora_delta(layer, full) -> torch.Tensor | None:
    """The summed delta (out, in) of a peft LoRA layer's active adapters, from full adapter weights."""
    delta = None
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        a, b = full(layer.lora_A[name].weight), full(layer.lora_B[name].weight)  # (r, in), (out, r)
        d = (b @ a) * layer.scaling[name]
        if getattr(layer, "fan_in_fan_out", False):
            d = d.t()
        delta = d if delta is None else delta + d
    return delta


def named_full_weights(model, merge_lora: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter of the plain causal LM, one gathered at a time (collective: call
    it on every process). Under peft with ``merge_lora`` the adapters are added into their base weights and the
    names are those of the base model (``model.layers.0.self_attn.q_proj.weight``), as a vLLM engine or
    ``save_pretrained`` of the merged model expects; without it, the peft model's own parameter names."""
    kind = sharding_of(model)
    if kind == "fsdp1":  # parameters are flattened per unit: only a whole summon gives them back by name
        with full_weights(model):
            yield from _named(model, merge_lora, lambda t: t.detach())
        return
    if kind == "zero3":
        import deepspeed

        def gathered(t):  # t must be the parameter itself: a detached copy of a partitioned one is empty
            with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
                return t.detach().clone()

        yield from _named(model, merge_lora, gathered)
        return
    yield from _named(model, merge_lora, _full)


_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _clean(name: str) -> str:
    """A parameter's name without the wrappers FSDP1 and activation checkpointing insert."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _named(model, merge_lora: bool, full) -> Iterator[tuple[str, torch.Tensor]]:
    is_peft = hasattr(model, "peft_config")
    if not (is_peft and merge_lora):
        for name, p in model.named_parameters():
            yield _clean(name), full(p)
        return
    lm = base_causal_lm(model)
    inside_lora = set()
    for prefix, module in lm.named_modules():
        base = getattr(module, "base_layer", None)
        if base is None or not hasattr(module, "lora_A"):
            continue
        inside_lora.add(_clean(prefix))
        weight = full(base.weight)
        if not (module.disable_adapters or module.merged):
            delta = _lora_delta(module, full)
            if delta is not None:
                weight = weight + delta.to(weight.dtype)
        yield f"{_clean(prefix)}.weight", weight
        if getattr(base, "bias", None) is not None:
            yield f"{_clean(prefix)}.bias", full(base.bias)
    for name, p in lm.named_parameters():
        name = _clean(name)
        parts = name.split(".")
        if any(".".join(parts[:i]) in inside_lora for i in range(1, len(parts))):
            continue  # a LoRA layer's base_layer and lora_A/B weights: already yielded, merged
        yield name, full(p)
