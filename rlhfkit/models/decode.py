"""Decoders for the sampler: a packed decode step for Llama-architecture models (Llama, SmolLM2, the embedded
tiny models), the fast path, and transformers' own forward with an in-place KV cache for every other model
(``make_decoder`` picks).

At 8 rows and one new token per call, a small model's decode step is not arithmetic: in transformers' eager
forward most of the time goes to dispatching ~30 modules per layer and building masks and rotary tables at
every token. ``PackedLlama`` takes the model's own weights once per rollout (LoRA deltas added in: the adapters
the policy samples with), packs q/k/v and gate/up into one product each, and runs the same arithmetic as
``LlamaForCausalLM`` with one KV-cache buffer per layer written in place. The weights keep ``nn.Linear``'s (out,
in) layout: the other single matrices and the LM head are the model's own tensors, not copies. A transposed copy
of every matrix, made at each rollout, was slower here as a whole (``python bench/ppo.py --only rollout`` times
the layouts' products; docs/performance.md has the rollouts and the whole processes). Results equal
transformers' forward up to float rounding (tests/test_rollout.py compares tokens, log-probs, hidden states and
entropies).

Models it cannot run exactly (other architectures, biases, DoRA or other LoRA variants, position-dependent
rope scaling) get ``None`` from ``PackedLlama.build`` and the sampler uses transformers' forward instead.

    decoder = PackedLlama.build(model, capacity=P + T)            # None: use the model's own forward
    hidden = decoder.forward(ids, positions, mask)                # (B, S, H), after the final norm
    logits = decoder.logits(hidden[:, -1])                        # (B, V)
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

from rlhfkit.models.load import base_causal_lm, output_head

Tensor = torch.Tensor
AUTOCAST_ON_CPU = False  # decode in the autocast dtype on any CPU, even one that emulates bf16 (bench/ppo.py)


@cache
def cpu_bf16_in_hardware() -> bool | None:
    """Whether this CPU runs bf16 matrix products in hardware-backed kernels (AVX512-BF16, AMX; oneDNN's own test,
    as PyTorch's test suite uses it); None where the build cannot tell (no oneDNN)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return None if check is None else bool(check())


def _weight(linear) -> Tensor | None:
    """The (out, in) weight a linear layer applies: a plain ``nn.Linear``'s, or a peft LoRA layer's base
    weight plus the deltas of its active adapters. None if the layer does anything else (bias, DoRA...)."""
    if type(linear) is torch.nn.Linear:
        return linear.weight if linear.bias is None else None
    base = getattr(linear, "base_layer", None)
    if type(base) is not torch.nn.Linear or base.bias is not None or not hasattr(linear, "get_delta_weight"):
        return None
    weight = base.weight
    if linear.disable_adapters or linear.merged:
        return weight
    for name in linear.active_adapters:
        if name not in linear.lora_A:
            continue
        if name in getattr(linear, "lora_variant", {}) or getattr(linear, "lora_bias", {}).get(name):
            return None
        weight = weight + linear.get_delta_weight(name)
    return weight


class PackedLlama:
    """One rollout's decoder: packed weights and an in-place KV cache (see the module docstring).
    Built per rollout, so it always holds the policy's current weights; never trained through."""

    def __init__(self, lm, layers: list[dict], capacity: int, matmul_dtype: torch.dtype | None, own_weights: bool):
        cfg = lm.config
        self.n_heads, self.n_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.layers = layers
        body = lm.model
        keep = _owned if own_weights else (lambda w: w)
        self.embed = keep(body.embed_tokens.weight)
        self.final_norm = keep(body.norm.weight)
        self.head = _packed(matmul_dtype, own_weights, lm.lm_head.weight.detach())  # (V, H)
        # cos / sin for every position the rollout can reach, from the model's own rotary module (its rope
        # type and attention scaling included): (capacity, D)
        positions = torch.arange(capacity, device=self.embed.device).unsqueeze(0)
        cos, sin = body.rotary_emb(self.embed[:1].unsqueeze(0).float(), positions)
        half = cos.size(-1) // 2
        # rotate_half(x) * sin == roll(x, half) * signed_sin, with the first half of sin negated
        self.cos, self.signed_sin = cos[0].float(), torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).float()
        self.keys: list[Tensor | None] = [None] * len(layers)  # (B, n_kv, capacity, D) each, on first write
        self.values: list[Tensor | None] = [None] * len(layers)
        self.capacity, self.length = capacity, 0
        self.device_type, self.autocast = self.embed.device.type, matmul_dtype is not None

    @classmethod
    @torch.no_grad()
    def build(cls, model, capacity: int, own_weights: bool = False) -> PackedLlama | None:
        """The decoder of ``model`` for rollouts of up to ``capacity`` tokens, or None if it cannot run it exactly.
        ``own_weights``: copy every tensor it keeps (the packed matrices are copies anyway; this adds the single
        matrices, the embedding and the norms), for weights gathered only while it is built (a sharded model)."""
        lm = base_causal_lm(model)
        cfg = lm.config
        body = getattr(lm, "model", None)
        if (
            cfg.model_type != "llama"
            or body is None
            or getattr(cfg, "attention_bias", False)
            or getattr(cfg, "mlp_bias", False)
            or cfg.hidden_act != "silu"
            or getattr(body.rotary_emb, "rope_type", "default") in ("dynamic", "longrope")
            or type(body.embed_tokens) is not torch.nn.Embedding
            or _weight(lm.lm_head) is not lm.lm_head.weight
            or capacity > cfg.max_position_embeddings
        ):
            return None
        device = body.embed_tokens.weight.device
        # Under autocast (--dtype bf16-mixed) the weights are packed in the autocast dtype once, not cast at
        # every token; except on a CPU that emulates bf16 (unless AUTOCAST_ON_CPU), where decoding keeps float32:
        # there the bf16 decode step is several times slower, on a CPU with bf16 instructions 1.4x faster
        # (`python bench/ppo.py --only rollout` times both; docs/performance.md has the figures).
        autocast = torch.is_autocast_enabled(device.type) and (
            device.type != "cpu"
            or AUTOCAST_ON_CPU
            or (torch.get_autocast_dtype("cpu") == torch.bfloat16 and cpu_bf16_in_hardware() is True)
        )
        matmul_dtype = torch.get_autocast_dtype(device.type) if autocast else None
        layers = []
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            weights = [
                _weight(m)
                for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            ]
            if any(w is None for w in weights):
                return None
            q, k, v, o, gate, up, down = (w.detach() for w in weights)
            keep = _owned if own_weights else (lambda w: w)
            layers.append(
                dict(
                    attn_norm=keep(layer.input_layernorm.weight),
                    mlp_norm=keep(layer.post_attention_layernorm.weight),
                    qkv=_packed(matmul_dtype, own_weights, q, k, v),  # ((n_heads + 2 n_kv) D, H)
                    o=_packed(matmul_dtype, own_weights, o),
                    gate_up=_packed(matmul_dtype, own_weights, gate, up),  # (2 I, H)
                    down=_packed(matmul_dtype, own_weights, down),
                )
            )
        return cls(lm, layers, capacity, matmul_dtype, own_weights)

    @torch.no_grad()
    def forward(self, ids: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """Run ``ids`` (B, S) at ``positions`` (B, S) after the tokens already cached; ``mask`` (B, cached + S)
        is 0 on padding. Returns the final-norm hidden states (B, S, H); the new keys and values are cached."""
        start, end = self.length, self.length + ids.size(1)
        attend = _attend(mask.bool(), start)  # (B, 1, S, end)
        with torch.autocast(self.device_type, enabled=self.autocast):
            hidden = self._layers(ids, positions, attend, start, end)
        self.length = end
        return hidden

    def _layers(self, ids: Tensor, positions: Tensor, attend: Tensor, start: int, end: int) -> Tensor:
        B, S = ids.shape
        nh, nkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        x = F.embedding(ids, self.embed)  # (B, S, H)
        cos, sin = self.cos[positions].unsqueeze(1), self.signed_sin[positions].unsqueeze(1)  # (B, 1, S, D)
        for i, w in enumerate(self.layers):
            h = _rms_norm(x, w["attn_norm"], self.eps)
            qk, v = F.linear(h, w["qkv"]).split([(nh + nkv) * D, nkv * D], dim=-1)
            qk = _rotate(qk.view(B, S, nh + nkv, D).transpose(1, 2), cos, sin)  # (B, nh + nkv, S, D)
            q, k = qk[:, :nh], qk[:, nh:]
            if self.keys[i] is None:
                self.keys[i] = k.new_empty(B, nkv, self.capacity, D)
                self.values[i] = v.new_empty(B, nkv, self.capacity, D)
            self.keys[i][:, :, start:end] = k
            self.values[i][:, :, start:end] = v.view(B, S, nkv, D).transpose(1, 2)
            out = F.scaled_dot_product_attention(
                q, self.keys[i][:, :, :end], self.values[i][:, :, :end], attn_mask=attend, enable_gqa=nkv != nh
            )  # (B, nh, S, D)
            x = x + F.linear(out.transpose(1, 2).reshape(B, S, nh * D), w["o"])
            h = _rms_norm(x, w["mlp_norm"], self.eps)
            gate, up = F.linear(h, w["gate_up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w["down"])
        return _rms_norm(x, self.final_norm, self.eps)

    def repeat(self, n: int) -> None:
        """Copy the cached keys and values of one row to ``n`` rows (a prefix shared by a batch)."""
        self.keys = [k.repeat(n, 1, 1, 1) if k is not None else None for k in self.keys]
        self.values = [v.repeat(n, 1, 1, 1) if v is not None else None for v in self.values]

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., H) -> (..., V) by the LM head."""
        with torch.autocast(self.device_type, enabled=self.autocast):
            return F.linear(hidden, self.head)


def _owned(weight: Tensor) -> Tensor:
    return weight.detach().clone()


def _packed(dtype: torch.dtype | None, own: bool, *weights: Tensor) -> Tensor:
    """(out_i, in) weights -> one (sum out_i, in) matrix in the layout ``nn.Linear`` keeps, in the matmul dtype.
    Several are concatenated (one copy); a single weight is used as it is, copied only to change its dtype or
    when ``own`` (weights gathered only while the decoder is built)."""
    packed = torch.cat(weights, dim=0) if len(weights) > 1 else weights[0]
    if dtype is not None and packed.dtype != dtype:
        return packed.to(dtype)
    return _owned(packed) if own and len(weights) == 1 else packed


def _attend(mask: Tensor, start: int) -> Tensor:
    """Which keys each new query sees: the earlier and its own positions that are not padding. A padding
    query sees itself, so that no softmax row is empty (its output is never read). (B, end) -> (B, 1, S, end)."""
    if mask.size(1) - start == 1:  # one new token, the usual decode step: causality holds by construction
        return mask[:, None, None, :]
    keys = torch.arange(mask.size(1), device=mask.device)
    queries = torch.arange(start, mask.size(1), device=mask.device).unsqueeze(1)  # (S, 1)
    attend = ((keys <= queries) & mask[:, None, :]) | (keys == queries)  # (B, S, end)
    return attend.unsqueeze(1)


def _rotate(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotary position embedding, transformers' convention (halves, not interleaved pairs): x cos +
    rotate_half(x) sin, with rotate_half(x) = (-x2, x1) written as roll(x, D/2) = (x2, x1) times a sin whose
    first half is negated (three kernels instead of five)."""
    return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), signed_sin)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama's RMSNorm as written out (F.rms_norm's composite kernel is slower at decode sizes)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that restart at each row's first real token (left padding), (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _in_place_cache(n_layers: int, capacity: int):
    """A transformers KV cache whose layers write each new token into buffers sized once for the whole
    rollout and hand attention a view, instead of ``DynamicCache``'s concatenation, which copies the whole
    cache at every step and layer (a quarter of a tiny model's decoding time on CPU)."""
    from transformers.cache_utils import Cache, DynamicLayer

    class InPlaceLayer(DynamicLayer):
        def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            B, H, _, D = key_states.shape
            self.key_buffer = key_states.new_empty(B, H, capacity, D)
            self.value_buffer = value_states.new_empty(B, value_states.size(1), capacity, value_states.size(3))
            self.length = 0

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.size(-2)
            self.key_buffer[:, :, self.length : end] = key_states
            self.value_buffer[:, :, self.length : end] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

    return Cache(layers=[InPlaceLayer() for _ in range(n_layers)])


