"""The schema of ``eval.json``: what `rlhfkit eval` and ``evaluate_models`` report, field by field.

    from rlhfkit.evaluate.schema import EvalReport
    report = EvalReport.read("runs/eval-1/eval.json")
    report.model("ppo").judges["runs/rm-1"].win_rate

The schema is versioned (``schema_version``); a figure that was not measured is null (no reference model: no KL;
no task set: no capability block). Pydantic only: no torch, so the registry and the app can read reports.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _nan_is_missing(cls, value):
        """NaN (an interval that could not be computed) is written as null: JSON has no NaN."""
        return None if isinstance(value, float) and math.isnan(value) else value


class JudgeInfo(_Strict):
    spec: str
    kind: str = Field(description="pointwise: a reward scores each response; pairwise: a judge compares two")
    position_bias: float | None = Field(
        None, description="pairwise judges asked in both orders: mean P(the first shown wins) - 0.5, over all pairs"
    )


class JudgeResult(_Strict):
    """One judge's verdict on one model against the baseline."""

    n: int = Field(description="judged pairs (prompt x sample)")
    win_rate: float | None = Field(None, description="share of pairs the model wins, ties half")
    win_lo: float | None = None
    win_hi: float | None = None
    lc_win_rate: float | None = Field(
        None, description="length-controlled win rate: the fit's win rate at equal length (AlpacaEval 2)"
    )
    lc_lo: float | None = None
    lc_hi: float | None = None
    length_coef: float | None = Field(None, description="the fit's length coefficient phi; > 0: the judge likes length")
    reward_mean: float | None = Field(None, description="pointwise judges: mean score of the model's responses")
    reward_sd: float | None = Field(None, description="std of those scores over responses")
    member_spread: float | None = Field(None, description="ensembles: mean over responses of the members' std")
    position_bias: float | None = None


class Capability(_Strict):
    perplexity: float | None = Field(None, description="held-out perplexity on the reference texts")
    perplexity_tokens: int | None = None
    exact_match: float | None = Field(None, description="share of task items answered right (greedy decoding)")
    exact_match_lo: float | None = None
    exact_match_hi: float | None = None
    tasks: int | None = None


class Safety(_Strict):
    """Shares with 95% Wilson intervals, by the refusal detector; ``judge``: the same by the refusal judge."""

    harmful_complied: float | None = None
    harmful_complied_lo: float | None = None
    harmful_complied_hi: float | None = None
    n_harmful: int | None = None
    benign_refused: float | None = None
    benign_refused_lo: float | None = None
    benign_refused_hi: float | None = None
    n_benign: int | None = None
    judge: dict[str, float | int] | None = None
    judge_agreement: float | None = Field(None, description="share of responses where detector and judge agree")


class ModelReport(_Strict):
    name: str
    source: str = Field(description="the model setting or generations file it came from")
    spec: str | None = Field(None, description="the model setting (loaded for KL, capability and safety)")
    is_baseline: bool = False
    n: int = Field(description="responses judged")
    mean_length: float = Field(description="mean response length in characters")
    mean_tokens: float | None = Field(None, description="mean response length in tokens, where the tokens are known")
    eos_rate: float | None = None
    kl: float | None = Field(None, description="KL(model || reference) per response, nats")
    kl_source: str | None = Field(None, description="monte-carlo (sampled tokens) or given (in the generations)")
    judges: dict[str, JudgeResult] = {}
    capability: Capability | None = None
    safety: Safety | None = None
    notes: list[str] = []


class LeaderboardEntry(_Strict):
    model: str
    rating: float = Field(description="Bradley-Terry strength on the Elo scale, mean over models 1000")
    lo: float | None = Field(None, description="95% bootstrap interval")
    hi: float | None = None
    wins: int
    losses: int
    ties: int
    battles: int


class ReliabilityRow(_Strict):
    lo: float
    hi: float
    count: int
    confidence: float | None
    accuracy: float | None


class LengthRow(_Strict):
    lo: float = Field(description="length difference chosen - rejected (characters), bucket [lo, hi]")
    hi: float
    count: int
    accuracy: float | None


class RewardModelReport(_Strict):
    judge: str
    pairs: int = Field(description="labelled pairs without ties")
    pairwise_accuracy: float | None = None
    ece: float | None = Field(None, description="expected calibration error of sigmoid(r_chosen - r_rejected)")
    reliability: list[ReliabilityRow] = []
    by_length: list[LengthRow] = []
    best_of_4_accuracy: float | None = Field(
        None, description="RewardBench 2's format: the chosen above three rejected"
    )
    best_of_4_items: int | None = None


class Timing(_Strict):
    wall_s: float
    cpu_s: float = Field(description="this process's CPU time, all threads")
    threads: int


class EvalReport(_Strict):
    schema_version: int = SCHEMA_VERSION
    baseline: str
    reference: str | None = None
    prompts: int = Field(description="prompts judged (the intersection of every model's)")
    samples_per_prompt: int
    preferences: str = Field(description="hard (win, loss, tie) or soft (a pairwise judge's probability)")
    judges: list[JudgeInfo]
    models: list[ModelReport]
    leaderboards: dict[str, list[LeaderboardEntry]] = Field(description="per judge, best first")
    reward_models: list[RewardModelReport] = []
    plots: list[str] = []
    timing: Timing | None = None

    def model(self, name: str) -> ModelReport:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r} in this report; models: {[m.name for m in self.models]}")

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> EvalReport:
        return cls.model_validate_json(Path(path).read_text())
