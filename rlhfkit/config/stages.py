"""The settings of each training stage, and the figures each reports in its run card.

They live here, apart from the trainers, so that the CLI can build, check and describe them without
importing torch. Each trainer module imports its config from here (``rlhfkit.train.sft.SFTConfig`` is
this ``SFTConfig``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rlhfkit.config.base import Figures, StageConfig
from rlhfkit.config.evaluation import MonitorPart
from rlhfkit.config.parts import DataPart, ModelPart, OptimPart, RewardPart, RunPart, SamplingPart

# --- supervised fine-tuning -----------------------------------------------------------------------------


class SFTFigures(Figures):
    steps: int
    tokens_seen: int
    eval_loss: float | None = None
    eval_perplexity: float | None = None


class SFTConfig(ModelPart, DataPart, OptimPart, RunPart):
    """Settings of `rlhfkit sft`."""

    stage: ClassVar[str] = "sft"
    figures: ClassVar[type[Figures]] = SFTFigures

    packing: bool = Field(False, description="concatenate examples into max_length rows (attention kept per example)")
    group_by_length: bool = Field(True, description="batch examples of similar length together (less padding)")


# --- reward models --------------------------------------------------------------------------------------


class RewardFigures(Figures):
    steps: int
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    eval_margin: float | None = None
    eval_ece: float | None = None
    ensemble_accuracy: float | None = Field(None, description="held-out accuracy of the ensemble's mean score")
    disagreement: float | None = Field(None, description="mean std of the members' held-out scores")
    members: list[dict] | None = Field(None, description="each ensemble member's own figures")
    eval_pooled_accuracy: float | None = Field(
        None, description="annotator-conditioned model: held-out accuracy of its pooled (annotator-free) score"
    )
    hidden_context_r2: float | None = Field(
        None,
        description="mean-variance head: share of the held-out responses' reward variance the responses explain "
        "(DPL's hidden-context statistic; well below 1: the labels depend on something unseen, such as who gave them)",
    )
    per_annotator: list[dict] | None = Field(
        None, description="--per-annotator-report: each annotator's held-out labels, accuracy and agreement"
    )


class RewardConfig(ModelPart, DataPart, OptimPart, RunPart):
    """Settings of `rlhfkit rm train`."""

    stage: ClassVar[str] = "rm"
    figures: ClassVar[type[Figures]] = RewardFigures

    data_kind: Literal["comparison", "ranking", "rating"] = Field(
        "comparison",
        description="prompt/chosen/rejected rows (ties and soft labels allowed), prompt/completions/ranking rows, "
        "or prompt/completion rows with a Likert 'rating' or a thumbs 'label'",
    )
    rating_loss: Literal["ordinal", "regression", "pairs"] = Field(
        "ordinal",
        description="ratings: ordered logit with learned thresholds (stored with the head), squared error on "
        "(rating - 1) / (scale - 1), or pairs by rlhfkit.data.convert's rule (Bradley-Terry)",
    )
    rating_ties: Literal["drop", "tie"] = Field(
        "drop", description="ratings as pairs: equal ratings give no pair, or a tie (Davidson)"
    )
    head: Literal["scalar", "mean-variance"] = Field(
        "scalar",
        description="mean-variance: a mean and a log-variance per response (distributional preference learning, "
        "Siththaranjan et al. 2023); the hidden-context statistic goes in the figures",
    )
    annotator_conditioned: bool = Field(
        False,
        description="learn a head offset per annotator (their own reward); unknown annotators, and a reward "
        "setting without @annotator=NAME, get the pooled head",
    )
    annotator_dropout: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="annotator-conditioned: share of labels trained as if the annotator were unknown, which "
        "trains the pooled head on everyone's labels",
    )
    per_annotator_report: bool = Field(
        False, description="write each annotator's held-out accuracy and agreement (per_annotator.json) and print it"
    )
    encoder: bool = Field(
        False, description="the model is a bidirectional encoder (implied by --model minilm); score from mean pooling"
    )
    ensemble: int = Field(1, gt=0, description="members in the ensemble (each its own seed)")
    bootstrap: bool = Field(
        False, description="each ensemble member trains on its own resample (with replacement) of the data"
    )
    tie_nu: float = Field(
        1.0, gt=0, description="Davidson's nu for data with ties (larger = ties likelier at equal rewards)"
    )
    use_margin: bool = Field(True, description="use a comparison's 'margin' field in the Bradley-Terry loss (Llama 2)")
    center_rewards_coefficient: float | None = Field(
        None, description="add c * mean((r_chosen + r_rejected)^2) to keep rewards centred (TRL's option)"
    )
    normalize: bool = Field(
        True, description="fit gain/bias so reference-set scores have mean 0 and std 1; stored with the model"
    )
    normalize_on: str | None = Field(
        None,
        description="reference set for normalisation: a JSONL of prompt/response rows or comparisons; "
        "default: the training pairs' responses",
    )
    normalize_max: int = Field(1024, gt=0, description="at most this many reference responses")
    shared_prompt: bool = Field(
        True, description="one row per group with the prompt computed once (exact; causal trunks only)"
    )

    @model_validator(mode="after")
    def _check(self):
        if self.head == "mean-variance" and self.data_kind != "comparison":
            raise ValueError("head 'mean-variance' trains on comparisons (data_kind comparison)")
        return self


class ScoreConfig(StageConfig):
    """Settings of `rlhfkit rm score`."""

    reward: str = Field(..., description="the reward to score with (as every stage takes it: a run folder, ...)")
    data: str = Field(..., description="JSONL of rows with 'prompt' and 'response' (or 'completion')")
    output: str | None = Field(
        None,
        description="where to write the rows with 'score' (and 'score_std' for an ensemble or a mean-variance "
        "reward model); default <data>.scores.jsonl",
    )
    batch_size: int = Field(32, gt=0)
    reward_transform: str = RewardPart.model_fields["reward_transform"]
    progress: bool = Field(True, description="show a progress bar")

    @field_validator("reward_transform")
    @classmethod
    def _check_transform(cls, value: str) -> str:
        return RewardPart._check_transform(value)


# --- DPO ------------------------------------------------------------------------------------------------


class DPOFigures(Figures):
    steps: int
    eval_loss: float | None = None
    eval_accuracy: float | None = Field(None, description="rewards/accuracies on held-out pairs")
    eval_margin: float | None = Field(None, description="rewards/margins on held-out pairs")
    eval_chosen_reward: float | None = None
    eval_rejected_reward: float | None = None
    monitor: dict | None = Field(None, description="the over-optimisation monitor: checks, alarm, best step, stop")


class DPOConfig(ModelPart, DataPart, OptimPart, RunPart, MonitorPart):
    """Settings of `rlhfkit dpo`."""

    stage: ClassVar[str] = "dpo"
    figures: ClassVar[type[Figures]] = DPOFigures

    beta: float = Field(0.1, gt=0, description="strength of the KL leash to the reference (tau for IPO)")
    loss: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="DPO variant; sigmoid + label_smoothing > 0 is cDPO"
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="assumed label-flip rate (cDPO with sigmoid, rDPO with robust)"
    )
    rpo_alpha: float = Field(
        0.0,
        ge=0,
        description="weight of an NLL term on the chosen completion, per-token mean (RPO, Pang et al. 2024); 0 = off",
    )
    ties: Literal["davidson", "rao-kupper", "drop"] = Field(
        "davidson",
        description="pairs marked 'tie': trained as ties on the implicit rewards (Davidson or Rao-Kupper, Chen et "
        "al. 2024; then every pair uses that model) or dropped; never a false preference",
    )
    tie_nu: float = Field(1.0, gt=0, description="Davidson's nu (P(tie) at equal rewards is nu / (2 + nu))")
    tie_theta: float = Field(
        3.0, gt=1, description="Rao-Kupper's theta (P(tie) at equal rewards is (theta-1)/(theta+1))"
    )
    reference: Literal["precomputed", "copy", "lora-off"] = Field(
        "precomputed", description="how the reference log-probs are obtained (see the module docstring)"
    )
    ref_model: str | None = Field(
        None,
        description="the reference pi_ref, when it is not the starting model (iterative DPO starts from the last "
        "round's policy and keeps the SFT model as the reference); any model setting",
    )
    shared_prompt: bool = Field(
        True, description="chosen and rejected in one row with the prompt computed once (exact)"
    )

    @model_validator(mode="after")
    def _check(self):
        check_reference(self)
        return self


def check_reference(cfg) -> None:
    if cfg.reference == "lora-off" and not cfg.lora:
        raise ValueError(
            "reference 'lora-off' needs --lora (the reference is the policy with its adapters off); "
            "use --reference copy or precomputed for full fine-tuning"
        )
    if cfg.reference == "lora-off" and getattr(cfg, "ref_model", None) is not None:
        raise ValueError("reference 'lora-off' is the starting model itself; with --ref-model use precomputed or copy")


# --- KTO ------------------------------------------------------------------------------------------------


class KTOFigures(Figures):
    steps: int
    eval_loss: float | None = None
    eval_kl: float | None = Field(None, description="held-out reference point z0 (batch KL estimate, nats)")
    eval_chosen_reward: float | None = Field(None, description="mean implicit reward of held-out thumbs-up")
    eval_rejected_reward: float | None = Field(None, description="mean implicit reward of held-out thumbs-down")
    eval_margin: float | None = Field(None, description="eval_chosen_reward - eval_rejected_reward")
    desirable_weight: float | None = Field(None, description="lambda_D used (set, or balanced from the data)")


class KTOConfig(ModelPart, DataPart, OptimPart, RunPart):
    """Settings of `rlhfkit kto`."""

    stage: ClassVar[str] = "kto"
    figures: ClassVar[type[Figures]] = KTOFigures

    beta: float = Field(0.1, gt=0, description="strength of the KL leash to the reference")
    desirable_weight: float | None = Field(
        None,
        gt=0,
        description="weight of thumbs-up examples (lambda_D); default: lambda_U n_U / n_D, so that lambda_D n_D = "
        "lambda_U n_U (the paper keeps lambda_D n_D / (lambda_U n_U) in [1, 4/3]; TRL's default is 1)",
    )
    undesirable_weight: float = Field(1.0, gt=0, description="weight of thumbs-down examples (lambda_U)")
    reference: Literal["precomputed", "copy", "lora-off"] = Field(
        "precomputed", description="how the reference log-probs are obtained (as DPO)"
    )
    shared_prompt: bool = Field(
        True, description="each completion and its mismatched one in one row with the prompt computed once (exact)"
    )
    # Not the other trainers' "micro-batches of 8 on the CPU": KTO's reference point is estimated per micro-batch,
    # so the split changes the loss, and the default keeps it the whole batch everywhere.
    grad_accum: int = Field(
        1, gt=0, description="micro-batches per optimiser step; each estimates its own reference point (as TRL)"
    )

    @model_validator(mode="after")
    def _check(self):
        check_reference(self)
        if self.batch_size // self.grad_accum < 2:
            raise ValueError("KTO's reference point needs micro-batches of at least 2: batch_size / grad_accum >= 2")
        return self


# --- PPO ------------------------------------------------------------------------------------------------


class PPOFigures(Figures):
    steps: int
    kl: float | None = Field(None, description="mean KL(policy || reference) per response at the last step")
    kl_coef: float | None = None
    train_score: float | None = Field(None, description="mean raw score of the last rollout")
    eval_score: float | None = Field(None, description="mean raw score on held-out prompts")
    eval_eos_rate: float | None = None
    eval_response_length: float | None = None
    monitor: dict | None = Field(None, description="the over-optimisation monitor: checks, alarm, best step, stop")


class PPOConfig(ModelPart, DataPart, RewardPart, SamplingPart, OptimPart, RunPart, MonitorPart):
    """Settings of `rlhfkit ppo`. Defaults follow lm-human-preferences and TRL (see rlhfkit.train.ppo)."""

    stage: ClassVar[str] = "ppo"
    figures: ClassVar[type[Figures]] = PPOFigures

    advantage: Literal["gae", "rloo", "grpo"] = Field(
        "gae", description="gae: critic + GAE; rloo / grpo: group baseline, no critic"
    )
    group_size: int = Field(1, gt=0, description="samples per prompt (rloo and grpo need >= 2)")
    critic: Literal["head", "separate"] = Field(
        "head", description="head: a value head on the policy's trunk; separate: a second model"
    )
    critic_init: Literal["policy", "reward"] = Field(
        "policy", description="separate critic's start: the policy's weights or the reward model (a reward-model run)"
    )
    reference: Literal["auto", "lora-off", "copy"] = Field(
        "auto",
        description="frozen reference: the policy with LoRA adapters off, or a copy; auto: lora-off with --lora, "
        "else copy",
    )
    kl_coef: float = Field(0.05, ge=0, description="beta of the per-token KL penalty (initial value when adaptive)")
    adaptive_kl: bool = Field(False, description="Ziegler et al.'s adaptive controller instead of a fixed kl_coef")
    target_kl: float = Field(6.0, gt=0, description="adaptive controller's target KL per response (nats)")
    kl_horizon: float = Field(10000, gt=0, description="adaptive controller's horizon (samples)")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="per-token KL estimator in the penalty (Schulman 2020)"
    )
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    whiten_advantages: bool = Field(True, description="advantages to mean 0, std 1 per batch")
    cliprange: float = Field(0.2, gt=0, description="policy ratio clip epsilon")
    cliprange_value: float = Field(0.2, gt=0, description="value clip around the rollout's values")
    vf_coef: float = Field(0.1, ge=0, description="value-loss coefficient")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus coefficient")
    ppo_epochs: int = Field(4, gt=0, description="passes over each rollout batch")
    num_minibatches: int = Field(1, gt=0, description="mini-batches per pass (one optimiser step each)")
    normalize_reward: Literal["none", "initial", "running"] = Field(
        "initial",
        description="scores to mean 0, std 1: with the first batch's statistics (reference samples) or running ones",
    )
    recompute_logprobs: bool = Field(
        False,
        description="run the policy again over each rollout for the behaviour log-probs and values, instead of "
        "taking those the transformers sampler computed (same weights; differ by ~1e-6)",
    )
    sample_every: int = Field(10, gt=0, description="steps between logged sample tables (samples.jsonl, TensorBoard)")
    num_samples: int = Field(4, gt=0, description="rows in each sample table")
    # Overrides of the shared parts: PPO's own meaning or default.
    batch_size: int = Field(
        16, gt=0, description="prompts per rollout step, all processes together (completions = x group_size)"
    )
    lr: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    adam_eps: float = Field(1e-5, gt=0, description="Adam epsilon (1e-5 in the reference code)")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_schedule: Literal["cosine", "linear", "constant"] = "linear"
    log_every: int = Field(1, gt=0, description="rollout steps between logged metrics")
    eval_fraction: float = Field(0.02, ge=0, lt=1, description="share of prompts held out for eval/scores")

    @model_validator(mode="after")
    def _check(self):
        if self.advantage in ("rloo", "grpo") and self.group_size < 2:
            raise ValueError(
                f"advantage '{self.advantage}' compares samples of the same prompt: set group_size >= 2 "
                "(e.g. --group-size 4)"
            )
        if self.reference == "lora-off" and not self.lora:
            raise ValueError(
                "reference 'lora-off' needs --lora (without adapters there is nothing to switch off); use 'copy'"
            )
        if self.grad_accum not in (None, 1):
            raise ValueError("ppo does not use grad_accum: a rollout batch is cut into num_minibatches optimiser steps")
        return self


# --- best-of-N and rejection sampling -------------------------------------------------------------------


class BestOfNFigures(Figures):
    prompts: int
    n_max: int
    best_reward: float = Field(description="mean reward of the best of n_max samples")
    mean_reward: float = Field(description="mean reward of one sample (N = 1)")
    kl_bound: float = Field(description="KL(best-of-n_max || policy) = log n - (n - 1) / n, nats")
    curve: list[dict] = Field(description="[{n, reward, kl_bound}] for n = 1, 2, 4, ...")
    monitor: dict | None = Field(None, description="the over-optimisation monitor: checks, alarm, best step, stop")


class BestOfNConfig(ModelPart, DataPart, RewardPart, SamplingPart, RunPart, MonitorPart):
    """Settings of `rlhfkit bon`."""

    stage: ClassVar[str] = "bon"
    figures: ClassVar[type[Figures]] = BestOfNFigures

    n_max: int = Field(16, gt=0, description="samples per prompt; the curve covers N = 1, 2, 4, ... up to it")
    max_prompts: int = Field(64, gt=0, description="at most this many prompts (the first ones of the data)")
    batch_size: int = Field(8, gt=0, description="prompts per generation batch (on each process)")
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="unused by sampling stages")


class RejectionFigures(Figures):
    k: int
    rounds: list[dict] = Field(description="[{round, policy, mean_reward, best_of_k_reward, eos_rate}]")
    last_mean_reward: float = Field(description="mean reward of the last round's samples (before its fine-tuning)")
    last_best_of_k_reward: float
    monitor: dict | None = Field(None, description="the over-optimisation monitor: checks, alarm, best step, stop")


class RejectionConfig(ModelPart, DataPart, RewardPart, SamplingPart, OptimPart, RunPart, MonitorPart):
    """Settings of `rlhfkit rejection`; the optimiser and run settings are those of each round's SFT."""

    stage: ClassVar[str] = "rejection"
    figures: ClassVar[type[Figures]] = RejectionFigures

    k: int = Field(8, gt=0, description="samples per prompt; the best one is kept")
    rounds: int = Field(1, gt=0, description="sample-select-fine-tune rounds, each from the previous round's policy")
    max_prompts: int = Field(256, gt=0, description="prompts sampled in every round (the first ones of the data)")
    batch_size: int = Field(8, gt=0, description="prompts per generation batch (on each process)")
    sft_batch_size: int = Field(16, gt=0, description="examples per SFT optimiser step")
    lr: float = Field(1e-4, gt=0, description="peak learning rate of each round's SFT")
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="unused by sampling stages")

    @model_validator(mode="after")
    def _a_round_fills_a_batch(self):
        # each round fine-tunes on one chosen response per prompt: at most max_prompts examples
        if self.sft_batch_size > self.max_prompts:
            raise ValueError(
                f"sft_batch_size {self.sft_batch_size} is more than the {self.max_prompts} examples a round trains on "
                "(one per prompt, max_prompts): lower sft_batch_size or raise max_prompts"
            )
        return self
