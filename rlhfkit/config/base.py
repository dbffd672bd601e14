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
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

C = TypeVar("C", bound="StageConfig")

Seed = Annotated[int, Field(ge=0, lt=2**32)]  # every seed setting: numpy's and torch's range


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


def _takes(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a setting's type takes a value of one of ``kinds`` (through unions and ``Optional``)."""
    if annotation is Any:
        return True
    if get_origin(annotation) in (Union, UnionType):
        return any(_takes(a, kinds) for a in get_args(annotation))
    origin = get_origin(annotation) or annotation
    return isinstance(origin, type) and issubclass(origin, kinds)


def takes_list(annotation: Any) -> bool:
    """A list setting that takes no bare string as well (``lora_target_modules: list[str] | str`` does)."""
    return _takes(annotation, (list,)) and not _takes(annotation, (str,))


def _coerce(cls: type[BaseModel], name: str, value: Any) -> Any:
    """A flag's string as its setting takes it: ``null`` unsets it; where the setting takes a list or a mapping,
    YAML flow style (``[a, b]``, ``{k: v}``) and, for a list, one bare value as a one-item list. Any other text is
    kept as given (a chat template may start with ``{%``); pydantic converts numbers and booleans."""
    field = cls.model_fields.get(name)
    if not isinstance(value, str) or field is None:  # an unknown setting is refused by name later
        return value
    text = value.strip()
    if text in ("null", "~"):
        return None
    if text[:1] in "[{" and _takes(field.annotation, (list, dict, BaseModel)):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not valid YAML"
            raise ConfigError(f"setting '{name}': {problem} (lists are written [a, b], mappings {{k: v}})") from None
    return [value] if takes_list(field.annotation) else value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``['--lr', '1e-4', '--lora', '--epochs=2']`` -> ``{'lr': '1e-4', 'lora': 'true', 'epochs': '2'}``: strings,
    which ``load_config`` reads as each setting's type takes them."""
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
        out[key] = value
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
        elif not e["loc"]:  # a check across settings: its message names them
            lines.append(e["msg"].removeprefix("Value error, "))
        else:
            got = source.get(str(e["loc"][0]))
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
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        at = f" at column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e}{at})") from None


def load_config(cls: type[C], config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults, then ``config_file`` (YAML), then ``overrides``; every value validated by ``cls``."""
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        loaded = read_yaml(path, "config file") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of setting: value")
        values.update(loaded)
    values.update({name: _coerce(cls, name, value) for name, value in (overrides or {}).items()})
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        where = f"{config_file}: " if config_file else ""
        raise ConfigError(where + _explain(cls, e, values)) from None
