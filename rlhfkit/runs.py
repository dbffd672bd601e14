"""Run folders: every stage leaves one behind, self-describing.

```
<run>/config.yaml        the resolved config the stage ran with
<run>/card.json          stage, parents (runs/models it read), data hashes, git commit, versions, figures
<run>/metrics.jsonl      one JSON object per logged step
<run>/tb/                TensorBoard events
<run>/checkpoints/step-N trainer state for exact resume
<run>/final/             the final model in Hugging Face format
<run>/invalid_rows.jsonl rows skipped with --skip-invalid
```
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from rlhfkit.config import StageConfig


def file_hash(path: str | Path) -> str | None:
    path = Path(path)
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def refuse_other_settings(folder: Path, config: StageConfig, run_only: set[str]) -> None:
    """Pipelines (the demo, presets) reuse the finished steps in their folder on a rerun, so a rerun must ask
    for what they were made with: refuse, before anything is written, when ``folder/config.yaml`` holds
    other settings, naming them. Settings in ``run_only`` (output folder, threads) may differ."""
    import yaml

    path = Path(folder) / "config.yaml"
    if not path.exists():
        return
    saved = yaml.safe_load(path.read_text()) or {}
    now = config.model_dump(mode="json")
    changed = [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if k not in run_only and saved.get(k) != now.get(k)
    ]
    if changed:
        raise ValueError(
            f"{path}: this run folder was made with other settings ({'; '.join(changed)}); its finished "
            "steps would be reused as they are. Give a new --output-dir, or delete the folder to start over."
        )


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, stage: str, config: StageConfig, *, is_main: bool = True) -> RunFolder:
        """Open (or reopen, for a resume) the run folder named by ``config.output_dir``.

        A folder that already holds a finished run is refused rather than overwritten.
        """
        path = Path(config.output_dir or f"runs/{stage}-{time.strftime('%Y%m%d-%H%M%S')}")
        run = cls(path)
        if (path / "final").exists():
            raise FileExistsError(f"{path} already holds a finished run (final/); choose another output_dir")
        if is_main:
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.yaml").write_text(config.to_yaml())
        return run

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    def latest_checkpoint(self) -> Path | None:
        steps = sorted(self.checkpoints.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        done = [p for p in steps if (p / "trainer_state.json").exists()]  # a half-written one is skipped
        return done[-1] if done else None

    def write_card(self, stage: str, parents: list[str], data: dict[str, str | None], figures: dict[str, Any]) -> None:
        import torch
        import transformers

        import rlhfkit

        card = {
            "stage": stage,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "parents": parents,
            "data": {name: {"path": p, "sha256_16": file_hash(p) if p else None} for name, p in data.items()},
            "git_commit": git_commit(),
            "versions": {
                "rlhfkit": rlhfkit.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "figures": figures,
        }
        (self.path / "card.json").write_text(json.dumps(card, indent=2))

    def write_invalid_rows(self, rows) -> None:
        if rows:
            with (self.path / "invalid_rows.jsonl").open("w") as f:
                for r in rows:
                    f.write(json.dumps({"location": r.location, "error": r.error}) + "\n")


class MetricsLogger:
    """metrics.jsonl and TensorBoard, written by the main process only."""

    def __init__(self, run: RunFolder, sinks: list[str], enabled: bool = True):
        self.enabled = enabled
        self.jsonl = (run.path / "metrics.jsonl").open("a") if enabled and "jsonl" in sinks else None
        self.tb = None
        if enabled and "tensorboard" in sinks:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run.path / "tb"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self.jsonl.flush()
        if self.tb:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def text(self, step: int, tag: str, markdown: str) -> None:
        if self.enabled and self.tb:
            self.tb.add_text(tag, markdown, step)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()


def read_metrics(run_path: str | Path) -> list[dict]:
    path = Path(run_path) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
