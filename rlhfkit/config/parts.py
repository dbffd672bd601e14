"""The shared parts every stage config is assembled from: a setting has one name, one default and one
meaning in every stage that has it (a stage may override a default, with its reason, in its own class).
``describe_settings`` writes a stage's ``--help`` table grouped by these parts.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, Field, field_validator

from rlhfkit.config.base import Seed, StageConfig, takes_list

MODEL_CHOICES = "tiny | tiny-4m | smollm2-135m-instruct | a .gguf file | a run folder | a Hugging Face folder or id"
REWARD_CHOICES = (
    "a reward-model run folder (an annotator-conditioned one as FOLDER@annotator=NAME) | a Hugging Face "
    "sequence-classification folder | module:function | http(s)://host:port/path | several of these, "
    "comma-separated (an ensemble: mean and spread)"
)
# How a reward with a spread (an ensemble's members, a distributional reward model's variance) becomes one number
# per response; the formulas are rlhfkit.losses.transformed_reward's. name -> what its parameter is (None: none).
REWARD_TRANSFORM_PARAMS: dict[str, str | None] = {
    "mean": None,
    "mean_minus_std": "lambda >= 0",
    "uncertainty_weighted": "lambda >= 0",
    "quantile": "q in (0, 1)",
    "worst": None,
}
REWARD_TRANSFORM_CHOICES = "mean | mean_minus_std:LAMBDA | uncertainty_weighted:LAMBDA | quantile:Q | worst"


def parse_reward_transform(text: str, setting: str = "reward_transform") -> tuple[str, float | None]:
    """``"quantile:0.1"`` -> ``("quantile", 0.1)``; ``"mean"`` -> ``("mean", None)``. Refuses unknown names, a
    missing or extra parameter, and values out of range, naming the setting and the choices."""
    name, _, value = str(text).strip().partition(":")
    if name not in REWARD_TRANSFORM_PARAMS:
        raise ValueError(f"setting '{setting}': unknown transform '{name}'; choices: {REWARD_TRANSFORM_CHOICES}")
    wants = REWARD_TRANSFORM_PARAMS[name]
    if wants is None:
        if value:
            raise ValueError(f"setting '{setting}': '{name}' takes no parameter, got '{text}'")
        return name, None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(
            f"setting '{setting}': '{name}' needs a number ({name}:X with {wants}), got '{text}'"
        ) from None
    if (name == "quantile" and not 0 < number < 1) or (name != "quantile" and number < 0):
        raise ValueError(f"setting '{setting}': '{name}' needs {wants}, got {number}")
    return name, number


class ModelPart(StageConfig):
    model: str = Field("tiny", description=MODEL_CHOICES)
    dtype: Literal["auto", "float32", "bf16-mixed", "bfloat16", "float16"] = Field(
        "auto",
        description="bf16-mixed: float32 weights, bfloat16 autocast (fast on CPUs with AMX too; on CPUs without "
        "bf16 instructions emulated and slower than float32, and the stage says so); auto: bf16-mixed on GPU, "
        "float32 on CPU",
    )
    chat_template: str | None = Field(None, description="Jinja chat template; default: the model's own, else ChatML")
    lora: bool = Field(False, description="train LoRA adapters (peft) instead of all weights")
    lora_r: int = Field(16, gt=0, description="LoRA rank")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA path")
    lora_target_modules: list[str] | str = Field(
        "all-linear", description="modules that get adapters: all-linear, or names (q_proj, [q_proj, v_proj])"
    )
    merge_lora: bool = Field(True, description="merge adapters into the weights when saving the final model")

    @field_validator("lora_target_modules")
    @classmethod
    def _module_names(cls, value):
        # one name given as a string is a list of one: peft reads a string as a regex that must match the whole
        # module path, so "q_proj" matched nothing and failed after the model had loaded
        return [value] if isinstance(value, str) and value != "all-linear" else value


class DataPart(StageConfig):
    data: str = Field(
        ...,
        description="training data: a .jsonl/.json/.parquet file or a datasets folder; "
        "on the command line 'toy' names the toy world's built-in set",
    )
    eval_data: str | None = Field(None, description="held-out data; default: eval_fraction of the training data")
    eval_fraction: float = Field(
        0.05, ge=0, lt=1, description="share of the training data held out when eval_data is unset"
    )
    max_length: int = Field(512, gt=0, description="longest sequence in tokens; longer ones are truncated from the end")
    skip_invalid: bool = Field(
        False, description="skip bad rows (counted and listed in invalid_rows.jsonl) instead of failing"
    )


class RewardPart(StageConfig):
    reward: str = Field(..., description=REWARD_CHOICES)
    reward_batch_size: int = Field(32, gt=0, description="responses per reward-model forward")
    reward_transform: str = Field(
        "mean",
        description="one number from a reward with a spread (ensemble members, or a mean-variance reward "
        f"model): {REWARD_TRANSFORM_CHOICES} (e.g. quantile:0.1, the lower decile)",
    )

    @field_validator("reward_transform")
    @classmethod
    def _check_transform(cls, value: str) -> str:
        parse_reward_transform(value)
        return value.strip()


class SamplingPart(StageConfig):
    """How responses are sampled, the same in every stage that samples (PPO, best-of-N, rejection sampling,
    generation, evaluation): the sampler reads these fields."""

    max_new_tokens: int = Field(48, gt=0, description="response budget in tokens")
    temperature: float = Field(
        1.0, gt=0, description="sampling temperature (PPO also divides the logits by it in the loss)"
    )
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling; 1 = off")
    top_k: int = Field(0, ge=0, description="top-k sampling; 0 = off")
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        [],
        description="stop strings: the response is cut before them (counts as an end); on the command line one "
        "that starts with '[' goes quoted inside a list, --stop \"['[/INST]']\" (a bare [/INST] is YAML's list of /INST)",
    )
    # Huang et al. 2024 ("The N+ implementation details of RLHF with PPO"): a response that never ends gets a
    # fixed low score instead of the reward's, so the policy cannot gain by rambling past its budget.
    missing_eos_penalty: float | None = Field(
        -1.0, description="score of a response that never ended (no EOS or stop string); null keeps the reward's"
    )
    rollout_backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers: the built-in sampler; vllm: GPU only, optional extra"
    )
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate",
        description="colocate: a vLLM engine inside each training process; server: a separate `rlhfkit vllm-serve`",
    )
    vllm_server: str = Field("http://127.0.0.1:8000", description="the vllm-serve address (vllm_mode server)")
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="share of each GPU a colocated engine may take (weights and KV cache)"
    )
    vllm_tensor_parallel_size: int = Field(
        1, gt=0, description="GPUs per colocated engine (consecutive training processes share one engine)"
    )
    vllm_sleep: bool = Field(
        False, description="colocated engine frees its KV cache and offloads its weights between rollouts"
    )
    vllm_lora: Literal["merged", "adapter"] = Field(
        "merged", description="with --lora, push merged weights, or the adapter alone (vLLM's LoRA support)"
    )
    vllm_sync_bucket_mb: int = Field(256, gt=0, description="weights are pushed in buckets of about this many MB")
    vllm_sync_timeout: float = Field(
        300.0, gt=0, description="seconds a weight push or a server request may take before it raises"
    )

    def sampling(self) -> SamplingPart:
        """Just the sampling settings of a stage config (what a sampler is built from)."""
        return SamplingPart(**{name: getattr(self, name) for name in SamplingPart.model_fields})


class OptimPart(StageConfig):
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of steps with linear warm-up")
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm to this; null to disable")


class RunPart(StageConfig):
    # Settings that change how a run is watched or kept, not what it computes: a resumed run may change them.
    run_only: ClassVar[frozenset[str]] = StageConfig.run_only | {
        "resume",
        "report_to",
        "log_every",
        "eval_every",
        "save_every",
        "keep_checkpoints",
    }

    output_dir: str | None = Field(None, description="run folder; default runs/<stage>-<time>")
    seed: Seed = 0
    batch_size: int = Field(
        16, gt=0, description="examples per optimiser step, all processes together (each takes its share)"
    )
    grad_accum: int | None = Field(
        None,
        gt=0,
        description="micro-batches per optimiser step on each process (micro-batch = batch_size / processes / "
        "grad_accum); default: micro-batches of 8 examples per CPU process (a fraction of the activations in "
        "memory), fewer where a large model's activations would pass 2 GiB, the whole share on a GPU",
    )
    epochs: float = Field(1.0, gt=0, description="passes over the training data (ignored when max_steps is set)")
    max_steps: int | None = Field(None, gt=0, description="optimiser steps; overrides epochs")
    log_every: int = Field(10, gt=0, description="steps between logged metrics")
    eval_every: int | None = Field(
        None, gt=0, description="steps between held-out evaluations; default: at the end only"
    )
    save_every: int | None = Field(None, gt=0, description="steps between checkpoints; default: only on interrupt")
    keep_checkpoints: int = Field(2, gt=0, description="how many recent checkpoints to keep")
    resume: bool = Field(True, description="continue from the latest checkpoint in output_dir if there is one")
    report_to: list[Literal["tensorboard", "jsonl"]] = Field(["tensorboard", "jsonl"], description="metric sinks")
    progress: bool = Field(True, description="show a progress bar")


# The order of the groups in `--help`: what to train and on what first, the knobs of the stage itself next,
# then the optimiser and the run's bookkeeping.
HELP_GROUPS = [("model", ModelPart), ("data", DataPart), ("reward", RewardPart), ("sampling", SamplingPart)]
HELP_GROUPS_LAST = [("optimiser", OptimPart), ("run", RunPart)]


def _describe_field(name: str, field) -> str:
    ann = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
    if takes_list(field.annotation):
        ann = f"{ann}: one value, or [a, b]"
    if get_origin(field.annotation) is Literal:
        ann = " | ".join(str(choice) for choice in get_args(field.annotation))
    if field.is_required():
        default = "required"
    else:
        default = "default " + ("null" if field.default is None else str(field.default))
    desc = f" {field.description}" if field.description else ""
    return f"--{name.replace('_', '-')} ({ann}, {default}){desc}"


def describe_settings(cls: type[BaseModel]) -> str:
    """The settings table shown by ``--help``, grouped: model, data, reward and sampling settings first, then the
    stage's own, then the optimiser's and the run's; each with its type, default and meaning."""
    groups = HELP_GROUPS + [("this stage", None)] + HELP_GROUPS_LAST
    owner = {}
    for name in cls.model_fields:
        part = next((title for title, part in groups if part is not None and name in part.model_fields), "this stage")
        owner[name] = part
    sections = []
    for title, _ in groups:
        rows = [_describe_field(name, f) for name, f in cls.model_fields.items() if owner[name] == title]
        if rows:
            sections.append(f"{title.capitalize()} settings:\n\n" + "\n\n".join(rows))
    return "\n\n".join(sections)
