"""How the tiny models' tokenizer was made: byte-level BPE trained on the toy world's corpus.

The result ships as ``rlhfkit/models/tiny_tokenizer.json``, so that loading a tiny model needs nothing of
the toy world and trains nothing; this module rebuilds that file (a test checks that it still does, byte
for byte):

    python -m rlhfkit.toy.tokenizer        # rewrites rlhfkit/models/tiny_tokenizer.json
"""

from __future__ import annotations

from pathlib import Path

from rlhfkit.data.chat import DEFAULT_CHAT_TEMPLATE
from rlhfkit.models.tiny import SPECIAL_TOKENS, TOKENIZER_FILE


def train_tokenizer(vocab_size: int = 1024):
    """A ``tokenizers.Tokenizer``: deterministic, offline, ~0.2 s."""
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
    return tok


def serialized() -> str:
    return train_tokenizer().to_str(pretty=False)


if __name__ == "__main__":
    Path(TOKENIZER_FILE).write_text(serialized() + "\n", encoding="utf-8")
    print(f"wrote {TOKENIZER_FILE}")
