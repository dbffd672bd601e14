"""Run folders: every stage leaves one behind, self-describing, and the next stage takes it as its input.

```
<run>/config.yaml        the resolved config the stage ran with
<run>/card.json          the run card (``RunCard``): id, stage, parents, data hashes, settings hash, finished, figures
<run>/metrics.jsonl      one JSON object per logged step
<run>/tb/                TensorBoard events
<run>/checkpoints/step-N trainer state for exact resume
<run>/final/             the final model in Hugging Face format
<run>/invalid_rows.jsonl rows skipped with --skip-invalid
```

A folder appears only once its stage has started for real (``RunFolder.start``, after the data and models
loaded), so a failed start leaves nothing behind. It is finished when its card says so
(``RunFolder.is_finished``, the one definition every stage and pipeline uses). A finished folder is never
written again; an unfinished one is resumed only with the settings it was started with. Cards written
before the card had an id and a finished mark still load (``RunCard.read``).

While a stage runs, ``MetricsLogger`` writes its figures into the folder and ``Progress`` shows its bar.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from rlhfkit.config.base import Figures, StageConfig
from rlhfkit.data.io import one_line

CARD_VERSION = 2


class Parent(BaseModel):
    """Something a run read: a model, a reward, a reference. ``id`` is set when it was another run."""

    role: str
    path: str
    id: str | None = None


class DataRef(BaseModel):
    path: str | None
    sha256_16: str | None = None


class RunCard(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    stage: str
    created: str
    finished: bool = False
    finished_at: str | None = None
    parents: list[Parent] = []
    data: dict[str, DataRef] = {}
    settings_hash: str | None = None
    git_commit: str | None = None
    versions: dict[str, str | None] = {}
    figures: dict[str, Any] = {}
    card_version: int = CARD_VERSION

    @classmethod
    def read(cls, folder: str | Path) -> RunCard | None:
        """The card of ``folder``, or None when it has none. A card of the first version (no id, no finished
        mark, parents as plain strings) was written only when its run had finished, and is read as such."""
        path = Path(folder) / "card.json"
        if not path.exists():
            return None
        try:
            return cls._from_raw(folder, json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, AttributeError) as e:  # malformed JSON, not a card, a card of other fields
            detail = one_line(e)[:300]
            raise ValueError(
                f"{path}: not a run card rlhfkit can read ({detail}); move the folder aside or give another folder"
            ) from None

    @classmethod
    def _from_raw(cls, folder: str | Path, raw: dict) -> RunCard:
        if "card_version" not in raw:
            raw = {
                **raw,
                "id": f"{raw.get('stage', 'run')}-{stable_id(Path(folder))}",
                "finished": True,
                "parents": [parent_of("input", p) for p in raw.get("parents", []) if isinstance(p, str)],
            }
        return cls.model_validate(raw)

    def write(self, folder: Path) -> None:
        tmp = folder / "card.json.partial"
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(folder / "card.json")  # a reader never sees half a card


def stable_id(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]


def file_hash(path: str | Path) -> str | None:
    path = Path(path)
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():  # each file's name and size first: moving bytes between files or renaming one changes it
            h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\0".encode())
        with p.open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def parent_of(role: str, spec: str) -> Parent:
    """A parent entry for a model or reward setting: a run folder is named by its card's id too."""
    path = spec[3:] if spec.startswith("rm:") else spec
    card = RunCard.read(path) if Path(path).is_dir() else None
    return Parent(role=role, path=spec, id=card.id if card else None)


