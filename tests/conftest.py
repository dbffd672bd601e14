import os

import pytest

# Tests never reach a model hub, and share one cache for models they install.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    """The embedded default model and tokenizer (built once per session; tests must not change them)."""
    from rlhfkit.models.tiny import build_tiny

    return build_tiny("tiny", seed=0)
