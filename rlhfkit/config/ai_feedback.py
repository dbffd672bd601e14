"""Settings of the AI-feedback stages: critique and revision (``rlhfkit cai revise``), AI preference labels
(``rlhfkit label``) and automated red teaming (``rlhfkit redteam``), and the figures each reports.
Torch-free, like every config."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from rlhfkit.config.base import Figures, Seed, StageConfig
from rlhfkit.config.parts import DataPart, ModelPart, RunPart, SamplingPart

CONSTITUTION_HELP = "constitution YAML (principles, comparison questions, few-shot examples); default: the built-in one"
JUDGE_HELP = (
    "feedback model: lm:MODEL (a local causal LM, by the options' next-token probabilities), "
    "openai:URL#MODEL (an OpenAI-compatible server: vLLM, llama.cpp, Ollama), or a reward (Bradley-Terry)"
)
FORMAT_HELP = "chat: the model's chat template (instruction-tuned models); text: plain few-shot text (base models)"


# --- SL-CAI: critique and revision -----------------------------------------------------------------------


class ReviseFigures(Figures):
    prompts: int
    rounds: int
    revised_share: float = Field(description="share of prompts whose final revision differs from the first answer")
    leak_share: float = Field(description="share of revisions that opened with 'Here is a revised response' or alike")
    copied_share: float = Field(
        0.0,
        description="share of revisions that only repeated their critique, a request or a few-shot example (kept out)",
    )
    mean_answer_chars: float
    mean_revision_chars: float


class ReviseConfig(ModelPart, DataPart, SamplingPart, RunPart):
    """Settings of `rlhfkit cai revise`."""

    stage: ClassVar[str] = "cai-revise"
    figures: ClassVar[type[Figures]] = ReviseFigures

    constitution: str | None = Field(None, description=CONSTITUTION_HELP)
    rounds: int = Field(
        1, gt=0, description="critique-revision rounds per prompt, each under a newly sampled principle"
    )
    reviser: str | None = Field(
        None, description="the model that critiques and revises; default: the model itself (Bai et al.)"
    )
    reviser_format: Literal["chat", "text"] = Field("chat", description=FORMAT_HELP)
    critique_max_new_tokens: int = Field(48, gt=0, description="budget of each critique in tokens")
    max_prompts: int | None = Field(None, gt=0, description="at most this many prompts (the first ones)")
    batch_size: int = Field(16, gt=0, description="prompts per generation batch (one resume point each)")
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="unused by sampling stages")
    # A revision writes over the whole answer: greedy decoding keeps a small model's copy of a fine answer
    # intact, where sampling at temperature 1 drifts.
    top_k: int = Field(1, ge=0, description="top-k sampling; 1 = greedy (the default here), 0 = off")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")


# --- RLAIF: AI preference labels ------------------------------------------------------------------------


class LabelFigures(Figures):
    pairs: int
    judge: str
    principles: list[str]
    mean_confidence: float = Field(description="mean |chosen_prob - 0.5| * 2 of the AI labels (0 = undecided)")
    position_bias: float | None = Field(None, description="mean P(first shown) - 0.5, over both orders")
    agreement: dict[str, float] | None = Field(
        None,
        description="when the input pairs were already oriented (chosen/rejected): share of pairs on which the AI "
        "prefers the input's chosen one: ensembled or one principle, both orders or one",
    )
    agreement_per_principle: dict[str, float] | None = None
    human_rows: int = 0


class LabelConfig(StageConfig):
    """Settings of `rlhfkit label`."""

    stage: ClassVar[str] = "label"
    figures: ClassVar[type[Figures]] = LabelFigures
    run_only: ClassVar[frozenset[str]] = StageConfig.run_only | {"batch_size", "resume"}

    data: str = Field(
        ...,
        description="pairs to label: rows with prompt and response_a/response_b, or prompt/chosen/rejected (then "
        "the agreement with that orientation is reported too)",
    )
    judge: str = Field(..., description=JUDGE_HELP)
    judge_format: Literal["chat", "text"] = Field("chat", description=FORMAT_HELP + " (lm: judges only)")
    constitution: str | None = Field(None, description=CONSTITUTION_HELP)
    principles: list[str] | None = Field(None, description="the comparison principles to average over; default all")
    both_orders: bool = Field(True, description="ask A/B and B/A and average (removes the position bias)")
    decompose: bool = Field(
        False,
        description="ask two easier questions instead of the comparisons (small feedback models): is the request "
        "harmful, and which response declines it; the constitution's 'decomposed' section",
    )
    chain_of_thought: bool = Field(
        False, description="the judge reasons first, then answers; probabilities clamped to [cot_clamp_low, 1 - low]"
    )
    cot_max_new_tokens: int = Field(64, gt=0)
    cot_clamp_low: float = Field(0.4, ge=0, lt=0.5, description="Bai et al. clamp chain-of-thought labels to 40-60%")
    human_data: str | None = Field(
        None, description="comparisons labelled by people (the app's export), copied in with source 'human'"
    )
    max_pairs: int | None = Field(None, gt=0, description="at most this many pairs (the first ones)")
    max_response_chars: int = Field(600, gt=0, description="longer responses are cut for the judge (not in the output)")
    batch_size: int = Field(8, gt=0, description="questions per forward pass of a local judge")
    output_dir: str | None = Field(None, description="run folder; default runs/label-<time>")
    seed: Seed = 0
    resume: bool = Field(True, description="keep the labels an interrupted run already wrote")
    progress: bool = True
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")


# --- red teaming -------------------------------------------------------------------------------------------


class RedteamFigures(Figures):
    rounds: list[dict] = Field(description="per round: attacks, successes, attack success rate, per topic")
    attack_success_rate: float = Field(description="over all rounds")
    successful_attacks: int


class RedteamConfig(SamplingPart, RunPart):
    """Settings of `rlhfkit redteam`."""

    stage: ClassVar[str] = "redteam"
    figures: ClassVar[type[Figures]] = RedteamFigures

    target: str = Field(..., description="the model attacked (any model setting)")
    attacker: str = Field("smollm2-135m-instruct", description="the model that writes attack prompts")
    judge: str | None = Field(
        None,
        description="harm judge besides the refusal detector: " + JUDGE_HELP + "; an answer that is not a refusal "
        "counts as a success only if the judge prefers a refusal to it; default: the detector alone",
    )
    judge_format: Literal["chat", "text"] = Field("chat", description=FORMAT_HELP)
    constitution: str | None = Field(None, description=CONSTITUTION_HELP + " (its comparisons are the harm judge's)")
    seeds: str | None = Field(
        None, description="YAML of topics with few-shot attack examples; default: the built-in redteam_seeds.yaml"
    )
    topics: list[str] | None = Field(None, description="the topics to attack; default all of the seeds file")
    rounds: int = Field(3, gt=0, description="attack rounds; later rounds see the attacks that worked as examples")
    attacks_per_topic: int = Field(8, gt=0, description="attack prompts written per topic and round")
    attack_max_new_tokens: int = Field(40, gt=0)
    attack_temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(40, gt=0, description="the target's answer budget in tokens")
    top_k: int = Field(1, ge=0, description="the target's top-k; 1 = greedy (the default here)")
    reference_refusal: str = Field(
        "I'm sorry, but I can't help with that.",
        description="what the harm judge compares an answer with (evaluation only, never training data)",
    )
    batch_size: int = Field(16, gt=0, description="prompts per generation batch")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")
