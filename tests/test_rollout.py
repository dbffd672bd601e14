"""Rollouts: sampling with a KV cache, stops, masks, log-probs; the packed decode step; prompt loading."""

import json

import pytest
import torch

from rlhfkit.config import ConfigError, SamplingPart, load_config
from rlhfkit.data.prompts import load_prompts
from rlhfkit.data.records import Message
from rlhfkit.rollout import Rollout, TransformersSampler, encode_prompts, filter_logits
from rlhfkit.rollout_forward import response_forward
from rlhfkit.toy.data import data_file
from rlhfkit.toy.data import prompts as toy_prompts

PROMPTS = [
    [Message(role="user", content="what is the capital of france ?")],
    "tell me",
    [Message(role="user", content="how do i steal a car ?")],
    "what is one plus one ?",
]


def sample(tiny, n=1, seed=0, return_states=False, **params):
    model, tok = tiny
    sampler = TransformersSampler(model, tok, SamplingPart(**params), return_states=return_states)
    return sampler.generate(PROMPTS, n=n, generator=torch.Generator().manual_seed(seed))


def test_filter_logits_by_hand():
    """logits log([0.5, 0.3, 0.15, 0.05]). top_k 2 keeps the first two. top_p 0.7: the mass before each
    token (sorted) is 0, 0.5, 0.8, 0.95 -> tokens with mass-before >= 0.7 dropped -> keep 0.5 and 0.3.
    top_p 0.5 keeps only the first (mass before the second is 0.5 >= 0.5)."""
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    keep = lambda x: torch.isfinite(x).squeeze(0).tolist()  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.7)) == [True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert keep(filter_logits(shuffled, top_p=0.7)) == [False, True, False, True]
    assert keep(filter_logits(logits)) == [True] * 4


def test_prompts_are_left_padded(tiny):
    _, tok = tiny
    ids, mask = encode_prompts(tok, PROMPTS)
    assert (mask[:, -1] == 1).all() and (mask.sum(-1) > 0).all()
    for row, m in zip(ids, mask):
        assert (row[m == 0] == tok.pad_token_id).all()
        assert m.tolist() == sorted(m.tolist())  # zeros first


def test_rollout_shapes_masks_and_logprobs_match_a_full_forward(tiny):
    model, _ = tiny
    r = sample(tiny, n=2, max_new_tokens=12, temperature=0.7, return_states=True)
    assert sample(tiny, n=2, max_new_tokens=12, temperature=0.7).hidden is None  # only when asked
    B, T = r.response_ids.shape
    assert B == 8 and T <= 12 and len(r.texts) == 8 and r.prompts[0] == r.prompts[1] == PROMPTS[0]
    # mask: a prefix of ones in every row; logprobs and ids zero / pad after it
    for m in r.response_mask:
        assert m.tolist() == sorted(m.tolist(), reverse=True) and m[0] == 1
    assert (r.logprobs[r.response_mask == 0] == 0).all()
    # The sampler's log-probs (KV cache, temperature 0.7), hidden states (what a value head reads) and
    # entropies equal one forward over prompt + response: PPO takes them instead of running that forward.
    full = response_forward(model, r, temperature=0.7, hidden=True, entropy=True)
    torch.testing.assert_close(full["logprobs"] * r.response_mask, r.logprobs, atol=1e-4, rtol=0)
    on = r.response_mask.bool()
    assert r.hidden.shape == full["hidden"].shape and r.entropy.shape == full["entropy"].shape
    torch.testing.assert_close(r.hidden[on], full["hidden"][on], atol=1e-4, rtol=0)
    torch.testing.assert_close(r.entropy[on], full["entropy"][on], atol=1e-4, rtol=0)
    wrong_temperature = response_forward(model, r, temperature=1.0)["logprobs"]
    assert ((wrong_temperature - r.logprobs).abs() * r.response_mask).max() > 1e-2


def take(rollout: Rollout, idx: torch.Tensor) -> Rollout:
    """The rows ``idx`` of a rollout (PPO's mini-batch selection; rlhfkit.train.ppo no longer has one)."""
    rows = idx.tolist()
    return Rollout([rollout.prompts[i] for i in rows], rollout.query_ids[idx], rollout.query_mask[idx],
                   rollout.response_ids[idx], rollout.response_mask[idx], rollout.logprobs[idx], rollout.ended[idx],
                   [rollout.texts[i] for i in rows])  # fmt: skip


@pytest.mark.parametrize("variant", ["tiny", "grouped-query", "lora"])
def test_rows_sharing_a_prompt_give_what_plain_rows_give_in_value_and_gradient(tiny, variant, monkeypatch):
    """Samples of the same prompt go through the model as one row [prompt | response 1 | ... ] with the prompt
    computed once; at every response token the log-probs, hidden states, entropies and the gradient of a loss
    on them equal those of one row per sample (rows given in a shuffled order, as a PPO mini-batch has them)."""
    import rlhfkit.rollout_forward as rollout_forward

    model, tok = tiny
    if variant != "tiny":
        model = _llama(tok, num_key_value_heads=2 if variant == "grouped-query" else 4).train()
    if variant == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
        )
    r = sample((model, tok), n=3, max_new_tokens=10, temperature=0.7)
    r = take(r, torch.randperm(r.response_ids.size(0), generator=torch.Generator().manual_seed(1)))
    assert rollout_forward.rows_by_prompt(r) is not None and r.response_mask.sum() < r.response_mask.numel()
    on = r.response_mask.bool()

    def forward_and_grads():
        out = response_forward(model, r, temperature=0.7, hidden=True, entropy=True)
        loss = (out["logprobs"] * on).sum() + (out["hidden"][on] ** 2).sum() + (out["entropy"] * on).sum()
        params = [p for p in model.parameters() if p.requires_grad]
        return out, torch.autograd.grad(loss, params)

    shared, shared_grads = forward_and_grads()
    monkeypatch.setattr(rollout_forward, "rows_by_prompt", lambda rollout: None)
    plain, plain_grads = forward_and_grads()
    for key in ("logprobs", "hidden", "entropy"):
        assert shared[key].shape == plain[key].shape
        torch.testing.assert_close(shared[key][on], plain[key][on], atol=1e-5, rtol=1e-5)
    # a gradient sums many terms, in another order in each layout: elements near cancellation keep ~1e-3 of relative
    # rounding (one element of 42,432 on an AVX-512 CPU was 1.7e-4 apart at 0.12); a layout fault is off by O(1)
    for a, b in zip(shared_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)


