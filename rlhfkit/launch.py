"""``rlhfkit launch``: the ``accelerate launch`` line that runs a stage on a machine of a given shape.

    rlhfkit launch --cpu-processes 2 -- sft --data toy --max-steps 100           # two CPU processes (gloo)
    rlhfkit launch --gpus 8 -- dpo --config dpo.yaml                             # one node, DDP
    rlhfkit launch --gpus 8 --nodes 2 --strategy fsdp2 -- ppo --config ppo.yaml  # two nodes, sharded

It prints the line rather than running it: on a cluster the same line runs on every node with that node's rank
(``$NODE_RANK``, ``$MAIN_IP``: set them, or give ``--node-rank`` / ``--main-ip``), and a job script is where it
belongs. Run it in place with ``eval "$(rlhfkit launch ...)"``. The strategy's settings live in
``configs/accelerate/<file>``; the machine's shape is given on the line, so one file serves every machine. The
stage's settings are the same on every machine: ``batch_size`` is the global batch, so a config that ran on one
CPU runs the same optimisation on 16 GPUs.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

# strategy -> (config file, runs on CPU processes)
STRATEGIES = {
    "ddp": ("ddp.yaml", True),
    "fsdp2": ("fsdp2.yaml", True),
    "fsdp2-offload": ("fsdp2-offload.yaml", False),
    "zero2": ("deepspeed-zero2.yaml", True),  # DeepSpeed's CPU backend (gloo); it compiles a small op on first use
    "zero3": ("deepspeed-zero3.yaml", True),
    "zero3-offload": ("deepspeed-zero3-offload.yaml", False),
}
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "accelerate"


def gpus_on_this_machine() -> int:
    """GPUs nvidia-smi lists (0 without one), found without importing torch."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def launch_line(
    stage_args: list[str],
    *,
    gpus: int | None = None,
    nodes: int = 1,
    strategy: str = "ddp",
    cpu_processes: int = 0,
    node_rank: str = "$NODE_RANK",
    main_ip: str = "$MAIN_IP",
    port: int = 29500,
    config_dir: Path = CONFIG_DIR,
) -> str:
    """The shell line that runs ``rlhfkit <stage_args>`` on ``nodes`` machines of ``gpus`` GPUs each (or on
    ``cpu_processes`` CPU processes of this machine) with ``strategy``."""
    if not stage_args:
        raise ValueError("name the stage after '--', e.g. rlhfkit launch --gpus 8 -- sft --config sft.yaml")
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy '{strategy}': choose one of {', '.join(STRATEGIES)}")
    config_file, on_cpu = STRATEGIES[strategy]
    if cpu_processes:
        if nodes != 1 or gpus:
            raise ValueError("--cpu-processes runs on this machine alone: leave out --gpus and --nodes")
        if not on_cpu:
            raise ValueError(f"--strategy {strategy} needs GPUs (offloading to CPU memory); on CPU processes use ddp, "
                             "fsdp2, zero2 or zero3")  # fmt: skip
        per_node = cpu_processes
    else:
        per_node = gpus if gpus is not None else gpus_on_this_machine()
        if per_node < 1:
            raise ValueError("no GPU found: give --gpus N for the machine the line is for, or --cpu-processes N here")
    total = per_node * nodes
    stage = shlex.join(stage_args)
    if total == 1 and strategy == "ddp":
        return f"rlhfkit {stage}"  # one process needs no launcher
    path = config_dir / config_file
    if not path.exists():
        raise FileNotFoundError(f"{path}: the accelerate configs ship in the repository's configs/accelerate/")
    parts = ["accelerate", "launch", "--config_file", str(path), "--num_processes", str(total)]
    parts += ["--num_machines", str(nodes)]
    if nodes > 1:
        parts += ["--machine_rank", node_rank, "--main_process_ip", main_ip, "--main_process_port", str(port)]
    # $NODE_RANK / $MAIN_IP stay unquoted so the shell of each node fills them in
    line = " ".join(p if p.startswith("$") else shlex.quote(p) for p in parts)
    return f"{line} -m rlhfkit.cli {stage}"
