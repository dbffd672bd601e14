"""The embedded default models: tiny Llamas with a byte-level BPE tokenizer (trained offline on the toy world's
corpus and shipped as ``tiny_tokenizer.json``).

``tiny`` (~0.2M parameters) trains on CPU in seconds and is what tests and the demo use; ``tiny-4m``
(hidden 256, 4 layers, ~4M parameters) is the benchmark size. Both are built from a seed, so the same
name always gives the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhfkit.data.chat import DEFAULT_CHAT_TEMPLATE
from rlhfkit.models.catalog import TINY_PRESETS

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENIZER_FILE = Path(__file__).with_name("tiny_tokenizer.json")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level BPE tokenizer of the tiny models (trained once on the toy corpus: rlhfkit.toy.tokenizer)."""
    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
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
