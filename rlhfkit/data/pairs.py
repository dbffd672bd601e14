"""Tokenisation and collation of comparisons and rankings, with the prompt computed once per group.

A group is one prompt and K >= 2 completions (a comparison is K = 2: chosen, rejected). The shared-prompt
layout puts a whole group in one row, ``[prompt | completion 1 | completion 2 | ...]``, with a custom
attention mask: each completion sees the prompt and itself (causally) but never the other completions,
and its position ids continue from the prompt's end. A causal model then computes exactly what it would
on ``prompt + completion`` rows, while the prompt's tokens go through the model once, not K times.

    row:       p0 p1 p2 | c0 c1 | r0 r1 r2
    positions:  0  1  2 |  3  4 |  3  4  5
    r1 sees:   p0 p1 p2 |   -   | r0 r1

The token that predicts a completion's first token is the prompt's last token (for every completion);
later tokens are predicted by their left neighbour inside the same completion. ``PackedGroups`` lists,
for every completion token, the row, the predicting position and the target, so log-probs are taken
for those positions only (no logits for prompt or padding positions), and the last token of every
completion (where a reward model reads its score). ``last_layer_only_at`` then runs the model's last layer
(its MLP and attention output projection) only at the positions that are read.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from rlhfkit.data.chat import tokenize_prompt_completions


@dataclass
class Group:
    """One prompt and its completions, as token ids, with what its record says about them: ``tie``, ``margin``
    and ``chosen_prob`` for comparisons, ``ranking`` for rankings, ``rating`` (on 1..``scale``) or ``label`` for a
    rating's single completion, and the annotator's index (-1: unknown or none) for annotator-aware models."""

    prompt_ids: list[int]
    completion_ids: list[list[int]]
    tie: bool = False
    margin: float | None = None
    ranking: list[int] | None = None  # indices into completion_ids, best first (rankings only)
    chosen_prob: float | None = None  # soft label: P(completion 0 is the better one)
    rating: float | None = None
    scale: int | None = None
    label: bool | None = None  # thumbs up (KTO's "desirable")
    annotator: int = -1

    def __len__(self) -> int:
        return len(self.prompt_ids) + sum(len(c) for c in self.completion_ids)


def truncate(
    prompt: list[int], completions: list[list[int]], max_length: int, own: int | None = None
) -> tuple[list[int], list[list[int]]]:
    """Keep prompt + each completion within ``max_length`` tokens: completions are cut from the end (as
    TRL's ``keep_start``); a prompt that leaves less than half the budget keeps its last half-budget tokens.
    Only the first ``own`` completions (all by default) decide whether the prompt is cut: KTO's mismatched
    completion, another example's, is cut to the room its own completion leaves, never the prompt for it."""
    longest = max(len(c) for c in completions[:own])
    if len(prompt) + longest > max_length and len(prompt) > max_length // 2:
        prompt = prompt[len(prompt) - max_length // 2 :]  # not prompt[-(max_length // 2):]: -0 keeps all of it
    room = max_length - len(prompt)
    return prompt, [c[:room] for c in completions]


def tokenize_group(tokenizer, prompt, completions, max_length: int, own: int | None = None, **extra) -> Group:
    """Token ids of a prompt and its completions, each boundary exact (see ``tokenize_prompt_completion``);
    ``own`` as ``truncate`` takes it."""
    prompt_ids, out = tokenize_prompt_completions(tokenizer, prompt, list(completions))
    prompt_ids, out = truncate(prompt_ids, out, max_length, own)
    return Group(prompt_ids, out, **extra)


def tokenize_comparison(tokenizer, record, max_length: int) -> Group:
    return tokenize_group(
        tokenizer,
        record.prompt,
        [record.chosen, record.rejected],
        max_length,
        tie=record.tie,
        margin=record.margin,
        chosen_prob=record.chosen_prob,
    )


def tokenize_ranking(tokenizer, record, max_length: int) -> Group:
    return tokenize_group(tokenizer, record.prompt, record.completions, max_length, ranking=list(record.ranking))


@dataclass
class PackedGroups:
    """A batch of groups in the shared-prompt layout. N = completions in the batch (group by group),
    M = completion tokens in the batch."""

    input_ids: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, 1, L, L) bool, True = may attend
    last_row: torch.Tensor  # (N,) row of each completion
    last_pos: torch.Tensor  # (N,) position of each completion's last token
    token_row: torch.Tensor  # (M,) row of each completion token
    token_pred: torch.Tensor  # (M,) position whose output predicts it
    token_target: torch.Tensor  # (M,) the token id
    token_seq: torch.Tensor  # (M,) which completion (0..N-1) it belongs to
    n_completions: int
    n_tokens: int  # real tokens in the batch (no padding)

    def to(self, device) -> PackedGroups:
        return PackedGroups(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()})


