"""The config machinery: defaults in code, then a YAML file, then ``--key value`` flags.

Each stage's config is one flat pydantic model assembled from shared parts (``rlhfkit.config.parts``), so a
setting has one name everywhere: ``lr`` in YAML, ``--lr`` on the command line, ``SFTConfig(lr=...)`` in
Python. Unknown settings are refused with the closest known name; ill-typed values are refused with the
setting's name and the expected type. Nothing here imports torch: the CLI builds and checks configs
before any model is loaded.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="StageConfig")


class ConfigError(ValueError):
    """A bad setting; the message names it."""


class StageConfig(BaseModel):
    # defer_build: a config class costs nothing until first used, so the command line starts fast.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), defer_build=True)
    # Settings that do not change what a run computes (where it lives, how it is shown): a rerun or a resume
    # may change them freely. Every other setting is part of the run's identity (``settings_hash``).
    run_only: ClassVar[frozenset[str]] = frozenset({"output_dir", "threads", "progress", "verbose"})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def settings(self) -> dict[str, Any]:
        """The settings that define what this run computes (run-only ones left out), as plain JSON values."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.run_only}

    def settings_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]

    def changed_settings(self, saved: dict[str, Any]) -> list[str]:
        """``name: saved -> now`` for every setting that differs from ``saved`` (a config.yaml written
        earlier). A setting missing from ``saved`` (a folder written by an older version) counts as its default."""
        now = self.settings()
        defaults = {k: f.default for k, f in type(self).model_fields.items() if not f.is_required()}
        changed = []
        for name in sorted(now):
            before = saved.get(name, defaults.get(name))
            if before != now[name]:
                changed.append(f"{name}: {before!r} -> {now[name]!r}")
        return changed


class Figures(BaseModel):
    """The figures a stage reports in its run card, under a fixed schema per stage (one subclass each).
    Every figure may be missing (a stage without held-out data has no held-out loss)."""

    model_config = ConfigDict(extra="forbid")


def _coerce(value: str) -> Any:
    """Flags arrive as strings; lists and mappings are written in YAML flow style (``[a, b]``)."""
    v = value.strip()
    if v[:1] in "[{" or v in ("null", "~"):
        return yaml.safe_load(v)
    return value


def takes_list(annotation: Any) -> bool:
    """A list setting that takes no bare string as well (``lora_target_modules: list[str] | str`` does)."""
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        options = get_args(annotation)
        return str not in options and any(takes_list(a) for a in options)
    return origin is list


def _one_item_lists(cls: type[BaseModel], overrides: dict[str, Any]) -> dict[str, Any]:
    """A bare flag value for a list setting is a one-item list (``--models runs/dpo-1``, ``--stop END``); several
    items are written in YAML flow style (``--models '[runs/dpo-1, runs/ppo-1]'``)."""
    fields = cls.model_fields
    return {
        name: [value] if isinstance(value, str) and name in fields and takes_list(fields[name].annotation) else value
        for name, value in overrides.items()
    }


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


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's value; a file that is missing, unreadable, not UTF-8 or not YAML is a ``ConfigError`` naming
    it (``what`` says which file it was meant to be: "config file", "setting 'seeds'")."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except OSError as e:  # a folder, no permission
        raise ConfigError(f"{what}: {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def load_config(cls: type[C], config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults, then ``config_file`` (YAML), then ``overrides``; every value validated by ``cls``."""
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        loaded = read_yaml(path, "config file") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of setting: value")
        values.update(loaded)
    values.update(_one_item_lists(cls, overrides or {}))
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        where = f"{config_file}: " if config_file else ""
        raise ConfigError(where + _explain(cls, e, values)) from None
