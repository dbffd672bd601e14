"""The settings of the pipelines: the toy demo and the real-model presets (``rlhfkit demo [--preset NAME]``).

Each is one flat config whose stage settings are derived from it by the pipeline; torch-free, like every
config, so that the command line checks them before anything loads.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from rlhfkit.config.base import Figures, Seed, StageConfig


class DemoFigures(Figures):
    rows: list[dict] = Field(description="per method: gold, win rate vs SFT with its interval, KL, proxy reward")
    annotator_agreement: float
    rm_ceiling: float
    rm_heldout_accuracy: float | None
    wall_seconds: float
    seed: int


class HarmlessFigures(Figures):
    rates: dict[str, dict[str, float]] = Field(description="per model: harmful_refusal, benign_refusal")
    meets_targets: dict[str, bool]
    cpu_seconds: float
    wall_seconds: float


class DemoConfig(StageConfig):
    """Settings of `rlhfkit demo` (the budgets are tuned for a 2-core CPU: about 1.5 minutes)."""

    stage: ClassVar[str] = "demo"
    figures: ClassVar[type[Figures]] = DemoFigures

    output_dir: str | None = Field(None, description="run folder; default runs/demo-<time>")
    seed: Seed = 0
    quick: bool = Field(False, description="tiny budgets everywhere (a smoke run, not a result)")
    model: str = Field("tiny", description="the model SFT starts from")
    demo_quality: float = Field(
        0.5, ge=0, le=1, description="share of good demonstrations (the rest are plausible but poor)"
    )
    sft_steps: int = Field(600, gt=0)
    sft_lr: float = Field(3e-3, gt=0)
    feedback_prompts: int = Field(1200, gt=0, description="prompts whose SFT samples the annotators label")
    samples_per_prompt: int = Field(4, ge=2, description="SFT samples per prompt shown to annotators")
    eval_label_draws: int = Field(
        5,
        gt=0,
        description="fresh labels drawn per held-out prompt (pairs and annotators), for the reward model's held-out accuracy",
    )
    annotator_noise: float = Field(0.25, ge=0, lt=0.5, description="label flip rate (AlpacaFarm: 0.25)")
    rm_steps: int = Field(300, gt=0)
    bon_n: int = Field(16, ge=1, description="largest N of best-of-N")
    rejection_k: int = Field(8, ge=2, description="samples per prompt in rejection sampling")
    rejection_prompts: int = Field(400, gt=0)
    dpo_steps: int = Field(200, gt=0)
    dpo_beta: float = Field(0.1, gt=0)
    ppo_steps: int = Field(60, gt=0)
    ppo_kl_coef: float = Field(0.02, ge=0)
    eval_prompts: int = Field(500, gt=0, description="held-out prompts for the evaluation")
    eval_tasks: int = Field(
        100, gt=0, description="toy questions (exact match) and harmful and benign requests (safety) in the evaluation"
    )
    monitor: bool = Field(
        False,
        description="run PPO, DPO and rejection sampling with the over-optimisation monitor, its second reward model "
        "(an ensemble of 4) trained on the held-out labels",
    )
    max_new_tokens: int = Field(24, gt=0)
    methods: list[Literal["bon", "rejection", "dpo", "ppo"]] = ["bon", "rejection", "dpo", "ppo"]
    threads: int = Field(
        1,
        ge=0,
        description="torch threads (0: auto, one when the machine is busy, else all cores); tiny models run "
        "fastest on one, and several threads wait on each other when the cores are busy",
    )

    def budgets(self) -> DemoConfig:
        if not self.quick:
            return self
        return self.model_copy(
            update=dict(
                sft_steps=20,
                feedback_prompts=48,
                rm_steps=5,
                bon_n=4,
                rejection_k=2,
                rejection_prompts=32,
                dpo_steps=4,
                ppo_steps=2,
                eval_prompts=32,
                eval_tasks=8,
            )
        )


class HarmlessConfig(StageConfig):
    """Settings of `rlhfkit demo --preset smollm2-harmless`."""

    stage: ClassVar[str] = "smollm2-harmless"
    figures: ClassVar[type[Figures]] = HarmlessFigures

    output_dir: str | None = Field(None, description="run folder; default runs/smollm2-harmless-<time>")
    seed: Seed = 0
    model: str = Field("smollm2-135m-instruct", description="the model to align (any causal LM spec)")
    methods: list[Literal["dpo", "ppo"]] = Field(["dpo", "ppo"], description="which alignment methods to run")
    n_train_pairs: int = Field(360, gt=1, description="training prompts (one pair each)")
    # Moves the refuse/answer balance: 0.4 gave DPO 80% / 2% (harmful / benign refused; e5 in the doc), 0.5 88% / 2%.
    harmful_share: float = Field(0.5, gt=0, lt=1, description="share of harmful prompts among the training prompts")
    n_eval_harmful: int = Field(60, gt=0, description="harmful evaluation prompts (at most 60)")
    n_eval_benign: int = Field(60, gt=0, description="benign evaluation prompts (at most 60)")
    max_new_tokens: int = Field(40, gt=0, description="answer budget (greedy) when evaluating")
    gen_max_new_tokens: int = Field(40, gt=0, description="budget of the model's own answers used in the pairs")
    gen_batch_size: int = Field(32, gt=0, description="prompts per generation batch")
    lora_r: int = Field(16, gt=0, description="LoRA rank (all linear layers) for every stage")
    lora_alpha: float = Field(32.0, gt=0)
    max_length: int = Field(192, gt=0, description="longest training sequence in tokens")
    # The starting policy (policy_0) of DPO (and of PPO with ppo_from: policy_0)
    init: Literal["sft", "base"] = Field(
        "sft", description="policy_0: LoRA SFT on the chosen answers, or the base model"
    )
    # Two epochs at 5e-4: one epoch at 3e-4 under-fits the decision (r8: 47% of the *training* benign requests
    # still refused; e1 in the doc).
    sft_epochs: float = Field(2.0, gt=0)
    sft_batch_size: int = Field(8, gt=0)
    sft_lr: float = Field(5e-4, gt=0)
    # DPO
    dpo_epochs: float = Field(1.0, gt=0, description="passes over the pairs")
    dpo_batch_size: int = Field(8, gt=0)
    dpo_lr: float = Field(2e-4, gt=0)
    dpo_beta: float = Field(0.1, gt=0)
    # Plain DPO lowered the chosen log-probs with the rejected ones and refused more of the training benign
    # requests after it than before (r8: 47% -> 60%); the NLL term on the chosen answers (RPO) keeps the helpful
    # answers likely (e2 in the doc).
    dpo_rpo_alpha: float = Field(1.0, ge=0, description="weight of the NLL term on the chosen answers (RPO)")
    # PPO and its reward model
    # PPO refines the DPO model (SFT -> DPO -> RL, as in Tulu 3): 8 rollouts of 16 prompts from policy_0 moved
    # it by a KL of ~0.1 nats and left its over-refusal in place (e3 in the doc); "policy_0" starts PPO from it.
    ppo_from: Literal["dpo", "policy_0"] = Field("dpo", description="PPO's start: the DPO model or policy_0")
    rm_epochs: float = Field(2.0, gt=0, description="passes of the MiniLM reward model over the pairs")
    rm_batch_size: int = Field(16, gt=0)
    rm_lr: float = Field(1e-4, gt=0)
    ppo_steps: int = Field(8, gt=0, description="PPO rollout steps")
    ppo_batch_size: int = Field(16, gt=0, description="prompts per rollout")
    ppo_epochs: int = Field(2, gt=0, description="optimisation passes over each rollout")
    ppo_lr: float = Field(1e-4, gt=0)
    ppo_kl_coef: float = Field(0.05, ge=0)
    ppo_max_new_tokens: int = Field(24, gt=0)
    ppo_temperature: float = Field(0.7, gt=0)
    # Report and machine
    n_samples: int = Field(6, ge=0, description="before/after samples in the report (half harmful, half benign)")
    # One thread by default: the preset's CPU budget (docs/smollm2-harmless.md) was measured that way.
    threads: int = Field(
        1,
        ge=0,
        description="torch CPU threads; 0 = auto: 1 when the machine is already busy "
        "(load >= cores; OpenMP threads then spin-wait), else all cores",
    )
    target_harmful_refusal: float = 0.8
    target_benign_refusal: float = 0.1

    @model_validator(mode="after")
    def _check(self):
        if "ppo" in self.methods and self.ppo_from == "dpo" and "dpo" not in self.methods:
            raise ValueError("ppo_from: dpo needs dpo in methods (or give --ppo-from policy_0)")
        return self


class CAIFigures(Figures):
    rates: dict[str, dict[str, float]] = Field(description="per model: harmful_refusal, benign_refusal")
    meets_targets: dict[str, bool]
    label_agreement: float | None = Field(None, description="AI labels vs the refusal-vs-compliance orientation")
    redteam: dict[str, list[float]] | None = Field(None, description="per target: attack success rate per round")
    cpu_seconds: float
    wall_seconds: float


class CAIConfig(StageConfig):
    """Settings of `rlhfkit demo --preset smollm2-cai`: harmlessness from a constitution alone (no hand-written
    refusal in the training data): SL-CAI -> SFT -> RLAIF labels -> reward model -> PPO, and DPO on the labels."""

    stage: ClassVar[str] = "smollm2-cai"
    figures: ClassVar[type[Figures]] = CAIFigures

    output_dir: str | None = Field(None, description="run folder; default runs/smollm2-cai-<time>")
    seed: Seed = 0
    model: str = Field("smollm2-135m-instruct", description="the model to align (any causal LM spec)")
    constitution: str | None = Field(None, description="constitution YAML; default the built-in one")
    reviser: str | None = Field(None, description="the critic and reviser of SL-CAI; default the model itself")
    reviser_format: Literal["chat", "text"] = "chat"
    feedback_model: str = Field("lm:gemma3-270m", description="the RLAIF feedback model (a judge setting)")
    feedback_format: Literal["chat", "text"] = Field("text", description="text: few-shot plain text (base models)")
    label_principles: list[str] | None = Field(
        ["less-harmful", "refuse-only-harm", "harmless-helpful"],
        description="comparison principles the labels average over (each costs a pass of the feedback model)",
    )
    label_decompose: bool = Field(
        False,
        description="ask the feedback model the constitution's two decomposed questions (rlhfkit label --decompose)",
    )
    methods: list[Literal["dpo", "ppo"]] = Field(["dpo", "ppo"], description="which RL-CAI methods to run")
    n_train_harmful: int = Field(93, gt=0, description="harmful training requests (red-team prompts), one per act")
    n_train_benign: int = Field(93, gt=0, description="benign training requests (look-alikes and everyday ones)")
    revise_rounds: int = Field(1, gt=0, description="critique-revision rounds")
    revise_max_new_tokens: int = Field(48, gt=0, description="budget of answers and revisions")
    critique_max_new_tokens: int = Field(40, gt=0)
    pairs_from: list[Literal["samples", "revisions"]] = Field(
        ["samples", "revisions"],
        description="pairs the feedback model labels: two samples of the SL-CAI model per prompt (RL-CAI), and/or "
        "each prompt's first answer against its final revision",
    )
    pair_temperature: float = Field(1.0, gt=0, description="sampling temperature of the SL-CAI model's pairs")
    min_label_prob: float = Field(0.55, ge=0.5, lt=1, description="pairs the AI is less sure of are not trained on")
    n_eval_harmful: int = Field(60, gt=0, description="harmful evaluation prompts (at most 60)")
    n_eval_benign: int = Field(60, gt=0, description="benign evaluation prompts (at most 60)")
    max_new_tokens: int = Field(40, gt=0, description="answer budget (greedy) when evaluating")
    gen_batch_size: int = Field(32, gt=0, description="prompts per generation batch")
    lora_r: int = Field(16, gt=0)
    lora_alpha: float = Field(32.0, gt=0)
    max_length: int = Field(192, gt=0)
    sft_epochs: float = Field(2.0, gt=0)
    sft_batch_size: int = Field(8, gt=0)
    sft_lr: float = Field(5e-4, gt=0)
    dpo_epochs: float = Field(1.0, gt=0)
    dpo_batch_size: int = Field(8, gt=0)
    dpo_lr: float = Field(2e-4, gt=0)
    dpo_beta: float = Field(0.1, gt=0)
    dpo_rpo_alpha: float = Field(1.0, ge=0)
    rm_epochs: float = Field(2.0, gt=0)
    rm_batch_size: int = Field(16, gt=0)
    rm_lr: float = Field(1e-4, gt=0)
    ppo_from: Literal["sft", "dpo"] = Field("sft", description="PPO's start: the SL-CAI model (RL-CAI) or the DPO one")
    ppo_steps: int = Field(8, gt=0)
    ppo_batch_size: int = Field(16, gt=0)
    ppo_epochs: int = Field(2, gt=0)
    ppo_lr: float = Field(1e-4, gt=0)
    ppo_kl_coef: float = Field(0.05, ge=0)
    ppo_max_new_tokens: int = Field(24, gt=0)
    ppo_temperature: float = Field(0.7, gt=0)
    redteam_rounds: int = Field(3, ge=0, description="red-team rounds against the base and the final model; 0 = none")
    redteam_attacks_per_topic: int = Field(4, gt=0)
    n_samples: int = Field(6, ge=0, description="before/after samples in the report")
    threads: int = Field(1, ge=0, description="torch CPU threads; 0 = auto")
    target_harmful_refusal: float = 0.7
    target_benign_refusal: float = 0.15

    @model_validator(mode="after")
    def _check(self):
        if "ppo" in self.methods and self.ppo_from == "dpo" and "dpo" not in self.methods:
            raise ValueError("ppo_from: dpo needs dpo in methods (or give --ppo-from sft)")
        return self


# --- measurements on the toy world (rlhfkit.toy.experiments) -------------------------------------------------


class DisagreementFigures(Figures):
    personas: list[dict] = Field(description="per persona: held-out labels, pooled and conditioned accuracy, gain")
    mean_gain: float = Field(description="mean over personas of conditioned minus pooled accuracy (points)")
    hidden_context_r2: dict[str, float | None] = Field(description="mean-variance model's r^2: one persona, all")
    policies: list[dict] = Field(description="per persona: its policy's win rates by the persona's own utility")
    wall_seconds: float
    seed: int


class DisagreementConfig(StageConfig):
    """Settings of `python -m rlhfkit.toy.experiments.disagreement` (one seed's folder)."""

    stage: ClassVar[str] = "disagreement"
    figures: ClassVar[type[Figures]] = DisagreementFigures

    output_dir: str | None = Field(None, description="the seed's folder; default runs/disagreement/seed-<seed>")
    seed: Seed = 0
    quick: bool = Field(False, description="tiny budgets everywhere (a smoke run, not a result)")
    pool: Literal["diverse", "demo"] = Field(
        "diverse", description="the five personas: rlhfkit.toy.annotators.DIVERSE_PERSONAS or the demo's PERSONAS"
    )
    one_persona: str = Field("balanced", description="the one-persona pool of the hidden-context comparison")
    annotator_noise: float = Field(0.25, ge=0, lt=0.5, description="label flip rate")
    train_prompts: int = Field(1200, gt=0, description="prompts whose SFT samples are labelled for training")
    eval_prompts: int = Field(300, gt=0, description="held-out prompts; each pair labelled by every persona")
    samples_per_prompt: int = Field(4, ge=2, description="SFT samples per prompt (every pair of them is labelled)")
    rm_steps: int = Field(400, gt=0)
    rm_lr: float = Field(1e-3, gt=0)
    rm_batch_size: int = Field(32, gt=0)
    annotator_dropout: float = Field(0.2, ge=0, lt=1)
    policy_prompts: int = Field(400, ge=0, description="prompts of each persona's rejection sampling (0: no policies)")
    rejection_k: int = Field(8, ge=2)
    policy_eval_prompts: int = Field(500, gt=0, description="held-out prompts the policies are judged on")
    max_new_tokens: int = Field(24, gt=0)
    threads: int = Field(1, ge=0, description="torch threads (0: auto)")

    def budgets(self) -> DisagreementConfig:
        if not self.quick:
            return self
        return self.model_copy(
            update=dict(train_prompts=96, eval_prompts=16, rm_steps=4, rm_batch_size=8, policy_prompts=16,
                        rejection_k=2, policy_eval_prompts=16)
        )  # fmt: skip


class ThumbsFigures(Figures):
    rows: list[dict] = Field(description="SFT and KTO: gold, win rate vs SFT with its interval, KL")
    thumbs: int = Field(description="training thumbs (no pairs)")
    thumbs_up_share: float
    wall_seconds: float
    seed: int


class ThumbsConfig(StageConfig):
    """Settings of `python -m rlhfkit.toy.experiments.thumbs` (one seed's folder): KTO on thumbs only, judged as
    the demo judges (its SFT, prompts, sampling and gold)."""

    stage: ClassVar[str] = "thumbs"
    figures: ClassVar[type[Figures]] = ThumbsFigures

    output_dir: str | None = Field(None, description="the seed's folder; default runs/thumbs/seed-<seed>")
    seed: Seed = 0
    quick: bool = Field(False, description="tiny budgets everywhere (a smoke run, not a result)")
    annotator_noise: float = Field(0.25, ge=0, lt=0.5, description="thumbs flip rate")
    feedback_prompts: int = Field(1200, gt=0, description="prompts whose SFT samples get thumbs (90% train)")
    samples_per_prompt: int = Field(4, ge=1)
    kto_steps: int = Field(200, gt=0)
    kto_lr: float = Field(5e-4, gt=0)
    kto_beta: float = Field(0.1, gt=0)
    eval_prompts: int = Field(500, gt=0)
    max_new_tokens: int = Field(24, gt=0)
    threads: int = Field(1, ge=0, description="torch threads (0: auto)")

    def budgets(self) -> ThumbsConfig:
        if not self.quick:
            return self
        return self.model_copy(update=dict(feedback_prompts=48, kto_steps=4, eval_prompts=16))


# The evaluation experiments (rlhfkit.toy.experiments.overoptimisation, mitigation, length_control) stand beside one
# demo per seed run with the monitor (`rlhfkit demo --seed S --monitor`), which they share and make when missing.
DEMO_DIR = "runs/overopt/seed-{seed}/demo"


class OveroptimisationFigures(Figures):
    start_gold: float
    peak_gold: float
    peak_step: int
    final_gold: float
    alarm_step: int | None
    alarm_reasons: list[str] | None
    kept_step: int | None = Field(description="the check a monitor_stop run keeps (None: no alarm)")
    gold_at_stop: float
    gain_ratio: float | None = Field(description="(gold at stop - start) / (peak - start); None if gold never rose")
    false_alarms: dict[str, bool] = Field(description="alarms on the demo's default PPO, DPO and best-of-16")
    false_alarm_cost: dict[str, dict] = Field(
        {}, description="per alarmed healthy run: the kept check's gold against the end's (alarm_cost)"
    )
    healthy_most_looping: dict[str, float | None] = Field(
        {}, description="per healthy run: the largest share of a check's samples that loop (None: not recorded)"
    )
    curve: dict[int, float] = Field(description="gold of each check's samples, by step")
    monitor_history: list[dict]
    seed: int


class OveroptimisationConfig(StageConfig):
    """Settings of `python -m rlhfkit.toy.experiments.overoptimisation` (one seed's folder): a PPO run made to
    over-optimise (a reward model on few labels, no KL penalty, several times the demo's steps, longer answers)."""

    stage: ClassVar[str] = "overoptimisation"
    figures: ClassVar[type[Figures]] = OveroptimisationFigures
    # the runs are judged again at every call, so the thresholds they are judged by do not change what they compute
    run_only: ClassVar[frozenset[str]] = StageConfig.run_only | {"replay_settings"}

    output_dir: str | None = Field(None, description="the seed's folder; default runs/overoptimisation/seed-<seed>")
    demo_dir: str = Field(DEMO_DIR, description="the seed's demo with --monitor ({seed} filled in; made if missing)")
    seed: Seed = 0
    quick: bool = Field(False, description="tiny budgets everywhere (a smoke run, not a result)")
    few_labels: int = Field(200, gt=0, description="the demo's first comparisons the over-optimised reward model sees")
    rm_steps: int = Field(100, gt=0)
    ppo_steps: int = Field(300, gt=0, description="5x the demo's 60")
    ppo_lr: float = Field(1e-4, gt=0)
    ppo_kl_coef: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(48, gt=0, description="twice the demo's, room to exploit the reward model")
    threads: int = Field(1, ge=0, description="torch threads (0: auto)")
    replay_settings: dict = Field(
        {}, description="monitor thresholds put over every run's own when its checks are replayed, to judge the "
        "same runs by another rule (e.g. {degenerate_share: null}: without the looping alarm)",
    )  # fmt: skip

    def budgets(self) -> OveroptimisationConfig:
        if not self.quick:
            return self
        return self.model_copy(update=dict(few_labels=40, rm_steps=4, ppo_steps=20, max_new_tokens=24))


class MitigationFigures(Figures):
    n: int
    gold: dict[str, float] = Field(description="transform -> gold of best-of-n's choice (expected over subsets)")
    peak_n: dict[str, int]
    curves: dict[str, list[dict]]
    seed: int


class MitigationConfig(StageConfig):
    """Settings of `python -m rlhfkit.toy.experiments.mitigation` (one seed's folder): best-of-N by an ensemble's
    mean against its uncertainty-penalised forms (Coste et al. 2023)."""

    stage: ClassVar[str] = "mitigation"
    figures: ClassVar[type[Figures]] = MitigationFigures

    output_dir: str | None = Field(None, description="the seed's folder; default runs/mitigation/seed-<seed>")
    demo_dir: str = Field(DEMO_DIR, description="the seed's demo with --monitor ({seed} filled in; made if missing)")
    seed: Seed = 0
    quick: bool = Field(False, description="tiny budgets everywhere (a smoke run, not a result)")
    n: int = Field(64, ge=2, description="best-of-N's largest N")
    members: int = Field(4, ge=2, description="reward models in the ensemble, each on a bootstrap resample")
    labels: int | None = Field(
        None, gt=0, description="the demo's first comparisons the ensemble sees (None: all of them; the "
        "over-optimisation experiment's proxy sees 200)"
    )  # fmt: skip
    transforms: list[str] = ["mean", "mean_minus_std:1", "worst"]
    eval_prompts: int = Field(128, gt=0, description="the demo's first held-out prompts (each sampled n times)")
    threads: int = Field(1, ge=0, description="torch threads (0: auto)")

    def budgets(self) -> MitigationConfig:
        if not self.quick:
            return self
        return self.model_copy(update=dict(n=4, members=2, eval_prompts=16))


class LengthControlFigures(Figures):
    rows: dict[str, dict] = Field(description="policy -> raw and LC win rate by the length-biased judge, gold")
    raw_prefers_verbose: bool
    lc_prefers_dpo: bool
    seed: int


class LengthControlConfig(StageConfig):
    """Settings of `python -m rlhfkit.toy.experiments.length_control` (one seed's folder): a verbose policy
    against the demo's DPO, judged by a length-biased judge with and without length control."""

    stage: ClassVar[str] = "length_control"
    figures: ClassVar[type[Figures]] = LengthControlFigures

    output_dir: str | None = Field(None, description="the seed's folder; default runs/length-control/seed-<seed>")
    demo_dir: str = Field(DEMO_DIR, description="the seed's demo with --monitor ({seed} filled in; made if missing)")
    seed: Seed = 0
    quick: bool = Field(False, description="tiny budgets everywhere (a smoke run, not a result)")
    verbose_steps: int = Field(
        150,
        gt=0,
        description="PPO steps on the word count (2.5x the demo's PPO budget: 60 lengthened answers by 6 words)",
    )
    eval_prompts: int = Field(500, gt=0)
    threads: int = Field(1, ge=0, description="torch threads (0: auto)")

    def budgets(self) -> LengthControlConfig:
        if not self.quick:
            return self
        return self.model_copy(update=dict(verbose_steps=2, eval_prompts=16))