def pack_groups(groups: list[Group], pad_id: int) -> PackedGroups:
    """One row per group: ``[prompt | completion 1 | ... | completion K]``, right-padded to the longest row.

    The token lists are built in Python (a few hundred ints per row); the (B, L, L) mask is built with three
    broadcast comparisons from each position's segment (0 = prompt, k = completion k, -1 = padding), not
    block by block (hundreds of tiny ops per batch, slow when threads are contended)."""
    width = max(len(g) for g in groups)
    ids, seg, pos = [], [], []
    last_row, last_pos, t_row, t_pred, t_target, t_seq = [], [], [], [], [], []
    seq = 0
    for b, g in enumerate(groups):
        P = len(g.prompt_ids)
        row_ids, row_seg, row_pos = list(g.prompt_ids), [0] * P, list(range(P))
        start = P
        for k, comp in enumerate(g.completion_ids, start=1):
            C = len(comp)
            row_ids += comp
            row_seg += [k] * C
            row_pos += range(P, P + C)
            last_row.append(b)
            last_pos.append(start + C - 1 if C else P - 1)
            t_row += [b] * C
            t_pred += ([P - 1] + list(range(start, start + C - 1)))[:C]
            t_target += comp
            t_seq += [seq] * C
            seq += 1
            start += C
        pad = width - len(row_ids)
        ids.append(row_ids + [pad_id] * pad)
        seg.append(row_seg + [-1] * pad)
        pos.append(row_pos + [0] * pad)
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    seg_t = as_long(seg)  # (B, L)
    seg_q, seg_k = seg_t.unsqueeze(2), seg_t.unsqueeze(1)  # (B, L, 1) queries, (B, 1, L) keys
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # key position <= query position
    # A real token sees the prompt and its own completion, causally; padding sees itself only (an all-masked
    # row would give NaN in some kernels).
    mask = causal & (seg_q >= 0) & ((seg_k == 0) | (seg_k == seg_q))  # (B, L, L)
    mask |= torch.eye(width, dtype=torch.bool) & (seg_q < 0)
    return PackedGroups(
        as_long(ids),
        as_long(pos),
        mask.unsqueeze(1),
        as_long(last_row),
        as_long(last_pos),
        as_long(t_row),
        as_long(t_pred),
        as_long(t_target),
        as_long(t_seq),
        seq,
        sum(len(g) for g in groups),
    )


def model_mask(model, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The custom (B, 1, L, L) mask in the form the model's attention takes: booleans for SDPA/flex, an
    additive float mask (0 / most negative) for eager attention."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    if impl == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def positions_to_keep(
    rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct (row, position) pairs among ``rows, cols`` (a position can predict two completions'
    first tokens), in row-major order."""
    need = torch.zeros(shape, dtype=torch.bool, device=rows.device)
    need[rows, cols] = True
    return need.nonzero(as_tuple=True)


@contextmanager
def last_layer_only_at(body: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor):
    """Inside this block, the last decoder layer of ``body`` runs its attention output projection and its MLP
    only at the positions (rows, cols) (distinct, see ``positions_to_keep``); elsewhere their contribution
    is zero, so only the final hidden states at (rows, cols) are right, and callers must read only those.

    Exact: both are position-wise and the other positions of the last layer feed nothing but the final
    norm and head, which read (rows, cols) only. The saving is large when few positions are read: a causal
    reward model reads one per completion (the last layer's MLP is ~19% of the tiny-4m body's work), DPO
    reads the completion positions (not the prompt's). Models whose last layer is not ``layers[-1]`` with
    ``self_attn.o_proj`` / a dense ``*MLP`` (mixture-of-experts blocks, encoders) run unchanged."""
    layers = getattr(body, "layers", None)
    layer = layers[-1] if isinstance(layers, torch.nn.ModuleList) and len(layers) else None
    targets = []
    if layer is not None:
        o_proj = getattr(getattr(layer, "self_attn", None), "o_proj", None)
        mlp = getattr(layer, "mlp", None)
        targets = [m for m in (o_proj, mlp) if m is not None]
        if mlp is not None and not type(mlp).__name__.endswith("MLP"):  # MoE blocks may route across tokens
            targets = []
    shapes: dict[int, torch.Size] = {}

    def select(module, args):  # (B, L, D) -> (M, D)
        shapes[id(module)] = args[0].shape
        return (args[0][rows, cols],) + tuple(args[1:])

    def scatter(module, args, out):  # (M, D') -> (B, L, D'), zeros elsewhere
        B, L = shapes[id(module)][:2]
        return torch.index_put(out.new_zeros(B, L, out.shape[-1]), (rows, cols), out)

    handles = [h for m in targets for h in (m.register_forward_pre_hook(select), m.register_forward_hook(scatter))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def pad_right(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def unpack_groups(groups: list[Group], pad_id: int) -> PackedGroups:
    """The plain layout (as TRL's collator): one right-padded row ``prompt + completion`` per completion,
    with a 2-D padding mask. Same fields as ``pack_groups``, so the same code reads either."""
    rows = [g.prompt_ids + c for g in groups for c in g.completion_ids]
    input_ids = pad_right(rows, pad_id)
    width = input_ids.size(1)
    mask = pad_right([[1] * len(r) for r in rows], 0)
    last_pos, t_row, t_pred, t_target, t_seq = [], [], [], [], []
    n = 0
    for g in groups:
        P = len(g.prompt_ids)
        for comp in g.completion_ids:
            last_pos.append(P + len(comp) - 1)
            t_row += [n] * len(comp)
            t_pred += list(range(P - 1, P + len(comp) - 1))
            t_target += comp
            t_seq += [n] * len(comp)
            n += 1
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return PackedGroups(
        input_ids,
        torch.arange(width).expand(n, width).clone(),
        mask,
        torch.arange(n),
        as_long(last_pos),
        as_long(t_row),
        as_long(t_pred),
        as_long(t_target),
        as_long(t_seq),
        n,
        int(mask.sum()),
    )


def collate_groups(groups: list[Group], pad_id: int, shared_prompt: bool) -> PackedGroups:
    return pack_groups(groups, pad_id) if shared_prompt else unpack_groups(groups, pad_id)
