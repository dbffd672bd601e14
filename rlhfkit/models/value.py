"""The critic: a value head on the policy's own trunk, or a separate model with its own head.

``ValueHead`` maps the last hidden state at each position to a scalar V(s_t), where s_t = prompt plus
the first t response tokens (the state in which response token t is chosen). On the policy's trunk it
adds hidden_size + 1 parameters and no second copy of the weights; ``SeparateCritic`` is a full causal
LM used only for its hidden states (initialised from the policy's starting weights, or from a reward
model's trunk and head, which Ouyang et al. 2022 and Huang et al. 2024 report helps).
"""

from __future__ import annotations

import torch
from torch import nn

from rlhfkit.rollout import Rollout, position_ids


class ValueHead(nn.Module):
    """Linear(hidden, 1) on hidden states: (B, T, H) -> (B, T). Zero-initialised, so V = 0 at the start
    (no noise in the first advantages)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


class SeparateCritic(nn.Module):
    """A trunk of its own (a causal LM, or a reward model's base-model trunk) plus a ``ValueHead``;
    ``forward(rollout)`` -> values (B, T)."""

    def __init__(self, lm: nn.Module, head: ValueHead | None = None):
        super().__init__()
        self.lm = lm
        self.head = head or ValueHead(lm.config.hidden_size)

    def forward(self, rollout: Rollout) -> torch.Tensor:
        T = rollout.response_ids.size(1)
        mask = rollout.attention_mask
        causal = hasattr(self.lm, "get_output_embeddings") and self.lm.get_output_embeddings() is not None
        out = self.lm(
            input_ids=rollout.input_ids,
            attention_mask=mask,
            position_ids=position_ids(mask),
            use_cache=False,
            output_hidden_states=True,
            **({"logits_to_keep": 1} if causal else {}),
        )
        hidden = getattr(out, "last_hidden_state", None)
        hidden = out.hidden_states[-1] if hidden is None else hidden  # (B, P + T, H)
        return self.head(hidden[:, -T - 1 : -1])  # (B, T)


def head_from_reward_model(rm, hidden_size: int) -> ValueHead:
    """A value head that starts as the reward model's scoring head (when shapes match; else zeros)."""
    head = ValueHead(hidden_size)
    score = getattr(rm, "head", None) or getattr(rm, "score", None)
    weight = getattr(score, "weight", None)
    if weight is not None and weight.shape[-1] == hidden_size:
        with torch.no_grad():
            head.linear.weight.copy_(weight.reshape(1, hidden_size))
            if getattr(score, "bias", None) is not None:
                head.linear.bias.copy_(score.bias.reshape(1))
    return head
