"""The settings of generation and evaluation (`rlhfkit generate`, `rlhfkit eval`) and of the over-optimisation
monitor that PPO, best-of-N, rejection sampling and DPO share (``MonitorPart``). Torch-free, like every config.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from rlhfkit.config.base import Figures, Seed, StageConfig
from rlhfkit.config.parts import REWARD_TRANSFORM_CHOICES, SamplingPart, parse_reward_transform

MODELS_HELP = (
    "models, each a model setting (a run folder, a Hugging Face folder, a .gguf file, tiny, ...), optionally "
    "named as NAME=SPEC"
)


# --- the over-optimisation monitor, shared by the policy-optimising stages ------------------------------------


class MonitorPart(StageConfig):
    """Settings of the over-optimisation monitor (``rlhfkit.train.monitoring``): at every ``monitor_every`` steps the
    policy answers held-out prompts and the monitor reads signals that need no gold utility (a second reward model,
    ensemble disagreement, held-out agreement, KL, length, entropy), fits Gao et al.'s curve of proxy reward against
    sqrt(KL) and raises an alarm when they say the policy is exploiting its reward."""

    monitor: bool = Field(False, description="watch for reward over-optimisation at every monitor_every steps")
    monitor_every: int = Field(
        10, gt=0, description="steps between checks (PPO, DPO); best-of-N checks every N, rejection every round"
    )
    monitor_prompts: int = Field(64, gt=0, description="held-out prompts the policy answers at each check")
    monitor_data: str | None = Field(
        None, description="prompts for the checks; default: the stage's held-out prompts (eval_data or its split)"
    )
    monitor_reward: str | None = Field(
        None,
        description="a second reward, trained on held-out labels: its score of the check's samples, whose fall while "
        "the training reward rises is the clearest sign (any reward setting)",
    )
    monitor_ensemble: str | None = Field(
        None,
        description="a reward ensemble whose disagreement (member std) on the samples is watched; default: the "
        "training reward when it has several members",
    )
    monitor_labels: str | None = Field(
        None,
        description="held-out comparisons: the training reward's agreement with them on each check (DPO: its "
        "implicit reward's; default there: its eval_data)",
    )
    monitor_max_new_tokens: int | None = Field(
        None, gt=0, description="response budget of the check's samples; default: the stage's (DPO: 48)"
    )
    monitor_kl_budget: float | None = Field(None, gt=0, description="alarm when KL to the start passes this (nats)")
    monitor_stop: bool = Field(
        False,
        description="stop at the alarm and keep the best check's model as final/ (else only log it; with "
        "monitor_switch_to, switch instead)",
    )
    monitor_switch_to: str | None = Field(
        None,
        description="at the alarm, switch the training reward to this transform of its ensemble and carry on (PPO, "
        f"best-of-N): {REWARD_TRANSFORM_CHOICES}, e.g. mean_minus_std:1 or worst (Coste et al. 2023)",
    )
    monitor_settings: dict[str, float | None] = Field(
        {},
        description="thresholds of rlhfkit.evaluate.monitor.MonitorSettings to change (patience, window, z, "
        "min_fall, ...; null switches off a reason that can be off: degenerate_share, entropy_factor)",
    )

    @field_validator("monitor_switch_to")
    @classmethod
    def _check_switch(cls, value: str | None) -> str | None:
        if value is not None:
            parse_reward_transform(value, "monitor_switch_to")
        return value


class OutputPart(StageConfig):
    """The run settings of the stages that train nothing (generation, evaluation): where the folder goes, the seed,
    whether to resume and to show progress."""

    run_only: ClassVar[frozenset[str]] = StageConfig.run_only | {"resume", "report_to"}

    output_dir: str | None = Field(None, description="run folder; default runs/<stage>-<time>")
    seed: Seed = Field(0, description="sampling seed (every model gets the same one: paired samples)")
    resume: bool = Field(True, description="continue an interrupted run in output_dir")
    progress: bool = Field(True, description="show a progress bar")
    report_to: list[Literal["tensorboard", "jsonl"]] = Field(["jsonl"], description="metric sinks")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")


# --- generation -----------------------------------------------------------------------------------------------


class GenerateFigures(Figures):
    models: list[dict] = Field(description="per model: name, spec, rows, mean_length, eos_rate")
    prompts: int
    rows: int
    file: str


class GenerateConfig(SamplingPart, OutputPart):
    """Settings of `rlhfkit generate`."""

    stage: ClassVar[str] = "generate"
    figures: ClassVar[type[Figures]] = GenerateFigures

    models: list[str] = Field(..., min_length=1, description=MODELS_HELP)
    data: str = Field(..., description="prompts: any data file whose rows have a prompt ('toy': the toy world's)")
    n: int = Field(1, gt=0, description="samples per prompt")
    max_prompts: int | None = Field(None, gt=0, description="at most this many prompts (the first ones)")
    batch_size: int = Field(64, gt=0, description="prompts per generation batch")
    max_length: int = Field(
        512, gt=0, description="longest prompt + response in tokens (longer prompts keep their end)"
    )
    chat_template: str | None = Field(None, description="Jinja chat template; default: the model's own, else ChatML")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights' dtype")
    skip_invalid: bool = Field(False, description="skip bad prompt rows instead of failing")
    # The sampler: vLLM where it is installed and a GPU is there, else the built-in one (same settings either way).
    rollout_backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto: vllm when installed and a GPU is present, else transformers"
    )


# --- evaluation -----------------------------------------------------------------------------------------------


class EvalFigures(Figures):
    baseline: str
    models: list[dict] = Field(description="per model: name, win rate and LC win rate by the first judge, KL, length")
    judges: list[str]
    leaderboard: list[dict] = Field(description="the first judge's Bradley-Terry leaderboard (Elo scale, 95% interval)")
    reward_models: list[dict] = Field([], description="per reward judge with labelled data: accuracy, best-of-4, ECE")
    wall_seconds: float
    cpu_seconds: float


class EvalConfig(SamplingPart, OutputPart):
    """Settings of `rlhfkit eval`."""

    stage: ClassVar[str] = "eval"
    figures: ClassVar[type[Figures]] = EvalFigures

    models: list[str] = Field(
        ...,
        min_length=1,
        description=MODELS_HELP + "; or a generations JSONL / `rlhfkit generate` run folder (its models by name)",
    )
    baseline: str = Field(
        ..., description="the model every other is compared with: a name among models, or another one"
    )
    judges: list[str] = Field(
        ...,
        min_length=1,
        description="each a reward setting (reward model, ensemble, module:function, http...), lm:MODEL or "
        "openai:URL#MODEL; the first one ranks the leaderboard in the card",
    )
    data: str | None = Field(None, description="prompts to sample models on (needed when a model is not a file)")
    reference: str | None = Field(
        None, description="model for KL(model || reference), Monte Carlo on each model's samples; default: none"
    )
    preferences: Literal["hard", "soft"] = Field(
        "hard",
        description="hard: each judgement is a win, a loss or a tie (ties half); soft: a pairwise judge's "
        "probability counts as a fractional win",
    )
    all_pairs: bool = Field(
        True, description="judge every pair of models for the leaderboard (else only each against the baseline)"
    )
    n_bootstrap: int = Field(1000, ge=0, description="bootstrap refits of the leaderboard's intervals")
    lc_bootstrap: int = Field(200, ge=0, description="bootstrap refits of the LC win rate's interval (0: none)")
    # Capability retention
    perplexity_data: str | None = Field(
        None, description="reference texts for held-out perplexity: rows with 'text', or demonstrations; 'toy'"
    )
    task_data: str | None = Field(
        None, description="task set with known answers: rows with 'prompt' and 'answer'; 'toy': toy questions"
    )
    task_match: Literal["exact", "contains"] = Field(
        "exact", description="exact: normalised response equals the answer; contains: the answer appears in it"
    )
    max_tasks: int = Field(200, gt=0, description="at most this many task items and safety prompts per set")
    # Safety
    redteam_data: str | None = Field(None, description="harmful requests (prompts): share complied with; 'toy'")
    benign_data: str | None = Field(None, description="benign look-alike requests (prompts): share refused; 'toy'")
    refusal_judge: str | None = Field(
        None,
        description="judge of refusals beside the phrase detector: lm:MODEL / openai:URL#MODEL (asked whether the "
        "response refuses) or module:function (1 = refusal)",
    )
    # The reward-model report
    rm_data: str | None = Field(None, description="labelled comparisons for each reward judge's report card")
    rm_best_of_4_data: str | None = Field(
        None,
        description="RewardBench 2 style sets: rows with prompt, chosen (one) and rejected (three), or rankings",
    )
    # Sampling of the models given as model settings
    n: int = Field(1, gt=0, description="samples per prompt")
    max_prompts: int | None = Field(None, gt=0, description="at most this many prompts")
    batch_size: int = Field(64, gt=0, description="prompts per generation batch")
    judge_batch_size: int = Field(32, gt=0, description="responses per judge or reward forward")
    max_length: int = Field(512, gt=0, description="longest prompt + response in tokens")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights' dtype")
    rollout_backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto: vllm when installed and a GPU is present, else transformers"
    )
    samples_in_report: int = Field(6, ge=0, description="sample responses per model in the HTML report")
