"""`rlhfkit launch` prints the accelerate line for a machine, and every shipped accelerate config loads."""

import shlex

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.launch import CONFIG_DIR, STRATEGIES, launch_line


def test_cpu_processes_use_the_ddp_config_on_this_machine():
    line = launch_line(["sft", "--data", "toy", "--max-steps", "100"], cpu_processes=2)
    assert line == (
        f"accelerate launch --config_file {CONFIG_DIR / 'ddp.yaml'} --num_processes 2 --num_machines 1 "
        "-m rlhfkit.cli sft --data toy --max-steps 100"
    )


def test_several_nodes_name_each_nodes_rank_and_the_main_address():
    line = launch_line(["ppo", "--config", "my ppo.yaml"], gpus=8, nodes=2, strategy="fsdp2")
    assert f"--config_file {CONFIG_DIR / 'fsdp2.yaml'} --num_processes 16 --num_machines 2" in line
    assert "--machine_rank $NODE_RANK --main_process_ip $MAIN_IP --main_process_port 29500" in line
    assert line.endswith("-m rlhfkit.cli ppo --config 'my ppo.yaml'")  # the stage's arguments quoted for the shell
    fixed = launch_line(["ppo"], gpus=8, nodes=2, node_rank="1", main_ip="10.0.0.1", port=1234)
    assert "--machine_rank 1 --main_process_ip 10.0.0.1 --main_process_port 1234" in fixed


def test_one_gpu_needs_no_launcher_but_offloading_does():
    assert launch_line(["dpo", "--config", "d.yaml"], gpus=1) == "rlhfkit dpo --config d.yaml"
    assert launch_line(["dpo"], gpus=1, strategy="zero3-offload").startswith("accelerate launch --config_file")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stage_args=[], gpus=8), "name the stage"),
        (dict(stage_args=["sft"], gpus=8, strategy="zero4"), "choose one of"),
        (dict(stage_args=["sft"], cpu_processes=2, strategy="zero3-offload"), "needs GPUs"),
        (dict(stage_args=["sft"], cpu_processes=2, nodes=2), "this machine alone"),
        (dict(stage_args=["sft"], gpus=0), "no GPU found"),
    ],
)
def test_impossible_machines_are_refused_with_the_fix(kwargs, message):
    stage_args = kwargs.pop("stage_args")
    with pytest.raises(ValueError, match=message):
        launch_line(stage_args, **kwargs)


def test_the_command_prints_the_line_and_refuses_with_exit_code_2():
    runner = CliRunner()
    out = runner.invoke(app, ["launch", "--gpus", "4", "--strategy", "zero2", "--", "sft", "--data", "toy"])
    assert out.exit_code == 0
    assert shlex.split(out.stdout)[:4] == [
        "accelerate",
        "launch",
        "--config_file",
        str(CONFIG_DIR / "deepspeed-zero2.yaml"),
    ]
    bad = runner.invoke(app, ["launch", "--gpus", "4", "--strategy", "nope", "--", "sft"])
    assert bad.exit_code == 2 and "choose one of" in bad.output
    for flags, setting in (
        (["--nodes", "0"], "--nodes"),
        (["--port", "99999"], "--port"),
        (["--gpus", "-2"], "--gpus"),
    ):
        bad = runner.invoke(app, ["launch", "--gpus", "2", *flags, "--", "sft"])
        assert bad.exit_code == 2 and f"Invalid value for '{setting}'" in bad.output  # not a line of nonsense


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_shipped_config_is_one_accelerate_reads(strategy):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIG_DIR / STRATEGIES[strategy][0]))
    kind = str(config.distributed_type)
    expected = {"ddp": "MULTI_GPU", "fsdp2": "FSDP", "fsdp2-offload": "FSDP"}.get(strategy, "DEEPSPEED")
    assert kind.endswith(expected)
    if kind.endswith("FSDP"):
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_offload_params"] == strategy.endswith("offload")
    if kind.endswith("DEEPSPEED"):
        assert config.deepspeed_config["zero_stage"] == int(strategy[4])
