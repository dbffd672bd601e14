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

from rlhfkit.models.decode import position_ids


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
    ``forward(input_ids, attention_mask, T)`` -> values (B, T) of the last T positions' states (the response)."""

    def __init__(self, lm: nn.Module, head: ValueHead | None = None):
        super().__init__()
        self.lm = lm
        self.head = head or ValueHead(lm.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int) -> torch.Tensor:
        """input_ids, attention_mask (B, P + T), prompts left-padded -> values (B, T): the state before each of the
        T response tokens."""
        T = response_length
        causal = hasattr(self.lm, "get_output_embeddings") and self.lm.get_output_embeddings() is not None
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
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
