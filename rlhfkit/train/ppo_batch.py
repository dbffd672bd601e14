"""The pieces of a PPO step that are not its maths: the trained modules as one, the rollout batch gathered from
every process, the reward normaliser, and the sample table.

Why gather the batch: whitening the advantages, normalising the scores and cutting the mini-batches must see the
whole global batch, or two processes would compute something other than one process does (each would whiten its
own half, and mini-batch k would be a different set of responses). Every process samples, scores and runs the
behaviour and reference passes on its own share; the per-token results (a few (B, T) tensors) are then gathered,
every process computes the same advantages over the whole batch, and each takes its slice of every mini-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from rlhfkit.models.load import base_causal_lm
from rlhfkit.models.value import ValueHead
from rlhfkit.rollout import Rollout
from rlhfkit.rollout_forward import response_forward
from rlhfkit.train import common


class ActorCritic(nn.Module):
    """The policy and its critic (a head on its trunk, a separate model, or none) as one module, so that Accelerate
    prepares a single model (FSDP2 shards one root) and every forward passes through it (a wrapper's hooks see
    each call). ``forward(batch, part=...)``:

    - ``"policy"``: log-probs (B, T) at ``temperature`` (+ ``entropy``), and the critic's values (B, T);
    - ``"reference"``: the policy's log-probs with its LoRA adapters off (the reference without a second copy);
    - ``"values"``: the critic's values only, from ``hidden`` (B, T, H) for a head, else from the tokens.
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None):
        super().__init__()
        self.policy, self.critic = policy, critic

    @property
    def head(self) -> bool:
        return isinstance(self.critic, ValueHead)

    @property
    def _no_split_modules(self) -> list[str]:
        """The policy's decoder-layer classes: what FSDP's transformer wrap policy shards one by one."""
        return list(getattr(base_causal_lm(self.policy), "_no_split_modules", None) or [])

    def forward(
        self, batch, temperature: float, part: str = "policy", entropy: bool = False, hidden: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if part == "reference":
            with self.policy.disable_adapter():
                return response_forward(self.policy, batch, temperature)
        if part == "values":
            return {"values": self._values(batch, hidden)}
        out = response_forward(self.policy, batch, temperature, hidden=self.head, entropy=entropy)
        if self.critic is not None:
            out["values"] = self._values(batch, out.pop("hidden", None))
        return out

    def _values(self, batch, hidden: torch.Tensor | None) -> torch.Tensor:
        if self.head:
            return self.critic(hidden)
        return self.critic(batch.input_ids, batch.attention_mask, batch.response_ids.size(1))


@dataclass
class RolloutBatch:
    """The whole global batch after the behaviour pass, the same on every process. Prompts left-padded, responses
    right-padded: query_ids, query_mask (B, P); response_ids, response_mask, logprobs (behaviour), ref_logprobs,
    entropy, values (B, T; values None without a critic); ended, raw_scores (B,)."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    entropy: torch.Tensor
    ended: torch.Tensor
    raw_scores: torch.Tensor
    values: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:  # (B, P + T)
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (B, P + T)
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def rows(self, idx: torch.Tensor) -> RolloutBatch:
        return RolloutBatch(**{f.name: _rows(getattr(self, f.name), idx) for f in fields(self)})

    def piece_tokens(self, idx: torch.Tensor) -> int:
        """Tokens a forward over rows ``idx`` runs, padding included: each distinct prompt once (the samples of one
        prompt share its forward) and every response."""
        prompts = torch.unique(self.query_ids[idx], dim=0).size(0)
        return prompts * self.query_ids.size(1) + idx.numel() * self.response_ids.size(1)


def _rows(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[idx]


def gather_batch(accelerator, rollout: Rollout, behaviour: dict, ref_logprobs, raw_scores, pad_id: int) -> RolloutBatch:
    """Every process's share of the rollout, in global row order (shares are contiguous), padded to the widest
    prompt (on the left) and response (on the right). One process: its own tensors, unchanged."""
    device = accelerator.device

    def gather(t, pad_first=False, pad_value=0):
        if t.dtype == torch.bool:  # not every backend gathers booleans
            return gather(t.long(), pad_first, pad_value).bool()
        return common.gather_rows(accelerator, t.to(device), pad_first=pad_first, pad_value=pad_value)

    values = behaviour.get("values")
    return RolloutBatch(
        query_ids=gather(rollout.query_ids, pad_first=True, pad_value=pad_id),
        query_mask=gather(rollout.query_mask, pad_first=True),
        response_ids=gather(rollout.response_ids, pad_value=pad_id),
        response_mask=gather(rollout.response_mask),
        logprobs=gather(behaviour["logprobs"]),
        ref_logprobs=gather(ref_logprobs),
        entropy=gather(behaviour["entropy"]),
        ended=gather(rollout.ended),
        raw_scores=gather(raw_scores),
        values=None if values is None else gather(values),
    )


def minibatch_share(rows: torch.Tensor, accelerator) -> torch.Tensor:
    """This process's slice of one global mini-batch (``rows``: global row indices)."""
    return torch.tensor_split(rows, accelerator.num_processes)[accelerator.process_index]


class RewardNormalizer:
    """Scores to mean 0, std 1: statistics of the first batch (the reference policy's samples, as
    lm-human-preferences normalises its reward model) or running ones (Welford). It is given the whole
    global batch, so every process keeps the same statistics."""

    def __init__(self, mode: str, state: dict | None = None):
        self.mode = mode
        self.n, self.mean, self.m2 = (
            (state or {}).get("n", 0),
            (state or {}).get("mean", 0.0),
            (state or {}).get("m2", 0.0),
        )

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return scores
        if self.n == 0 or self.mode == "running":
            for x in scores.tolist():
                self.n += 1
                delta = x - self.mean
                self.mean += delta / self.n
                self.m2 += delta * (x - self.mean)
        std = math.sqrt(self.m2 / max(self.n - 1, 1))
        return (scores - self.mean) / (std if std > 1e-6 else 1.0)

    def state(self) -> dict:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}


def samples_table(rollout: Rollout, scores: torch.Tensor, n: int) -> str:
    def text(p):
        return p if isinstance(p, str) else " / ".join(m.content for m in p)

    rows = ["| prompt | response | score |", "|---|---|---|"]
    for i in range(min(n, len(rollout.texts))):
        cells = [text(rollout.prompts[i]), rollout.texts[i]]
        rows.append(
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + f" | {scores[i]:.3f} |"
        )
    return "\n".join(rows)