class TransformersDecoder:
    """Any transformers causal LM as a decoder: its trunk with an in-place KV cache, then its LM head. The
    trunk and the head run separately: the head only at the last position, and its input is the hidden
    state a value head reads. Same interface as ``rlhfkit.models.decode.PackedLlama``."""

    def __init__(self, model, capacity: int):
        lm = base_causal_lm(model)
        self.body, self.head = lm.base_model, output_head(lm)
        self.cache = _in_place_cache(model.config.get_text_config().num_hidden_layers, capacity)

    def forward(self, ids: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """ids, positions (B, S) after the cached tokens; mask (B, cached + S): 0 on padding. -> (B, S, H)."""
        return self.body(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True
        ).last_hidden_state

    def repeat(self, n: int) -> None:
        """Copy the cached keys and values of one row to ``n`` rows (a prefix shared by a batch)."""
        for layer in self.cache.layers:
            layer.key_buffer = layer.key_buffer.repeat(n, 1, 1, 1)
            layer.value_buffer = layer.value_buffer.repeat(n, 1, 1, 1)
            layer.keys, layer.values = layer.key_buffer[:, :, : layer.length], layer.value_buffer[:, :, : layer.length]

    def logits(self, hidden: Tensor) -> Tensor:
        return self.head(hidden)


def make_decoder(model, capacity: int, packed: bool = True):
    """The packed Llama decode step where the model allows it (same results up to rounding, faster:
    ``python bench/ppo.py --only rollout``), else transformers' own forward."""
    return (PackedLlama.build(model, capacity) if packed else None) or TransformersDecoder(model, capacity)
