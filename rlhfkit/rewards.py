"""Reward sources for online training, each a ``RewardFn(prompts, responses) -> Tensor (B,)`` built
from one spec string:

    rm:runs/rm-1                  a reward-model run folder (rlhfkit.models.reward), normalised scores
    mypkg.rewards:count_paris     a Python function (prompts, responses) -> list of floats
    http://127.0.0.1:8000/score   POST {"prompts": [...], "responses": [...]} -> {"scores": [...]}

Prompts are passed as the trainer holds them: strings, or lists of chat messages (dicts with role and
content when sent over HTTP).
"""

from __future__ import annotations

import importlib
import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

RewardFn = Callable[[list, list[str]], torch.Tensor]


def _as_tensor(scores, n: int, source: str) -> torch.Tensor:
    scores = torch.as_tensor(list(scores) if not torch.is_tensor(scores) else scores, dtype=torch.float32).flatten()
    if scores.numel() != n:
        raise ValueError(f"reward {source} returned {scores.numel()} scores for {n} responses")
    return scores


def _plain(prompt):
    if isinstance(prompt, str):
        return prompt
    return [m if isinstance(m, dict) else m.model_dump() for m in prompt]


def function_reward(spec: str) -> RewardFn:
    """``module:function``; the current folder is importable, as for ``python -m``."""
    module_name, _, fn_name = spec.partition(":")
    if not module_name or not fn_name:
        raise ValueError(f"reward {spec!r}: write a Python function as module:function")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {spec!r}: cannot import {fn_name} from {module_name} ({e})") from None

    def reward(prompts, responses):
        return _as_tensor(fn(prompts, responses), len(responses), spec)

    return reward


def http_reward(url: str, timeout: float = 60.0) -> RewardFn:
    def reward(prompts, responses):
        body = json.dumps({"prompts": [_plain(p) for p in prompts], "responses": list(responses)}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                answer = json.loads(r.read())
        except OSError as e:
            raise ValueError(f"reward endpoint {url}: {e}") from None
        if not isinstance(answer, dict) or "scores" not in answer:
            raise ValueError(f"reward endpoint {url}: expected a JSON object with 'scores', got {str(answer)[:200]}")
        return _as_tensor(answer["scores"], len(responses), url)

    return reward


def rm_reward(path: str, batch_size: int = 32, device=None) -> RewardFn:
    from rlhfkit.models.reward import load_reward_model, score_texts  # the RM stage, loaded only when used

    rm = load_reward_model(path)
    rm.eval()
    if device is not None:
        rm.to(device)
    for p in rm.parameters():
        p.requires_grad_(False)

    def reward(prompts, responses):
        with torch.no_grad():
            return _as_tensor(score_texts(rm, prompts, responses, batch_size).float().cpu(), len(responses), path)

    reward.model = rm  # for critic initialisation from the reward model
    return reward


def make_reward_fn(spec: str, batch_size: int = 32, device=None) -> RewardFn:
    """The reward source named by ``spec`` (see the module docstring)."""
    if spec.startswith("rm:"):
        return rm_reward(spec[3:], batch_size, device)
    if spec.startswith(("http://", "https://")):
        return http_reward(spec)
    if ":" in spec:
        return function_reward(spec)
    raise ValueError(f"reward {spec!r}: give rm:RUN_FOLDER, module:function or http://host:port/path")


# --- programmatic rewards for the toy world, demos and tests ------------------------------------------


def count_word(word: str, responses: list[str]) -> list[float]:
    return [float(r.lower().split().count(word)) for r in responses]


def toy_count_the(prompts, responses) -> list[float]:
    """Count of the word "the" in the response: a simple reward a tiny model can learn to raise."""
    return count_word("the", responses)


def toy_length(prompts, responses) -> list[float]:
    """Words in the response, divided by 10."""
    return [len(r.split()) / 10 for r in responses]
