"""Typed configs: the machinery (``base``), the shared parts (``parts``), each stage's settings
(``stages``, ``pipelines``). Importing this package loads pydantic and PyYAML, never torch."""

from rlhfkit.config.base import ConfigError, Figures, StageConfig, load_config, parse_overrides
from rlhfkit.config.parts import DataPart, ModelPart, OptimPart, RewardPart, RunPart, SamplingPart, describe_settings

__all__ = [
    "ConfigError",
    "DataPart",
    "Figures",
    "ModelPart",
    "OptimPart",
    "RewardPart",
    "RunPart",
    "SamplingPart",
    "StageConfig",
    "describe_settings",
    "load_config",
    "parse_overrides",
]
