"""The embedded default models: tiny Llamas with a byte-level BPE tokenizer trained offline on the toy world.

``tiny`` (~0.2M parameters) trains on CPU in seconds and is what tests and the demo use; ``tiny-4m``
(hidden 256, 4 layers, ~4M parameters) is the benchmark size. Both are built from a seed, so the same
name always gives the same weights.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhfkit.data.chat import DEFAULT_CHAT_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TINY_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
    "tiny-4m": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
}


def build_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the toy corpus: deterministic, offline, ~0.2 s."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from rlhfkit.toy.world import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus() + [DEFAULT_CHAT_TEMPLATE], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        chat_template=DEFAULT_CHAT_TEMPLATE,
        model_max_length=512,
    )


def build_tiny(preset: str = "tiny", seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    if preset not in TINY_PRESETS:
        raise ValueError(f"unknown tiny preset '{preset}'; known: {', '.join(TINY_PRESETS)}")
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        num_key_value_heads=TINY_PRESETS[preset]["num_attention_heads"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_PRESETS[preset],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
