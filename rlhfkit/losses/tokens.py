"""Log-probs and masking: per-token log-probs from logits, masked sums/means/variances, per-sequence
log-probs, and the name -> function lookup the loss tables share.

Shapes: B = batch, T = tokens of the response, V = vocabulary. Masks are 0/1 (bool or numeric) and mark
the positions that count; what sits under a 0 is ignored.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _pick(table: dict, name: str, what: str):
    """table[name], or an error that lists the names that would be right."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


def selective_log_softmax(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(tokens) under softmax(logits) without materialising the full (B, T, V) log-softmax.

    logits (B, T, V), tokens (B, T) int -> (B, T). float32/float64: logit of the token minus logsumexp,
    one batch row at a time. Half precision: logsumexp loses too much there, so log_softmax row by row
    (as TRL's `selective_log_softmax`).
    """
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # (B, T), one (T, V) at a time
        return picked - lse
    return torch.stack(
        [row.log_softmax(-1).gather(-1, tok.unsqueeze(-1)).squeeze(-1) for row, tok in zip(logits, tokens)]
    )


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = -1) -> Tensor:
    """Sum of x where mask is 1, over `dim` (all dims if None). Values under mask 0 (even NaN) are ignored."""
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over the positions where mask is 1, over `dim` (all dims if None)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries of x (scalar), with Bessel's correction n/(n-1) by default (as TRL)."""
    centred = x - masked_mean(x, mask)
    var = masked_mean(centred**2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1)
    return var


_REDUCTIONS = {
    "sum": lambda x, mask: masked_sum(x, mask, dim=-1),
    "mean": lambda x, mask: masked_mean(x, mask, dim=-1),
}


def sequence_logprobs(token_logps: Tensor, mask: Tensor, reduction: str = "sum") -> Tensor:
    """Per-sequence log-prob from per-token ones: (B, T) -> (B,). "sum" = log p(response); "mean" =
    per-token average (what TRL feeds IPO)."""
    return _pick(_REDUCTIONS, reduction, "reduction")(token_logps, mask)