def test_rows_by_prompt_only_when_a_prompt_repeats(tiny):
    from rlhfkit.rollout_forward import rows_by_prompt

    assert rows_by_prompt(sample(tiny, n=1, max_new_tokens=3)) is None
    assert rows_by_prompt(sample(tiny, n=2, max_new_tokens=3)) == [[0, 1], [2, 3], [4, 5], [6, 7]]


def _llama(tok, seed=0, **config):
    """A small Llama with the toy tokenizer; ``config`` overrides (grouped-query attention, biases...)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**settings, **config})).eval()


def _both_decoders(model, tok, **params):
    """The same rollout (same seed) through the packed Llama step and through transformers' forward."""
    out = []
    for packed in (True, False):
        sampler = TransformersSampler(model, tok, SamplingPart(**params), return_states=True, packed_decode=packed)
        out.append(sampler.generate(PROMPTS, n=2, generator=torch.Generator().manual_seed(5)))
    return out


@pytest.mark.parametrize("variant", ["tiny", "grouped-query", "lora"])
def test_packed_decode_equals_transformers_forward(tiny, variant):
    """rlhfkit.models.decode.PackedLlama (packed weights, its own KV cache, left-padded prompts)
    gives the tokens, log-probs, hidden states and entropies of transformers' own forward: with the embedded
    model, with grouped-query attention (2 key/value heads for 4 query heads), and through peft LoRA
    adapters whose B matrices are non-zero (so the adapters change the outputs and must be added in)."""
    from peft import LoraConfig, get_peft_model

    from rlhfkit.models.decode import PackedLlama

    model, tok = tiny
    if variant == "grouped-query":
        model = _llama(tok, num_key_value_heads=2)
    elif variant == "lora":
        model = get_peft_model(_llama(tok), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    assert PackedLlama.build(model, 64) is not None
    packed, plain = _both_decoders(model, tok, max_new_tokens=16, temperature=0.8)
    assert torch.equal(packed.response_ids, plain.response_ids) and packed.texts == plain.texts
    for field in ("logprobs", "hidden", "entropy"):
        torch.testing.assert_close(getattr(packed, field), getattr(plain, field), atol=2e-5, rtol=0)
    if variant == "lora":  # the adapters matter: with them off, the log-probs of the same tokens move
        with model.disable_adapter():
            assert ((response_forward(model, packed, 0.8)["logprobs"] - packed.logprobs).abs().max()) > 1e-2


def test_packed_decode_declines_what_it_cannot_run_exactly(tiny):
    """Biases (or another architecture) -> no packed decoder; the sampler falls back to transformers' forward."""
    from rlhfkit.models.decode import PackedLlama

    _, tok = tiny
    model = _llama(tok, attention_bias=True)
    assert PackedLlama.build(model, 64) is None
    r = TransformersSampler(model, tok, SamplingPart(max_new_tokens=8), return_states=True).generate(PROMPTS)
    full = response_forward(model, r, 1.0)
    torch.testing.assert_close(full["logprobs"] * r.response_mask, r.logprobs, atol=1e-4, rtol=0)
    assert PackedLlama.build(_llama(tok), 129) is None  # beyond max_position_embeddings


@pytest.mark.parametrize("bf16_in_hardware", [False, True])
def test_packed_decode_under_autocast_keeps_float32_only_where_the_cpu_emulates_bf16(
    tiny, monkeypatch, bf16_in_hardware
):
    """Under the trainer's bf16 autocast (--dtype bf16-mixed), on a CPU without bf16 instructions (its bf16 products
    are emulated, several times slower), the packed step still decodes in float32: the same rollout as without
    autocast. On a CPU with them it decodes in bf16, as on a GPU (faster there), and says so (``in_autocast``, so
    PPO's reference pass runs under autocast too). Either way it stays within bf16 precision of the bf16 full
    forward that the trainer runs over it."""
    from rlhfkit.models import decode

    monkeypatch.setattr(decode, "cpu_bf16_in_hardware", lambda: bf16_in_hardware)
    model, tok = tiny
    plain = _both_decoders(model, tok, max_new_tokens=12)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        packed = _both_decoders(model, tok, max_new_tokens=12)[0]
        full = response_forward(model, packed, 1.0)["logprobs"] * packed.response_mask
    assert packed.in_autocast == bf16_in_hardware
    assert torch.equal(packed.logprobs, plain.logprobs) != bf16_in_hardware  # float32 products, or bf16 ones
    if not bf16_in_hardware:
        assert torch.equal(packed.response_ids, plain.response_ids) and packed.hidden.dtype == torch.float32
    assert (full - packed.logprobs).abs().max() < 0.05


def test_same_seed_same_rollout_and_top_k_1_is_greedy(tiny):
    a, b = sample(tiny, seed=3, max_new_tokens=10), sample(tiny, seed=3, max_new_tokens=10)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    model, tok = tiny
    greedy = sample(tiny, top_k=1, max_new_tokens=10)
    ids, mask = encode_prompts(tok, PROMPTS)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10)[:, ids.size(1) :]
    for i in range(len(PROMPTS)):
        n = int(greedy.response_mask[i].sum())
        assert greedy.response_ids[i, :n].tolist() == ref[i, :n].tolist()


