"""Rewards: whatever scores responses, built from a reward setting (parsed by ``rlhfkit.specs``).

    reward = load_reward("runs/rm-1")                    # or a classifier folder, module:function, http://..., a,b
    scores = reward(prompts, responses)                  # (N,): the mean over the ensemble's members
    members = reward.members(prompts, responses)         # (E, N): each member's scores (E = 1 for one reward)
    means, variances = reward.distribution(prompts, responses)   # (E, N) each: variance 0 but for mean-variance models
    cautious = load_reward("runs/rm-dpl", transform="quantile:0.1")   # calling it gives the lower decile

Every command that scores text uses this: PPO, best-of-N, rejection sampling, ``rm score``, the feedback
app's active learning, evaluation. Prompts are passed as the caller holds them: strings, or lists of
chat messages (sent over HTTP as lists of {role, content}).

- a reward-model run folder (``rlhfkit rm train``): its normalised scores, one row per ensemble member;
- a Hugging Face ``*ForSequenceClassification`` folder: its first logit, reading the conversation through
  the tokenizer's chat template when it has one, else the text pair (prompt, response);
- ``module:function``: ``fn(prompts, responses)`` returning N numbers, or E lists of N numbers (members);
  the current folder is importable, as for ``python -m``;
- ``http(s)://...``: POST ``{"prompts": [...], "responses": [...]}``, answered by ``{"scores": [N numbers]}`` or
  ``{"members": [[N numbers] x E]}``;
- comma-separated specs: an ensemble whose members are all theirs.

A reward-model folder may name an annotator, ``runs/rm-cond@annotator=alice``: an annotator-conditioned model then
scores as alice would (``rlhfkit.specs``). ``transform`` (every stage's ``reward_transform`` setting) makes one number
per response from a reward with a spread, by ``rlhfkit.losses.transformed_reward``: ``mean`` (the default),
``mean_minus_std:L``, ``uncertainty_weighted:L``, ``quantile:Q`` (the lower quantile of a distributional model, or of
the Gaussian with an ensemble's mean and spread), ``worst`` (the lowest member). One mechanism for ensembles and
distributional reward models alike: each member gives a mean and a variance.
"""

from __future__ import annotations

import importlib
import json
import sys
import urllib.request
from pathlib import Path

import torch

from rlhfkit.config.parts import parse_reward_transform
from rlhfkit.data.records import flat_text, from_json, to_json, user_turn
from rlhfkit.losses import transformed_reward
from rlhfkit.specs import RewardSpec, parse_reward_spec


def _as_members(scores, n: int, source: str) -> torch.Tensor:
    """N numbers or E lists of N numbers -> (E, N) float32, checked against the number of responses; anything else
    (None, strings, ragged lists, NaN) is refused naming the reward, before it reaches a loss."""
    try:
        if torch.is_tensor(scores):
            out = scores.detach().float().cpu()
        else:
            scores = list(scores)
            nested = bool(scores) and isinstance(scores[0], (list, tuple))
            out = torch.tensor(scores if nested else [scores], dtype=torch.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"reward {source} returned {type(scores).__name__}, not numbers, one per response ({e})"
        ) from None
    out = out.reshape(-1, out.shape[-1]) if out.dim() > 0 else out.reshape(1, 1)
    if out.shape[-1] != n:
        raise ValueError(f"reward {source} returned {out.shape[-1]} scores for {n} responses")
    if not torch.isfinite(out).all():
        raise ValueError(f"reward {source} returned a score that is NaN or infinite")
    return out


