"""The sampler a run's ``SamplingPart`` names: the built-in one (``rlhfkit.rollout.TransformersSampler``) or vLLM's
(``rlhfkit.vllm_backend``, an optional extra). Above both backends, since the vLLM backend is built on the built-in
sampler's types (``Rollout``, ``RowSeeds``).

    sampler = make_sampler(model, tokenizer, SamplingPart(max_new_tokens=48, temperature=0.7))
    rollout = sampler.generate(prompts, n=4, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from rlhfkit.config import SamplingPart
from rlhfkit.rollout import TransformersSampler


def make_sampler(model, tokenizer, params: SamplingPart, **options):
    """The sampler ``params.rollout_backend`` names, for ``model``; ``options`` as ``TransformersSampler`` takes
    (the vLLM samplers take ``model_spec`` too, the model setting their engine starts from)."""
    if params.rollout_backend == "vllm":
        from rlhfkit.vllm_backend import make_vllm_sampler  # optional extra: imported only when asked for

        return make_vllm_sampler(model, tokenizer, params, **options)
    options.pop("model_spec", None)
    return TransformersSampler(model, tokenizer, params, **options)
