"""The forward pass over a finished rollout: the per-token log-probs of its responses under a model (and, when
asked, the hidden states a value head reads and the entropies), for PPO's update, reference and behaviour passes,
the monitor's KL and the evaluations. Sampling itself is ``rlhfkit.rollout``.

The response sits at the right end of every row (prompts left-padded), so only the last T + 1 positions' logits
are computed; rows that share a prompt (GRPO, RLOO, best-of-n) run the prompt once per group
(``shared_prompt_forward``).
"""

from __future__ import annotations

import torch

from rlhfkit.data.pairs import Group, last_layer_only_at, model_mask, pack_groups, positions_to_keep
from rlhfkit.losses import entropy_from_logits, selective_log_softmax
from rlhfkit.models.decode import position_ids
from rlhfkit.models.load import base_causal_lm, output_head
from rlhfkit.rollout import Rollout

Tensor = torch.Tensor


def response_forward(model, rollout: Rollout, temperature: float, *, hidden: bool = False, entropy: bool = False):
    """One forward pass over prompt + response: per-token log-probs of the response under the
    temperature-scaled policy (B, T); optionally the last hidden states at the same positions (B, T, H)
    (for a value head: the state before each response token) and the per-token entropy (B, T).

    Only the last T + 1 positions' logits are computed (``logits_to_keep``): the response sits at the
    right end of every row, since prompts are left-padded. When rows share a prompt (several samples per
    prompt: GRPO, RLOO, best-of-n) the prompt goes through the model once per group instead
    (``shared_prompt_forward``); the values at the response tokens are the same up to float rounding.
    """
    groups = rows_by_prompt(rollout) if _callable_in_parts(model) else None
    if groups is not None:
        return shared_prompt_forward(model, rollout, groups, temperature, hidden=hidden, entropy=entropy)
    T = rollout.response_ids.size(1)
    mask = rollout.attention_mask
    out = model(
        input_ids=rollout.input_ids,
        attention_mask=mask,
        position_ids=position_ids(mask),
        use_cache=False,
        logits_to_keep=T + 1,
        output_hidden_states=hidden,
    )
    logits = out.logits[:, :-1].float() / temperature  # (B, T, V): position t predicts response token t
    logprobs = selective_log_softmax(logits, rollout.response_ids)
    result = {"logprobs": logprobs}
    if hidden:
        result["hidden"] = out.hidden_states[-1][:, -T - 1 : -1]  # (B, T, H)
    if entropy:
        result["entropy"] = entropy_from_logits(logits)
    return result


def _callable_in_parts(model) -> bool:
    """Whether the causal LM's body and head may be called apart: not when a wrapper for several processes
    (DDP, DeepSpeed, FSDP) must see the whole forward, nor for models without the two parts."""
    if hasattr(model, "module") or any(c.__name__.startswith("FSDP") for c in type(model).__mro__):
        return False
    lm = base_causal_lm(model)
    return hasattr(lm, "base_model") and lm.get_output_embeddings() is not None


def rows_by_prompt(rollout: Rollout) -> list[list[int]] | None:
    """The rows of each distinct prompt, in order of first appearance; None when no two rows share one."""
    rows: dict[tuple, list[int]] = {}
    for i, (ids, mask) in enumerate(zip(rollout.query_ids.tolist(), rollout.query_mask.tolist())):
        rows.setdefault(tuple(t for t, m in zip(ids, mask) if m), []).append(i)
    return list(rows.values()) if len(rows) < rollout.query_ids.size(0) else None  # (a batch may carry no prompts)


def shared_prompt_forward(
    model, rollout: Rollout, groups: list[list[int]], temperature: float, *, hidden: bool, entropy: bool
) -> dict:
    """``response_forward`` with one row per prompt, ``[prompt | response 1 | ... | response k]``, in the
    shared-prompt layout of ``rlhfkit.data.pairs`` (each response sees the prompt and itself, its positions
    continue from the prompt's end, as in its own row): the prompt's tokens go through the model once, not
    k times (2 prompts x 4 samples of 48 tokens after 50-token prompts: 486 tokens instead of 792). Every
    response keeps all T tokens (those after its stop too, as in the plain layout; callers mask them)."""
    T = rollout.response_ids.size(1)
    query, query_mask, responses = (
        rollout.query_ids.tolist(),
        rollout.query_mask.tolist(),
        rollout.response_ids.tolist(),
    )
    packed_groups = [
        Group([t for t, m in zip(query[g[0]], query_mask[g[0]]) if m], [responses[i] for i in g]) for g in groups
    ]
    device = rollout.response_ids.device
    packed = pack_groups(packed_groups, pad_id=0).to(device)  # padding is never attended to nor read
    lm = base_causal_lm(model)
    body, head = lm.base_model, output_head(lm)
    mask = model_mask(body, packed.attention_mask, next(body.parameters()).dtype)
    keep = positions_to_keep(packed.token_row, packed.token_pred, packed.input_ids.shape)
    with last_layer_only_at(body, *keep):
        states = body(
            input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids, use_cache=False
        ).last_hidden_state  # (rows, L, H), right only at `keep`
    states = states[packed.token_row, packed.token_pred]  # (B * T, H), response by response in `order`
    logits = head(states).float() / temperature  # (B * T, V)
    order = torch.tensor([i for g in groups for i in g], device=device)  # packed response j is rollout row order[j]
    back = torch.argsort(order)

    def to_rows(x: Tensor) -> Tensor:  # (B * T, ...) in packed order -> (B, T, ...) in the rollout's order
        return x.view(len(order), T, *x.shape[1:])[back]

    result = {"logprobs": to_rows(selective_log_softmax(logits.unsqueeze(0), packed.token_target.unsqueeze(0))[0])}
    if hidden:
        result["hidden"] = to_rows(states)
    if entropy:
        result["entropy"] = to_rows(entropy_from_logits(logits))
    return result
