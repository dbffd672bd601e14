"""The sampler: batched sampling of responses with a KV cache, returning tokens, their log-probs and masks.

    from rlhfkit.config import SamplingPart
    from rlhfkit.samplers import make_sampler
    sampler = make_sampler(model, tokenizer, SamplingPart(max_new_tokens=48, temperature=0.7))
    rollout = sampler.generate(prompts, n=4, generator=torch.Generator().manual_seed(0))

The sampling settings are the shared config part ``rlhfkit.config.SamplingPart`` (one set of defaults for
every stage); how a rollout is run (prompt budget, whether to keep the hidden states, the packed decode
step) are keyword options of the sampler.

Prompts (strings, or message lists rendered with the chat template) are left-padded into one batch;
the response is sampled token by token with a KV cache written in place (one prompt forward, then
one forward per new token; Llama-family models through ``rlhfkit.models.decode.PackedLlama``, others
through transformers' own forward: ``make_decoder``); a row stops at EOS or when its text completes a
stop string, and everything after the stop is masked out. ``Rollout.logprobs`` are the log-probs of the
sampled tokens under the *temperature-scaled* distribution, before top-k / top-p truncation: the same quantity that
``rlhfkit.rollout_forward.response_forward`` recomputes for the loss (temperature must divide the logits there too,
Huang et al. 2024, "The N+ implementation details of RLHF with PPO").

Sampling noise: with ``rows=RowSeeds(seed, first_row)`` every response row draws its own noise, seeded by
(seed, global row index), so what a row samples does not depend on the batch or process it falls in: one
process sampling 2B rows gives the responses two processes of B rows give (multi-process runs equal one-process
runs). Without it, one stream (``generator``) drives the whole batch.

Sharded policies (FSDP2, FSDP1, DeepSpeed ZeRO-3): the sampler gathers the full weights once per rollout
(``rlhfkit.models.sharded.full_weights``), packs them into the decoder's own copies and releases them before
decoding, so that processes whose responses end at different lengths never wait on each other.

Backends: ``transformers`` (default, this file's ``TransformersSampler``) and ``vllm`` (``rlhfkit.vllm_backend``:
an engine in the same process, or a separate server; optional extra, GPU only; the trainer's weights are pushed
into the engine before every rollout). ``rlhfkit.samplers.make_sampler`` picks one; this file's types (``Rollout``,
``RowSeeds``) are what every backend returns and takes.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from rlhfkit.config import SamplingPart
from rlhfkit.data.chat import prompt_text
from rlhfkit.models.decode import PackedLlama, TransformersDecoder, make_decoder, position_ids
from rlhfkit.models.sharded import full_weights, sharding_of

Tensor = torch.Tensor


@dataclass
class Rollout:
    """One batch of sampled responses. Prompts left-padded, responses right-padded.

    query_ids, query_mask (B, P); response_ids, response_mask (B, T): response_mask is 1 on the sampled
    tokens up to and including the stop (EOS, or the token that completed a stop string); logprobs (B, T)
    of those tokens under the temperature-scaled distribution; ended (B,) True where the response stopped
    on EOS or a stop string (False: cut by max_new_tokens); texts: decoded responses, cut at the stop.
    With ``return_states``, samplers that run the trainer's own model (``TransformersSampler``)
    also fill, so that the trainer need not run the policy again: hidden (B, T, H), the last hidden state at
    the position that predicts each response token (``rollout_forward.response_forward(..., hidden=True)``'s
    quantity), and entropy (B, T) of the temperature-scaled distribution there. in_autocast: whether the log-probs were
    computed under autocast (False where the caller had none, or where the decoder kept float32 under it: the
    CPU's packed step), so that a pass whose log-probs are compared with them (PPO's reference) can run in the
    same precision.
    """

    prompts: list
    query_ids: Tensor
    query_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    ended: Tensor
    texts: list[str]
    hidden: Tensor | None = None
    entropy: Tensor | None = None
    in_autocast: bool = True

    @property
    def input_ids(self) -> Tensor:  # (B, P + T)
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:  # (B, P + T)
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    @property
    def lengths(self) -> Tensor:  # (B,) response tokens
        return self.response_mask.sum(-1)

    def response_tokens(self) -> list[list[int]]:
        """Each response's sampled token ids, the stop token included and the padding left out."""
        return [ids[keep].tolist() for ids, keep in zip(self.response_ids, self.response_mask.bool())]


def generator_state_text(generator: torch.Generator) -> str:
    """A random generator's state as text (base64), saved beside the samples it drew so a resumed run draws on."""
    return base64.b64encode(bytes(generator.get_state().tolist())).decode()


