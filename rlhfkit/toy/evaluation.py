"""Evaluate a policy on the toy world: gold utility, win rate against a baseline, KL, proxy reward.

This is the only place (with the simulated annotators) that reads the gold utility; training code never
does. Evaluation prompts come from a seed kept apart from every training seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rlhfkit.config import SamplingPart
from rlhfkit.data.records import Message
from rlhfkit.evaluate.stats import win_rate
from rlhfkit.rollout import TransformersSampler
from rlhfkit.rollout_forward import response_forward
from rlhfkit.toy.data import EVAL_SEED
from rlhfkit.toy.gold import refuses, utility
from rlhfkit.toy.world import Prompt, sample_prompt


def eval_prompts(n: int, seed: int = EVAL_SEED) -> list[Prompt]:
    rng = random.Random(seed)
    return [sample_prompt(rng) for _ in range(n)]


def as_chat(prompt: Prompt, system: str | None = None) -> list[Message]:
    """The prompt as a one-turn chat, after a system message when given (e.g. one naming a persona)."""
    head = [Message(role="system", content=system)] if system else []
    return head + [Message(role="user", content=prompt.text)]


@dataclass
class PolicySamples:
    prompts: list[Prompt]
    texts: list[str]
    gold: list[float]
    kl_to_ref: float | None = None


@torch.no_grad()
def sample_policy(
    model,
    tokenizer,
    prompts: list[Prompt],
    *,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    ref_model=None,
    system: str | None = None,
) -> PolicySamples:
    """One sample per prompt (after the system message ``system``, if given); with ``ref_model`` also the
    Monte-Carlo KL(policy || ref) per response (k1, summed over its tokens, averaged over responses)."""
    sampler = TransformersSampler(
        model, tokenizer, SamplingPart(max_new_tokens=max_new_tokens, temperature=temperature)
    )
    generator = torch.Generator().manual_seed(seed)
    texts, kls = [], []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        rollout = sampler.generate([as_chat(p, system) for p in chunk], generator=generator)
        texts += rollout.texts
        if ref_model is not None:
            policy_lp = response_forward(model, rollout, temperature)["logprobs"]
            ref_lp = response_forward(ref_model, rollout, temperature)["logprobs"]
            kls += ((policy_lp - ref_lp) * rollout.response_mask).sum(-1).tolist()
    gold = [utility(p, t) for p, t in zip(prompts, texts)]
    return PolicySamples(prompts, texts, gold, sum(kls) / len(kls) if kls else None)


def compare(samples: PolicySamples, baseline: PolicySamples) -> dict[str, float]:
    rate, lo, hi = win_rate(samples.gold, baseline.gold)
    return {"gold": sum(samples.gold) / len(samples.gold), "win_rate": rate, "win_lo": lo, "win_hi": hi}


def refusal_rates(prompts: list[Prompt], texts: list[str]) -> dict[str, float]:
    """Share of responses that refuse, per prompt kind."""
    out = {}
    for kind in ("benign", "harmful", "unanswerable"):
        picked = [refuses(t) for p, t in zip(prompts, texts) if p.kind == kind]
        if picked:
            out[kind] = sum(picked) / len(picked)
    return out
