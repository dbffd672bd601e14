"""Scoring text with a reward model: the token ids it reads, raw and normalised scores, mean-variance
distributions, and every member's scores of an ensemble (``rlhfkit.rewards`` serves these to every stage)."""

from __future__ import annotations

import torch

from rlhfkit.data.chat import prompt_text, tokenize_prompt_completion
from rlhfkit.data.records import Message, flat_text
from rlhfkit.models.reward import RewardEnsemble, RewardModel


def encode(rm: RewardModel, prompt, response, max_length: int | None = None) -> list[int]:
    """The token ids the reward model reads for one (prompt, response): for a causal trunk
    ``prompt_text + response + end-of-turn`` (chat template for conversational prompts, EOS appended
    for plain text, as TRL's RewardTrainer does); for an encoder the text pair [CLS] prompt [SEP] response [SEP]."""
    max_length = max_length or rm.max_length  # by default what the model was trained on
    if rm.kind == "encoder":
        return rm.tokenizer(flat_text(prompt), flat_text(response), truncation="longest_first", max_length=max_length)[
            "input_ids"
        ]
    if isinstance(prompt, list) and isinstance(response, str):
        response = [Message(role="assistant", content=response)]
    p, c = tokenize_prompt_completion(rm.tokenizer, prompt, response)
    ids = p + c
    return ids[-max_length:] if len(ids) > max_length else ids


def _batch(ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([x + [pad_id] * (width - len(x)) for x in ids], device=device)
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
    return input_ids, mask


@torch.no_grad()
def score_raw(
    rm: RewardModel,
    prompts: list,
    responses: list,
    batch_size: int = 32,
    max_length: int | None = None,
    annotator: str | None = None,
    with_log_var: bool = False,
):
    """(N,) raw scores (before normalisation), on the model's device, returned on the CPU; as ``annotator`` scores
    for an annotator-conditioned model (None: pooled). With ``with_log_var``: (scores, log-variances)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; give one response per prompt")
    rm.check_annotator(annotator)
    was_training = rm.training
    rm.eval()
    device = next(rm.parameters()).device
    pad_id = rm.tokenizer.pad_token_id if rm.tokenizer.pad_token_id is not None else 0
    scores, log_vars = [], []
    for s in range(0, len(prompts), batch_size):
        ids = [encode(rm, p, r, max_length) for p, r in zip(prompts[s : s + batch_size], responses[s : s + batch_size])]
        input_ids, mask = _batch(ids, pad_id, device)
        who = rm.annotator_ids([annotator] * len(ids)) if rm.annotators else None
        out = rm(input_ids, mask, annotators=who, with_log_var=with_log_var)
        score, log_var = out if with_log_var else (out, None)
        scores.append(score.float().cpu())
        if log_var is not None:
            log_vars.append(log_var.float().cpu())
    rm.train(was_training)
    scores = torch.cat(scores) if scores else torch.zeros(0)
    return (scores, torch.cat(log_vars) if log_vars else torch.zeros(0)) if with_log_var else scores


def score_distribution(
    rm: RewardModel,
    prompts: list,
    responses: list,
    batch_size: int = 32,
    max_length: int | None = None,
    annotator: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance), (N,) each, normalised: a mean-variance model's distribution of reward per response
    (its variance scaled by gain^2 with the mean); a scalar model's scores with variance 0."""
    gain, bias = rm.norm(annotator)
    if not rm.variance:
        raw = score_raw(rm, prompts, responses, batch_size, max_length, annotator)
        return gain * raw + bias, torch.zeros_like(raw)
    raw, log_var = score_raw(rm, prompts, responses, batch_size, max_length, annotator, with_log_var=True)
    return gain * raw + bias, gain**2 * log_var.exp()


def score_texts(
    rm: RewardModel | RewardEnsemble,
    prompts: list,
    responses: list,
    batch_size: int = 32,
    max_length: int | None = None,
    annotator: str | None = None,
) -> torch.Tensor:
    """(N,) normalised scores; prompts are strings or message lists (rendered with the chat template).
    For an ensemble: the mean over members. ``annotator``: as that annotator scores (conditioned models)."""
    if isinstance(rm, RewardEnsemble):
        return score_ensemble(rm, prompts, responses, batch_size, max_length, annotator)[0]
    gain, bias = rm.norm(annotator)
    return gain * score_raw(rm, prompts, responses, batch_size, max_length, annotator) + bias


def member_distributions(
    ens: RewardEnsemble | RewardModel,
    prompts: list,
    responses: list,
    batch_size: int = 32,
    max_length: int | None = None,
    annotator: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, variances), (E, N) each, normalised, of every member (E = 1 for a single reward model; variance 0
    for members without a variance head)."""
    members = ens.members if isinstance(ens, RewardEnsemble) else [ens]
    pairs = [score_distribution(m, prompts, responses, batch_size, max_length, annotator) for m in members]
    return torch.stack([m for m, _ in pairs]), torch.stack([v for _, v in pairs])


def member_scores(
    ens: RewardEnsemble | RewardModel,
    prompts: list,
    responses: list,
    batch_size: int = 32,
    max_length: int | None = None,
    annotator: str | None = None,
) -> torch.Tensor:
    """(E, N) normalised scores of every member (E = 1 for a single reward model)."""
    members = ens.members if isinstance(ens, RewardEnsemble) else [ens]
    return torch.stack([score_texts(m, prompts, responses, batch_size, max_length, annotator) for m in members])


def score_ensemble(
    ens: RewardEnsemble | RewardModel,
    prompts: list,
    responses: list,
    batch_size: int = 32,
    max_length: int | None = None,
    annotator: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) over members of the normalised scores, (N,) each; std is the members' disagreement."""
    scores = member_scores(ens, prompts, responses, batch_size, max_length, annotator)  # (E, N)
    return scores.mean(0), scores.std(0, unbiased=False)


def prompt_string(tokenizer, prompt) -> str:
    """What a causal reward model reads before the response (for display and debugging)."""
    return prompt_text(tokenizer, prompt)