class Reward:
    """The interface every reward has: ``members`` (E, N) and ``distribution`` (means and variances, (E, N) each);
    calling it gives one number per response by its ``transform`` (the members' mean unless set otherwise)."""

    spec: RewardSpec
    model: torch.nn.Module | None = None  # the reward model itself, where there is one (a PPO critic can start from it)
    transform: str = "mean"

    def members(self, prompts: list, responses: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def distribution(self, prompts: list, responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's mean and variance of reward per response, (E, N) each; point scores have variance 0."""
        means = self.members(prompts, responses)
        return means, torch.zeros_like(means)

    def __call__(self, prompts: list, responses: list[str]) -> torch.Tensor:
        if parse_reward_transform(self.transform)[0] == "mean":
            return self.members(prompts, responses).mean(0)
        return self.combine(*self.distribution(prompts, responses))

    def combine(self, means: torch.Tensor, variances: torch.Tensor | None = None) -> torch.Tensor:
        """(E, N) member means (and variances: zero when not given) -> (N,) by the transform; for callers that
        hold the members already (the over-optimisation monitor scores once and reads both the mean and this)."""
        how, coef = parse_reward_transform(self.transform)
        variances = torch.zeros_like(means) if variances is None else variances
        if how == "worst" and means.size(0) < 2:
            raise ValueError(
                f"reward_transform 'worst' takes the lowest of several members, but {self.spec.text!r} has one; "
                "give an ensemble (a,b,c or `rm train --ensemble N`) or use quantile:Q with a mean-variance model"
            )
        if how != "mean" and means.size(0) < 2 and not bool((variances > 0).any()):
            raise ValueError(
                f"reward_transform {self.transform!r} needs a spread, but {self.spec.text!r} gives one score per "
                "response; give an ensemble (a,b,c or `rm train --ensemble N`) or a mean-variance reward model "
                "(`rm train --head mean-variance`)"
            )
        return transformed_reward(means, variances, how, coef)


class RewardModelReward(Reward):
    def __init__(self, spec: RewardSpec, batch_size: int = 32, device=None):
        from rlhfkit.models.reward import load_reward_model

        self.spec, self.batch_size = spec, batch_size
        self.model = load_reward_model(spec.path)
        try:
            self.model.check_annotator(spec.annotator)
        except ValueError as e:
            raise ValueError(f"reward {spec.text!r}: {e}") from None
        self.model.eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)

    @torch.no_grad()
    def members(self, prompts, responses):
        from rlhfkit.models.reward_scoring import member_scores

        prompts, responses = [from_json(p) for p in prompts], [from_json(r) for r in responses]
        return member_scores(self.model, prompts, responses, self.batch_size, annotator=self.spec.annotator).float()

    @torch.no_grad()
    def distribution(self, prompts, responses):
        from rlhfkit.models.reward_scoring import member_distributions

        prompts, responses = [from_json(p) for p in prompts], [from_json(r) for r in responses]
        means, variances = member_distributions(
            self.model, prompts, responses, self.batch_size, annotator=self.spec.annotator
        )
        return means.float(), variances.float()


class ClassifierReward(Reward):
    def __init__(self, spec: RewardSpec, batch_size: int = 32, device=None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.spec, self.batch_size = spec, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(spec.path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModelForSequenceClassification.from_pretrained(spec.path).eval().requires_grad_(False)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        # what the model can read: a 512-position BERT given 1024 tokens failed on every long input
        positions = getattr(self.model.config, "max_position_embeddings", None) or 1024
        self.max_length = min(1024, positions, self.tokenizer.model_max_length or 1024)
        if device is not None:
            self.model.to(device)

    def _texts(self, prompt, response) -> dict:
        """What the classifier reads: the conversation through its chat template, or the text pair."""
        if getattr(self.tokenizer, "chat_template", None):
            chat = user_turn(prompt) if isinstance(prompt, str) else from_json(prompt)
            reply = {"role": "assistant", "content": flat_text(from_json(response))}
            return {
                "text": self.tokenizer.apply_chat_template([m.model_dump() for m in chat] + [reply], tokenize=False),
                "templated": True,  # the template wrote the special tokens (BOS): the tokenizer must not add more
            }
        return {"text": flat_text(from_json(prompt)), "text_pair": flat_text(from_json(response))}

    @torch.no_grad()
    def members(self, prompts, responses):
        device = next(self.model.parameters()).device
        out = []
        for s in range(0, len(prompts), self.batch_size):
            rows = [
                self._texts(p, r) for p, r in zip(prompts[s : s + self.batch_size], responses[s : s + self.batch_size])
            ]
            pairs = "text_pair" in rows[0]
            batch = self.tokenizer(
                [r["text"] for r in rows],
                [r["text_pair"] for r in rows] if pairs else None,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens="templated" not in rows[0],
            ).to(device)
            out.append(self.model(**batch).logits[:, 0].float().cpu())  # (B,): the first logit is the reward
        return torch.cat(out).unsqueeze(0) if out else torch.zeros(1, 0)


class FunctionReward(Reward):
    def __init__(self, spec: RewardSpec):
        self.spec = spec
        module_name, _, fn_name = spec.text.partition(":")
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            self.fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"reward {spec.text!r}: cannot import {fn_name} from {module_name} ({e})") from None
        if not callable(self.fn):
            raise ValueError(f"reward {spec.text!r}: {fn_name} is not a function")

    def members(self, prompts, responses):
        return _as_members(self.fn(prompts, responses), len(responses), self.spec.text)


class HTTPReward(Reward):
    def __init__(self, spec: RewardSpec, timeout: float = 60.0):
        self.spec, self.timeout = spec, timeout

    def members(self, prompts, responses):
        url = self.spec.text
        body = json.dumps({"prompts": [to_json(p) for p in prompts], "responses": [to_json(r) for r in responses]})
        request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as r:
                answer = json.loads(r.read())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"reward endpoint {url}: {e}") from None
        if not isinstance(answer, dict) or not ({"scores", "members"} & set(answer)):
            raise ValueError(f"reward endpoint {url}: expected a JSON object with 'scores' or 'members'")
        return _as_members(answer.get("members", answer.get("scores")), len(responses), url)


class EnsembleReward(Reward):
    def __init__(self, spec: RewardSpec, parts: list[Reward]):
        self.spec, self.parts = spec, parts

    def members(self, prompts, responses):
        return torch.cat([part.members(prompts, responses) for part in self.parts])

    def distribution(self, prompts, responses):
        parts = [part.distribution(prompts, responses) for part in self.parts]
        return torch.cat([m for m, _ in parts]), torch.cat([v for _, v in parts])


def load_reward(
    spec: str | RewardSpec, batch_size: int = 32, device=None, setting: str = "reward", transform: str = "mean"
) -> Reward:
    """The reward a reward setting names (see the module docstring); calling it applies ``transform``."""
    spec = parse_reward_spec(spec, setting) if isinstance(spec, str) else spec
    parse_reward_transform(transform)  # a bad transform fails before anything loads
    if spec.kind == "ensemble":
        reward = EnsembleReward(spec, [load_reward(m, batch_size, device, setting) for m in spec.members])
    elif spec.kind == "reward-model":
        reward = RewardModelReward(spec, batch_size, device)
    elif spec.kind == "classifier":
        reward = ClassifierReward(spec, batch_size, device)
    elif spec.kind == "http":
        reward = HTTPReward(spec)
    else:
        reward = FunctionReward(spec)
    reward.transform = transform
    return reward
