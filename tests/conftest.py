import os

import pytest
import torch

# Tests never reach a model hub, and share one cache for models they install.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread, and on busy cores several OpenMP threads spin waiting for each
# other (which also inflates CPU-time measurements). Subprocesses started by tests inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")


torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny():
    """The embedded default model and tokenizer (built once per session; tests must not change them)."""
    from rlhfkit.models.tiny import build_tiny

    return build_tiny("tiny", seed=0)


@pytest.fixture(scope="session")
def toy_files():
    """The toy world's built-in sets as the ordinary files the stages read: {kind: path}."""
    from rlhfkit.toy.data import data_file

    return {kind: str(data_file(kind)) for kind in ("demonstration", "comparison", "prompt")}


def interrupted_at(call: int, real, calls: list, note=lambda args, kwargs: args[-1] if args else None):
    """``real`` wrapped as an interruption meets it: each call is noted in ``calls`` (``note`` of its arguments),
    and call number ``call`` raises KeyboardInterrupt instead of running; the calls after it run (the rerun)."""

    def wrapper(*args, **kwargs):
        calls.append(note(args, kwargs))
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapper
