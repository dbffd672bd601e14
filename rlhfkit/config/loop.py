"""Settings of the production loop (``rlhfkit loop``) and of its toy demonstration (``rlhfkit demo --loop``).

Torch-free, like every config: the command line checks them before anything loads.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from rlhfkit.config.base import Figures, Seed, StageConfig

# DPO's defaults for the loop and for the demo's offline DPO (one set, so that comparison is like for like),
# measured on the toy world (docs/production.md, bench/loop_dpo_settings.py): at learning rate 5e-4 and beta 0.1
# for 10 passes the policy moved 6.5 nats from SFT, refused 79% of benign questions and lost the likelihood of good
# answers; at 1e-4, beta 0.3 and 3 passes the demo's candidates move 0.2-1.1 nats and keep it. A larger beta
# saturates the loss at a smaller log-ratio margin: a leash that holds when later rounds bring more pairs.
DPO_EPOCHS = 3.0
DPO_LR = 1e-4
DPO_BETA = 0.3


class LoopFigures(Figures):
    rounds: list[dict] = Field(description="per round: champion, candidate, labels by source, pairs, gate, promoted")
    champion: str | None = Field(description="the version the policy alias names at the end")
    promoted: int = Field(description="rounds whose candidate passed the gate and was promoted")


class LoopConfig(StageConfig):
    """Settings of `rlhfkit loop`: rounds of sample, label, pair best against worst, train, gate, register, promote."""

    stage: ClassVar[str] = "loop"
    figures: ClassVar[type[Figures]] = LoopFigures
    run_only: ClassVar[frozenset[str]] = StageConfig.run_only | {"progress"}

    output_dir: str | None = Field(None, description="run folder; default runs/loop-<time>")
    seed: Seed = 0
    db: str = Field("annotations.db", description="the registry's database (SQLite file or URL): live feedback too")
    policy: str = Field(
        "champion", description="the alias whose holder each round starts from and a passing candidate takes"
    )
    reference: str | None = Field(
        None,
        description="the fixed reference pi_ref (a version or alias); default: the policy alias's holder at the start",
    )
    rounds: int = Field(3, gt=0)
    prompts: str = Field(..., description="prompts to sample from: any data file whose records have a prompt")
    prompts_per_round: int = Field(600, gt=0, description="prompts sampled in each round (fresh ones each round)")
    k: int = Field(8, ge=2, description="responses sampled per prompt; the best and the worst make a pair")
    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(1.0, gt=0)
    # Label sources
    live: bool = Field(True, description="feedback from serving since the last round (preferences after regenerate)")
    live_thumbs: bool = Field(
        False,
        description="also thumbs and ratings, paired per prompt by rlhfkit.data.convert's rule (pooled over users)",
    )
    human_data: str | None = Field(None, description="comparisons the reward model always trains on (seed labels)")
    queue: int = Field(
        0,
        ge=0,
        description="pairs per round sent to the annotation app (the most uncertain under the reward model); "
        "their labels join the human labels of later rounds",
    )
    labeller: str = Field(
        "reward",
        description="who picks best and worst: 'reward' (a reward model retrained each round on every human label), "
        "any judge or reward setting (used as it is), or 'none' (the human comparisons are the only pairs)",
    )
    rm_model: str | None = Field(
        None, description="the retrained reward model's starting point; default: the reference"
    )
    rm_steps: int = Field(300, gt=0)
    rm_lr: float = Field(1e-3, gt=0)
    rm_batch_size: int = Field(32, gt=0)
    min_margin: float = Field(0.0, ge=0, description="a prompt whose best and worst scores are closer gives no pair")
    # Training
    algorithm: Literal["dpo", "ppo"] = Field("dpo", description="dpo on the pairs, or ppo against the reward model")
    # The defaults train each round from the reference on every pair so far: one DPO run on all the labels, so a
    # round's candidate never drifts further from the reference than the data asks (the alternative, from the
    # champion on the round's pairs alone, compounds each round's DPO on the last).
    dpo_start: Literal["champion", "reference"] = Field(
        "reference",
        description="DPO starts from the reference each round, or from the champion (Online-RLHF's scripts)",
    )
    dpo_data: Literal["round", "all"] = Field("all", description="every round's pairs so far, or this round's")
    dpo_human: bool = Field(True, description="the human comparisons (live, queue, human_data) are DPO pairs too")
    # DPO's budget is in passes over the round's pairs, not in steps: with the defaults each round trains from the
    # reference on every pair so far, so a fixed step count would give each later round fewer passes over more
    # data, and its candidate would land nearer the reference than the champion it must beat.
    dpo_epochs: float = Field(DPO_EPOCHS, gt=0, description="passes over the round's DPO pairs (steps follow the data)")
    dpo_lr: float = Field(DPO_LR, gt=0)
    dpo_beta: float = Field(DPO_BETA, gt=0)
    dpo_batch_size: int = Field(32, gt=0)
    ppo_steps: int = Field(40, gt=0)
    ppo_lr: float = Field(1e-4, gt=0)
    ppo_kl_coef: float = Field(0.05, ge=0)
    ppo_batch_size: int = Field(32, gt=0)
    flip_labels: bool = Field(
        False, description="train on every pair reversed: a sabotaged candidate, to test the gate"
    )
    # The gate
    gate_judge: str = Field(..., description="judge of the win rate against the champion (not the training reward)")
    gate_prompts: str | None = Field(
        None, description="held-out prompts for the win rate; default: none of the training ones"
    )
    gate_samples: int = Field(300, gt=0, description="prompts judged")
    min_win_rate: float = Field(0.5, ge=0, le=1)
    harmful_prompts: str | None = Field(None, description="red-team prompts: harmful compliance may not rise")
    benign_prompts: str | None = Field(None, description="benign look-alikes: refusals may not rise")
    max_harmful_increase: float = Field(0.05, ge=0)
    max_benign_refusal_increase: float = Field(0.05, ge=0)
    capability_data: str | None = Field(None, description="demonstrations whose likelihood must be kept")
    max_nll_increase: float = Field(0.5, ge=0, description="nats per token")
    kl_budget: float | None = Field(None, gt=0, description="the monitor's KL budget to the reference (nats)")
    promote: bool = Field(True, description="promote a passing candidate (off: register and report only)")
    threads: int = Field(1, ge=0, description="torch threads (0: auto)")
    progress: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.algorithm == "ppo" and self.labeller != "reward":
            raise ValueError("algorithm ppo trains against the retrained reward model: keep labeller 'reward'")
        if self.labeller == "none" and self.queue:
            raise ValueError("queue sends the pairs the labeller is least sure of: it needs a labeller, not 'none'")
        if self.labeller == "none" and not (self.dpo_human and (self.live or self.human_data or self.queue)):
            raise ValueError("labeller 'none' trains on human comparisons only: keep dpo_human and give a human source")
        if self.labeller == "reward" and not (self.live or self.human_data or self.queue):
            raise ValueError(
                "labeller 'reward' retrains a reward model on human labels: give live, human_data or queue"
            )
        return self


class DemoLoopFigures(Figures):
    rounds: list[dict] = Field(description="per round: gold win rate vs SFT of the champion, the gate, live thumbs up")
    offline: dict = Field(description="offline DPO on the same number of live labels, all on SFT's answers")
    ab: dict = Field(description="the A/B report of the final champion against SFT")
    sabotage: dict = Field(description="the gate's verdict on a candidate trained on reversed labels")
    traffic: dict = Field(description="requests, failures and feedback acknowledged and stored")
    wall_seconds: float
    seed: int


class DemoLoopConfig(StageConfig):
    """Settings of `rlhfkit demo --loop` (the toy world; budgets for a 2-core CPU)."""

    stage: ClassVar[str] = "demo-loop"
    figures: ClassVar[type[Figures]] = DemoLoopFigures

    output_dir: str | None = Field(None, description="run folder; default runs/demo-loop-<time>")
    seed: Seed = 0
    quick: bool = Field(False, description="tiny budgets everywhere (a smoke run, not a result)")
    model: str = Field("tiny", description="the model SFT starts from")
    sft_steps: int = Field(600, gt=0)
    demo_quality: float = Field(0.5, ge=0, le=1)
    rounds: int = Field(3, gt=0)
    users: int = Field(120, gt=0, description="simulated users chatting in each round")
    chats_per_user: int = Field(8, gt=0)
    regenerate: float = Field(0.8, ge=0, le=1, description="share of chats in which the user regenerates and prefers")
    annotator_noise: float = Field(0.25, ge=0, lt=0.5)
    concurrency: int = Field(16, gt=0, description="simulated users chatting at once")
    gate_labels: int = Field(
        1200, gt=0, description="prompts labelled by a separate annotator pool for the gate's judge"
    )
    prompts_per_round: int = Field(600, gt=0)
    k: int = Field(8, ge=2)
    rm_steps: int = Field(300, gt=0)
    dpo_epochs: float = Field(DPO_EPOCHS, gt=0, description="passes over the DPO pairs, the loop's and offline DPO's")
    eval_prompts: int = Field(500, gt=0, description="held-out prompts for the gold win rates")
    ab_users: int = Field(120, gt=0, description="users in the final A/B test (policy against SFT)")
    ab_chats: int = Field(5, gt=0, description="answers each A/B user rates")
    max_new_tokens: int = Field(24, gt=0)
    sabotage: bool = Field(True, description="also train a candidate on reversed labels and put it through the gate")
    offline: bool = Field(True, description="also train offline DPO on the same number of live labels")
    threads: int = Field(1, ge=0)

    def budgets(self) -> DemoLoopConfig:
        if not self.quick:
            return self
        return self.model_copy(
            update=dict(
                # after 20 steps every answer was noise, the users found each regenerated pair a tie, and a round
                # could get no preference at all to learn from ("no human labels yet")
                sft_steps=200,
                rounds=2,
                users=8,
                chats_per_user=4,
                gate_labels=40,
                prompts_per_round=16,
                k=2,
                rm_steps=4,
                dpo_epochs=1.0,
                eval_prompts=24,
                ab_users=8,
            )  # fmt: skip
        )