class RunFolder:
    def __init__(self, path: str | Path, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self.config: StageConfig | None = None
        self.stage: str | None = None

    @classmethod
    def open(cls, stage: str, config: StageConfig, *, is_main: bool = True) -> RunFolder:
        """The run folder named by ``config.output_dir`` (default ``runs/<stage>-<time>``), checked but not yet
        written: a folder holding a finished run is refused, and so is one started with other settings (each
        changed setting named), before any model is loaded."""
        path = Path(getattr(config, "output_dir", None) or f"runs/{stage}-{time.strftime('%Y%m%d-%H%M%S')}")
        run = cls(path, is_main)
        run.config, run.stage = config, stage
        if run.is_finished():
            raise FileExistsError(f"{path} already holds a finished {stage} run; give another --output-dir")
        run.refuse_other_settings()
        return run

    def refuse_other_settings(self) -> None:
        from rlhfkit.config.base import read_yaml

        saved_path = self.path / "config.yaml"
        if self.config is None or not saved_path.exists():
            return
        saved = read_yaml(saved_path, "the run folder's config") or {}
        if not isinstance(saved, dict):
            raise ValueError(f"{saved_path}: not the settings of a run (a mapping of setting: value)")
        changed = self.config.changed_settings(saved)
        if changed:
            raise ValueError(
                f"{saved_path}: this run folder was started with other settings ({'; '.join(changed)}); resuming "
                "would mix the two. Rerun with the same settings, give another --output-dir, or delete the folder."
            )

    def start(self, parents: list[Parent] = (), data: dict[str, str | None] | None = None) -> None:
        """Create the folder (main process only) with the config and an unfinished card; the card keeps the id it
        was given when the run first started, so a resumed run is the same run."""
        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(self.config.to_yaml())
        old = self.card()
        card = RunCard(
            id=old.id if old else f"{self.stage}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}",
            stage=self.stage,
            created=old.created if old else time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            parents=list(parents),
            data={name: DataRef(path=p, sha256_16=file_hash(p) if p else None) for name, p in (data or {}).items()},
            settings_hash=self.config.settings_hash(),
            git_commit=git_commit(),
            versions=_versions(),
        )
        card.write(self.path)

    def finish(self, figures: Figures | dict) -> RunCard | None:
        """Mark the run finished with its figures (validated by the stage's schema); the card, on the main process."""
        if isinstance(figures, dict):
            figures = type(self.config).figures.model_validate(figures)
        if not self.is_main:
            return None
        card = self.card()
        card.figures = figures.model_dump(exclude_none=True)
        card.finished, card.finished_at = True, time.strftime("%Y-%m-%dT%H:%M:%S%z")
        card.write(self.path)
        return card

    def card(self) -> RunCard | None:
        return RunCard.read(self.path)

    def is_finished(self) -> bool:
        card = self.card()
        return card is not None and card.finished

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    def latest_checkpoint(self) -> Path | None:
        steps = [p for p in self.checkpoints.glob("step-*") if p.name[5:].isdigit()]  # not a copy named step-5-old
        steps.sort(key=lambda p: int(p.name[5:]))
        done = [p for p in steps if (p / "trainer_state.json").exists()]  # a half-written one is skipped
        return done[-1] if done else None

    def write_invalid_rows(self, rows) -> None:
        if rows and self.is_main:
            with (self.path / "invalid_rows.jsonl").open("w") as f:
                for r in rows:
                    f.write(json.dumps({"location": r.location, "error": r.error}) + "\n")


def _versions() -> dict[str, str | None]:
    import rlhfkit

    versions = {"rlhfkit": rlhfkit.__version__, "python": sys.version.split()[0]}
    for name in ("torch", "transformers"):  # recorded only when the stage loaded them
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None) if module else None
    return versions


class Progress:
    """A rich progress bar with ETA on the main process; silent elsewhere."""

    def __init__(self, total: int, description: str, enabled: bool, completed: int = 0):
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.task = self.bar.add_task(description, total=total, completed=completed, info="")
            self.bar.start()

    def update(self, advance: int = 1, info: str | None = None) -> None:
        if self.bar:
            self.bar.update(self.task, advance=advance, **({"info": info} if info is not None else {}))

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


class MetricsLogger:
    """metrics.jsonl and TensorBoard, written by the main process only."""

    def __init__(self, run: RunFolder, sinks: list[str], enabled: bool = True):
        self.enabled = enabled
        self.jsonl = (run.path / "metrics.jsonl").open("a") if enabled and "jsonl" in sinks else None
        self.tb = None
        if enabled and "tensorboard" in sinks:
            from rlhfkit.tb_events import EventFileWriter  # not torch's SummaryWriter: see tb_events.py

            self.tb = EventFileWriter(run.path / "tb")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self.jsonl.flush()
        if self.tb:
            self.tb.scalars(step, metrics)

    def text(self, step: int, tag: str, markdown: str) -> None:
        if self.enabled and self.tb:
            self.tb.text(step, tag, markdown)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()


def read_metrics(run_path: str | Path) -> list[dict]:
    path = Path(run_path) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