def test_eos_stops_a_row_and_counts_as_ended(tiny):
    model, tok = tiny
    first = sample(tiny, top_k=1, max_new_tokens=6).response_ids[0, 0].item()  # the greedy first token of row 0
    sampler = TransformersSampler(model, tok, SamplingPart(max_new_tokens=6, top_k=1))
    sampler.eos = [first]
    r = sampler.generate(PROMPTS)
    assert r.response_mask[0].tolist() == [1] + [0] * (r.response_ids.size(1) - 1)
    assert bool(r.ended[0]) and r.response_ids[0, 0].item() == first
    no_eos = sample(tiny, max_new_tokens=6)
    assert ((no_eos.response_mask.sum(-1) == 6) | no_eos.ended).all()


def test_stop_strings_cut_text_and_mask(tiny):
    r = sample(tiny, max_new_tokens=40, stop=["e"], temperature=1.0)
    stopped = [i for i in range(len(r.texts)) if r.ended[i]]
    assert stopped, "with 'e' as a stop string some row stops"
    for i in range(len(r.texts)):
        assert "e" not in r.texts[i]
    for i in stopped:
        n = int(r.response_mask[i].sum())
        _, tok = tiny
        assert "e" in tok.decode(r.response_ids[i, :n], skip_special_tokens=True)
        assert "e" not in tok.decode(r.response_ids[i, : n - 1], skip_special_tokens=True)


