"""Typed configs for every stage: defaults in code, then a YAML file, then ``--key value`` flags.

Each stage's config is one flat pydantic model assembled from shared parts (model, data, optimiser,
run), so a setting has one name everywhere: ``lr`` in YAML, ``--lr`` on the command line,
``SFTConfig(lr=...)`` in Python. Unknown settings are refused with the closest known name; ill-typed
values are refused with the setting's name and the expected type.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

C = TypeVar("C", bound="StageConfig")


class ConfigError(ValueError):
    """A bad setting; the message names it."""


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ModelPart(StageConfig):
    model: str = Field(
        "tiny", description="tiny | tiny-4m | smollm2-135m-instruct | a run folder | a HF folder or id | a .gguf file"
    )
    dtype: Literal["auto", "float32", "bf16-mixed", "bfloat16", "float16"] = Field(
        "auto",
        description="bf16-mixed: float32 weights, bfloat16 autocast (fast on CPUs with AMX too); auto: bf16-mixed on GPU, float32 on CPU",
    )
    chat_template: str | None = Field(None, description="Jinja chat template; default: the model's own, else ChatML")
    lora: bool = Field(False, description="train LoRA adapters (peft) instead of all weights")
    lora_r: int = Field(16, gt=0, description="LoRA rank")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA path")
    lora_target_modules: list[str] | str = Field("all-linear", description="modules that get adapters")
    merge_lora: bool = Field(True, description="merge adapters into the weights when saving the final model")


class DataPart(StageConfig):
    data: str = Field("toy", description="training data: a .jsonl/.json/.parquet file, a datasets folder, or 'toy'")
    eval_data: str | None = Field(None, description="held-out data; default: eval_fraction of the training data")
    eval_fraction: float = Field(
        0.05, ge=0, lt=1, description="share of the training data held out when eval_data is unset"
    )
    max_length: int = Field(512, gt=0, description="longest sequence in tokens; longer ones are truncated from the end")
    skip_invalid: bool = Field(
        False, description="skip bad rows (counted and listed in invalid_rows.jsonl) instead of failing"
    )


class OptimPart(StageConfig):
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of steps with linear warm-up")
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(1.0, description="clip the gradient norm to this; null to disable")


class RunPart(StageConfig):
    output_dir: str | None = Field(None, description="run folder; default runs/<stage>-<time>")
    seed: int = 0
    batch_size: int = Field(16, gt=0, description="examples per optimiser step on each process, before accumulation")
    grad_accum: int = Field(
        1, gt=0, description="micro-batches per optimiser step (micro-batch = batch_size / grad_accum)"
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


def _coerce(value: str) -> Any:
    """Flags arrive as strings; lists and mappings are written in YAML flow style (``[a, b]``)."""
    v = value.strip()
    if v[:1] in "[{" or v in ("null", "~"):
        return yaml.safe_load(v)
    return value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``['--lr', '1e-4', '--lora', '--epochs=2']`` -> ``{'lr': '1e-4', 'lora': True, 'epochs': '2'}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}'; settings are given as --name value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            elif key.startswith("no_"):
                key, value = key[3:], "false"
            else:
                value = "true"
        out[key] = _coerce(value)
        i += 1
    return out


def _explain(cls: type[BaseModel], err: ValidationError, source: dict[str, Any]) -> str:
    lines = []
    for e in err.errors():
        name = ".".join(str(p) for p in e["loc"]) or "(config)"
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(name, list(cls.model_fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"unknown setting '{name}'{hint}")
        else:
            got = source.get(str(e["loc"][0])) if e["loc"] else None
            lines.append(f"setting '{name}': {e['msg']} (got {got!r})")
    return "; ".join(lines)


def load_config(cls: type[C], config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults, then ``config_file`` (YAML), then ``overrides``; every value validated by ``cls``."""
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of setting: value")
        values.update(loaded)
    values.update(overrides or {})
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        where = f"{config_file}: " if config_file else ""
        raise ConfigError(where + _explain(cls, e, values)) from None


def describe_settings(cls: type[BaseModel]) -> str:
    """The settings table shown by ``--help``: name, type, default, description (from the config class)."""
    rows = []
    for name, field in cls.model_fields.items():
        ann = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        if get_origin(field.annotation) is Literal:
            ann = " | ".join(str(choice) for choice in get_args(field.annotation))
        default = field.default if field.default is not None else "null"
        desc = f" {field.description}" if field.description else ""
        rows.append(f"--{name.replace('_', '-')} ({ann}, default {default}){desc}")
    return "\n\n".join(rows)
