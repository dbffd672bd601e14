"""How the `rlhfkit` command runs a stage: `--data toy` resolved at the edge, the run folder named before the
stage starts (so an interrupt can say how to resume), errors as one line, and the figures printed from the card.
Imports no torch: the `rlhfkit` program loads it at start-up."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import typer

from rlhfkit.config import StageConfig

# The built-in data each stage takes for `--data toy` (written as an ordinary file by the toy world).
TOY_KINDS = {"sft": "demonstration", "rm": "comparison", "dpo": "comparison", "kto": "rating"}


def with_toy_data(cfg: StageConfig) -> StageConfig:
    """``--data toy`` (and ``--eval-data toy``) name the toy world's built-in set: written as a file here, at
    the edge, so the stage reads it like any user's data."""
    kind = TOY_KINDS.get(getattr(cfg, "stage", ""), "prompt")
    if getattr(cfg, "data_kind", "comparison") != "comparison":
        kind = cfg.data_kind
    updates = {}
    for name in ("data", "eval_data"):
        if getattr(cfg, name, None) == "toy":
            from rlhfkit.toy.data import data_file

            updates[name] = str(data_file(kind, seed=cfg.seed + (name == "eval_data")))
    return cfg.model_copy(update=updates) if updates else cfg


def with_output_dir(cfg: StageConfig) -> StageConfig:
    """The run folder decided here, so an interrupted run can be resumed by naming it."""
    if "output_dir" in type(cfg).model_fields and cfg.output_dir is None:
        return cfg.model_copy(update={"output_dir": f"runs/{cfg.stage}-{time.strftime('%Y%m%d-%H%M%S')}"})
    return cfg


def resume_hint(cfg: StageConfig) -> str:
    args = sys.argv[1:]
    if getattr(cfg, "output_dir", None) and not any(a == "--output-dir" or a.startswith("--output-dir=") for a in args):
        args = args + ["--output-dir", cfg.output_dir]
    return "rlhfkit " + " ".join(args)


def print_figures(path: Path) -> None:
    """The figures a user ran the stage for, from its card, as a short table."""
    from rich.console import Console
    from rich.table import Table

    from rlhfkit.runs import RunCard

    card = RunCard.read(path)
    if card is None:
        return
    table = Table(title=f"{card.stage} finished: {path}", show_header=False, title_justify="left")
    for name, value in card.figures.items():
        if (cell := _cell(value)) is not None:
            table.add_row(name, cell)
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for i, item in enumerate(value):  # per model, per round...: a row each, its plain figures
                label = item.get("name", item.get("round", i + 1))
                flat = {k: v for k, v in item.items() if k not in ("name", "round") and not isinstance(v, dict)}
                flat |= {f"{k}.{k2}": v2 for k, v in item.items() if isinstance(v, dict) for k2, v2 in v.items()}
                cells = [f"{k} {c}" for k, v in flat.items() if (c := _cell(v)) is not None]
                table.add_row(f"{name} {label}", ", ".join(cells))
    Console().print(table)


def _cell(value) -> str | None:
    """A figure as a table cell; None for what a cell cannot show (nested lists and mappings)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (int, str, bool)):
        return str(value)
    return None


STAGE_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def run_stage(cfg: StageConfig, runner: Callable[[StageConfig], Path], show_figures: bool = True) -> None:
    """Run one stage from the command line: toy data resolved, a run folder named, errors as one line."""
    from rlhfkit.data.io import DataError

    cfg = with_output_dir(with_toy_data(cfg))
    try:
        path = runner(cfg)
    except KeyboardInterrupt:
        if getattr(cfg, "output_dir", None) and Path(cfg.output_dir).exists():
            typer.echo(f"interrupted; to resume: {resume_hint(cfg)}", err=True)
        raise typer.Exit(130) from None
    except (ValueError, DataError, OSError) as e:  # a bad input, a path that cannot be written: one line
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if show_figures:
        print_figures(Path(path))
    else:
        typer.echo(f"{'wrote' if Path(path).is_file() else 'run folder'}: {path}")  # `rm score` writes one file