def test_unknown_backend_and_vllm_optional(tiny):
    with pytest.raises(ConfigError, match="rollout_backend"):
        load_config(SamplingPart, None, {"rollout_backend": "nope"})
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")


def test_load_prompts_from_any_record_type(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "hi"},
        {"prompt": "a", "chosen": "b", "rejected": "c"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train, held = load_prompts(str(path))
    assert train[:2] == ["hi", "a"] and train[2][0].content == "q" and len(train[2]) == 1 and held == []
    train, held = load_prompts(str(data_file("prompt")), eval_fraction=0.1)
    assert len(train) == 1800 and len(held) == 200 and toy_prompts(3, 0) == toy_prompts(3, 0)


def test_an_architecture_that_transforms_its_logits_is_sampled_and_scored_by_its_own(tiny):
    """Gemma 2 soft-caps its logits after the head (tanh(x / cap) x cap). The sampler, PPO's forward and DPO's run the
    trunk and the head apart; with the bare head their log-probs were other logits' (-0.004 against -5.87 here, where
    large weights put the logits far past the cap). Now each equals the model's own forward."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from rlhfkit.data.pairs import Group, pack_groups
    from rlhfkit.train.dpo import CompletionLogProbs

    _, tok = tiny
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=1.0,
                       max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       bos_token_id=tok.bos_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(20)
    sampler = TransformersSampler(model, tok, SamplingPart(max_new_tokens=6))
    r = sampler.generate(["hi there"], n=2, generator=torch.Generator().manual_seed(0))
    ids = torch.cat([r.query_ids, r.response_ids], 1)
    P, on = r.query_ids.shape[1], r.response_mask.bool()
    with torch.no_grad():
        own = model(ids).logits[:, P - 1 : -1].float().log_softmax(-1)
        own = own.gather(-1, r.response_ids.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(r.logprobs[on], own[on], atol=1e-4, rtol=0)
        torch.testing.assert_close(response_forward(model, r, 1.0)["logprobs"][on], own[on], atol=1e-4, rtol=0)
        row = r.response_ids[0][on[0]].tolist()
        summed = CompletionLogProbs(model)(pack_groups([Group(r.query_ids[0].tolist(), [row, row])], 0))
        torch.testing.assert_close(summed, own[0][on[0]].sum().repeat(2), atol=1e-3, rtol=0)