def restore_generator(generator: torch.Generator, text: str, where: str) -> None:
    """Set ``generator`` to a state ``generator_state_text`` wrote; one that is not fails naming ``where``."""
    try:
        generator.set_state(torch.tensor(list(base64.b64decode(text, validate=True)), dtype=torch.uint8))
    except (ValueError, TypeError, RuntimeError):
        raise ValueError(f"{where}: not a random generator's state as rlhfkit saves it; move the file aside") from None


@dataclass(frozen=True)
class RowSeeds:
    """Sampling noise addressed by global row: row r (prompt i's sample j is row i * n + j of the whole batch)
    draws from its own stream, seeded by (seed, r). A caller that samples rows first_row, first_row + 1, ... of a
    larger batch passes its first row's index."""

    seed: int
    first_row: int = 0

    def row_seed(self, i: int) -> int:
        """The seed of this call's row i (a 63-bit integer, also what a vLLM request takes)."""
        digest = hashlib.blake2b(f"{self.seed}:{self.first_row + i}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1

    def uniforms(self, rows: int, length: int, device=None) -> Tensor:
        """(rows, length) uniform numbers in [0, 1): the noise of each row's tokens."""
        draws = [torch.rand(length, generator=torch.Generator().manual_seed(self.row_seed(i))) for i in range(rows)]
        return torch.stack(draws).to(device)


def sample_by_inverse_cdf(probs: Tensor, uniforms: Tensor) -> Tensor:
    """One token per row from ``probs`` (B, V), the row's own uniform number (B,) picking where it falls in the
    cumulative distribution: token i with probability probs[i] / sum(probs). -> (B,)"""
    cdf = probs.cumsum(-1)  # (B, V)
    u = uniforms.unsqueeze(-1).to(cdf.dtype) * cdf[:, -1:]  # scaled to the row's total mass
    # right=True: the first index whose cdf exceeds u, never a zero-probability token (its cdf equals the one before)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.size(-1) - 1)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Top-k then nucleus (top-p, Holtzman et al. 2020) truncation: dropped entries become -inf.
    logits (B, V) -> (B, V). The most likely token is always kept."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass of the tokens before it already reaches top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def prompt_rows(tokenizer, prompts: list, max_prompt_tokens: int | None = None) -> list[list[int]]:
    """Each prompt's token ids (chat prompts with the generation prompt, BOS where the tokenizer adds one);
    prompts longer than ``max_prompt_tokens`` keep their last tokens."""
    rows = [tokenizer(prompt_text(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False):
        rows = [r if r[:1] == [bos] else [bos] + r for r in rows]
    if max_prompt_tokens:
        rows = [r[-max_prompt_tokens:] for r in rows]
    return rows


def left_pad(rows: list[list[int]], pad: int, device=None) -> tuple[Tensor, Tensor]:
    """Token rows -> left-padded (input_ids, attention_mask), (B, P)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def encode_prompts(
    tokenizer, prompts: list, device=None, max_prompt_tokens: int | None = None
) -> tuple[Tensor, Tensor]:
    """Prompts -> left-padded (input_ids, attention_mask), (B, P). Chat prompts get the generation prompt;
    prompts longer than ``max_prompt_tokens`` keep their last tokens."""
    return left_pad(prompt_rows(tokenizer, prompts, max_prompt_tokens), tokenizer.pad_token_id, device)


def shared_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens every row shares, leaving each row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == rows[0][k]:
            k += 1
        n = k
    return max(n, 0)


def eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class TransformersSampler:
    """Sampling with a transformers causal LM and a KV cache (works for plain and peft models; Llama-family
    models run ``rlhfkit.models.decode.PackedLlama``, others transformers' forward).

    With ``return_states`` the rollout carries the hidden states and entropies the model computed while
    sampling: the log-probs, values and entropy of the behaviour policy then cost no second forward (the same
    weights in the same process; equal up to float rounding between cached and full attention, ~1e-6)."""

    def __init__(
        self,
        model,
        tokenizer,
        params: SamplingPart,
        *,
        max_prompt_tokens: int | None = None,
        return_states: bool = False,
        packed_decode: bool = True,
        weights_owner=None,
        shared_prefix: bool = False,
    ):
        """``max_prompt_tokens``: longer prompts keep their last tokens; ``return_states``: also the hidden states
        and entropies (``Rollout.hidden``, ``.entropy``), PPO's behaviour pass; ``packed_decode``: Llama-family
        models through ``rlhfkit.models.decode.PackedLlama`` (False: transformers' forward); ``weights_owner``:
        the sharded module that holds ``model`` (FSDP2 keeps the embeddings and head in the root it was prepared
        as), gathered whole for a rollout; default ``model`` itself; ``shared_prefix``: the tokens all prompts of
        a batch begin with (few-shot examples) run once, their keys and values copied to every row (same results
        up to rounding; tests/test_ai_feedback.py compares)."""
        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.max_prompt_tokens, self.return_states, self.packed_decode = max_prompt_tokens, return_states, packed_decode
        self.weights_owner, self.shared_prefix = weights_owner, shared_prefix
        self.eos = eos_ids(model, tokenizer)

    def sync_weights(self, model) -> None:
        """The sampler uses the trainer's model itself: nothing to copy."""
        self.model = model

    @torch.no_grad()
    def generate(
        self, prompts: list, n: int = 1, generator: torch.Generator | None = None, rows: RowSeeds | None = None
    ) -> Rollout:
        """``n`` samples of each prompt, consecutive (prompt 0 x n, prompt 1 x n, ...); the noise from ``rows``
        (each row its own) or else from ``generator`` (one stream for the batch)."""
        with ExitStack() as weights:
            return self._generate(prompts, n, generator, rows, weights)

    def _decoder(self, model, capacity: int, weights: ExitStack):
        """The decoder for one rollout. A sharded model's weights are gathered to build it: into the packed
        decoder's own copies (released at once), or, for the model's own forward, kept whole until the rollout
        ends (``weights`` closes them)."""
        owner = self.weights_owner if self.weights_owner is not None else model
        if sharding_of(owner) is None:
            return make_decoder(model, capacity, self.packed_decode)
        if self.packed_decode:
            with full_weights(owner):
                decoder = PackedLlama.build(model, capacity, own_weights=True)
            if decoder is not None:
                return decoder
        weights.enter_context(full_weights(owner, keep_through_forward=True))
        return TransformersDecoder(model, capacity)

    def _generate(self, prompts, n, generator, rows, weights: ExitStack) -> Rollout:
        p, model, tok = self.params, self.model, self.tokenizer
        prompts = [q for q in prompts for _ in range(n)]
        device = next(model.parameters()).device
        query_ids, query_mask = encode_prompts(tok, prompts, device, self.max_prompt_tokens)
        B, P = query_ids.shape
        was_training = model.training
        model.eval()
        decoder = self._decoder(model, P + p.max_new_tokens, weights)
        noise = rows.uniforms(B, p.max_new_tokens, device) if rows is not None else None  # (B, T)
        steps = list(
            sample_steps(
                model, tok, p, query_ids, query_mask, eos=self.eos, generator=generator, noise=noise,
                decoder=decoder, return_states=self.return_states, shared_prefix=self.shared_prefix,
            )
        )  # fmt: skip
        if was_training:
            model.train()
        response_ids = torch.stack([s.tokens for s in steps], 1)  # (B, T)
        logprobs = torch.stack([s.logprobs for s in steps], 1)  # (B, T)
        ended, stop_at = steps[-1].ended, steps[-1].stop_at
        # 1 up to and including the stop token: the first EOS, or the token that completed a stop string
        eos = torch.tensor(self.eos, device=device)
        is_eos = torch.isin(response_ids, eos)
        T = response_ids.size(1)
        steps_ = torch.arange(T, device=device).expand(B, T)
        first_eos = torch.where(is_eos, steps_, torch.full_like(steps_, T)).amin(-1)  # (B,)
        last = torch.tensor([s if s is not None else T - 1 for s in stop_at], device=device)
        last = torch.minimum(first_eos, last)
        response_mask = (steps_ <= last.unsqueeze(1)).long()
        response_ids = response_ids.masked_fill(response_mask == 0, tok.pad_token_id)
        logprobs = logprobs.masked_fill(response_mask == 0, 0.0)
        texts = [_cut_at_stop(s, p.stop)[0] for s in tok.batch_decode(response_ids, skip_special_tokens=True)]
        # a decoder without an `autocast` flag (transformers' forward) runs under the caller's autocast
        states = dict(in_autocast=torch.is_autocast_enabled(device.type) and getattr(decoder, "autocast", True))
        if self.return_states:
            states.update(
                hidden=torch.stack([s.hidden for s in steps], 1), entropy=torch.stack([s.entropy for s in steps], 1)
            )
        return Rollout(prompts, query_ids, query_mask, response_ids, response_mask, logprobs, ended, texts, **states)


@dataclass
class Step:
    """One new token for every row of a batch. tokens, logprobs (B,): the token sampled at this step (padding on
    rows that had stopped before it) and its log-prob under the temperature-scaled distribution; done (B,): rows
    stopped, this token included; ended (B,): rows stopped by EOS or a stop string; stop_at: per row, the step at
    which a stop string completed (None if none did). hidden (B, H), entropy (B,): with ``return_states``."""

    index: int
    tokens: Tensor
    logprobs: Tensor
    done: Tensor
    ended: Tensor
    stop_at: list
    hidden: Tensor | None = None
    entropy: Tensor | None = None


@torch.no_grad()
def sample_steps(
    model,
    tokenizer,
    params: SamplingPart,
    query_ids: Tensor,
    query_mask: Tensor,
    *,
    eos: list[int],
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    decoder=None,
    packed_decode: bool = True,
    return_states: bool = False,
    shared_prefix: bool = False,
) -> Iterator[Step]:
    """The sampler's loop, one ``Step`` per new token: ``TransformersSampler.generate`` collects them into a
    ``Rollout``; a server streams them as they come. Prompts are left-padded (``encode_prompts``); the caller puts
    the model in eval mode. Stops after the step at which every row has stopped, or at ``max_new_tokens``.
    The noise: ``noise`` (B, max_new_tokens), each row's own uniform numbers (``RowSeeds.uniforms``), or else one
    stream, ``generator``. ``decoder``: one built for this batch (``TransformersSampler._decoder``: a sharded
    model's gathered weights); default ``make_decoder(model, ..., packed_decode)``. ``shared_prefix``: as in
    ``TransformersSampler``."""
    p, tok = params, tokenizer
    B, P = query_ids.shape
    device = query_ids.device
    eos_t = torch.tensor(eos, device=device)
    if decoder is None:
        decoder = make_decoder(model, P + p.max_new_tokens, packed_decode)
    rows = None  # each prompt's own tokens, without the padding: only the shared prefix needs them
    if shared_prefix and B > 1:
        rows = [[t for t, m in zip(ids, keep) if m] for ids, keep in zip(query_ids.tolist(), query_mask.tolist())]
    shared = shared_prefix_length(rows) if rows else 0
    if shared:  # the common prefix once, then each row's own tokens after it (left-padded there)
        head = torch.tensor([rows[0][:shared]], device=device)
        decoder.forward(head, torch.arange(shared, device=device).unsqueeze(0), torch.ones_like(head))
        decoder.repeat(B)
        tail_ids, tail_mask = left_pad([r[shared:] for r in rows], tok.pad_token_id, device)  # (B, P - shared)
        prompt_mask = torch.cat([tail_mask.new_ones(B, shared), tail_mask], dim=1)  # (B, P)
        pos = shared + position_ids(tail_mask)  # the positions the full left-padded rows would have
        hidden = decoder.forward(tail_ids, pos, prompt_mask)[:, -1]  # (B, H)
    else:
        prompt_mask = query_mask
        pos = position_ids(query_mask)
        hidden = decoder.forward(query_ids, pos, query_mask)[:, -1]  # (B, H)
    mask = torch.cat(
        [prompt_mask, prompt_mask.new_zeros(B, p.max_new_tokens)], dim=1
    )  # a 1 is written in per new token
    next_pos = pos[:, -1:] + 1  # (B, 1)
    tokens = []
    done = torch.zeros(B, dtype=torch.bool, device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    stop_at = [None] * B
    filtered = bool(p.top_k) or p.top_p < 1.0
    for t in range(p.max_new_tokens):
        scaled = decoder.logits(hidden).float()  # (B, V)
        if p.temperature != 1.0:
            scaled = scaled / p.temperature
        logp = scaled.log_softmax(-1)  # (B, V)
        probs = logp.exp()
        states = dict(hidden=hidden, entropy=-(probs * logp).sum(-1)) if return_states else {}
        if filtered:
            probs = filter_logits(scaled, p.top_k, p.top_p).softmax(-1)
        if noise is not None:
            token = sample_by_inverse_cdf(probs, noise[:, t])  # (B,)
        else:
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
        token_logp = logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)
        token = torch.where(done, torch.full_like(token, tok.pad_token_id), token)
        tokens.append(token)
        hit_eos = torch.isin(token, eos_t) & ~done
        ended |= hit_eos
        done |= hit_eos
        if p.stop:
            so_far = torch.stack(tokens, 1)
            for i in (~done).nonzero().flatten().tolist():
                if _cut_at_stop(tok.decode(so_far[i], skip_special_tokens=True), p.stop)[1]:
                    done[i] = ended[i] = True
                    stop_at[i] = t
        yield Step(t, token, token_logp, done.clone(), ended.clone(), list(stop_at), **states)
        if bool(done.all()) or t == p.max_new_tokens - 1:
            break
        mask[:, P + t] = 1
        hidden = decoder.forward(token.unsqueeze(1), next_pos, mask[:, : P + t + 1])[:, -1]
        next_pos = next_pos + 1
