"""Runs stages one after another in every process of a multi-process launch (tests/test_multiprocess.py starts it).

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 tests/multiprocess_stages.py plan.json

plan.json: a list of {"stage": "sft" | "rm" | "dpo" | "kto" | "ppo" | "bon" | "rejection", "config": {setting: value}}. Each
stage is the library's own ``run``, as the command line calls it; one launch runs them all, so the processes
start once. An item with "interrupt": {"rank": R, "at_call": N} sends process R alone a SIGTERM inside its N-th
optimiser step, as a Ctrl-C that reaches one process first would, and goes on to the next item once the stage
stopped.
"""

import json
import sys
import time

STAGES = {
    "sft": ("rlhfkit.train.sft", "SFTConfig"),
    "rm": ("rlhfkit.train.reward", "RewardConfig"),
    "dpo": ("rlhfkit.train.dpo", "DPOConfig"),
    "kto": ("rlhfkit.train.kto", "KTOConfig"),
    "ppo": ("rlhfkit.train.ppo", "PPOConfig"),
    "bon": ("rlhfkit.train.best_of_n", "BestOfNConfig"),
    "rejection": ("rlhfkit.train.rejection", "RejectionConfig"),
}


def main(plan_file: str) -> None:
    import importlib

    import torch

    torch.set_num_threads(1)
    with open(plan_file) as f:
        plan = json.load(f)
    for item in plan:
        module = importlib.import_module(STAGES[item["stage"]][0])
        config = getattr(module, STAGES[item["stage"]][1])(**item["config"])
        start = time.perf_counter()
        if "interrupt" in item:
            run_interrupted(module, config, **item["interrupt"])
            print(f"{item['stage']} {config.output_dir}: interrupted", flush=True)
            continue
        module.run(config)
        print(f"{item['stage']} {config.output_dir}: {time.perf_counter() - start:.1f} s", flush=True)


def run_interrupted(module, config, rank: int, at_call: int) -> None:
    import os
    import signal

    from accelerate import PartialState

    from rlhfkit.train import common

    real, calls = common.optimizer_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call and PartialState().process_index == rank:
            os.kill(os.getpid(), signal.SIGTERM)  # not SIGINT: a background job ignores it
        return real(*args, **kwargs)

    common.optimizer_step = step
    try:
        module.run(config)
    except KeyboardInterrupt:
        pass
    else:
        raise SystemExit(f"{config.output_dir}: the stage was not interrupted")
    finally:
        common.optimizer_step = real


if __name__ == "__main__":
    from rlhfkit.cli import exit_without_teardown

    main(sys.argv[1])
    # leave as the `rlhfkit` program does (exit handlers, flushed streams, no interpreter teardown): torn down, a
    # process sometimes died at exit under load ("terminate called without an active exception", SIGABRT) after
    # every stage had finished, which the program's own exit never meets
    exit_without_teardown(0)
