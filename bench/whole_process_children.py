"""The processes `bench/whole_process.py` times: one training run each, start to exit, with phase stamps.

    python bench/whole_process_children.py ours dpo --model M --data pairs.jsonl --epochs 1 ...   # the rlhfkit CLI
    python bench/whole_process_children.py trl dpo --model M --data pairs.jsonl --out O [--lora] [--bf16]

``ours`` runs the ``rlhfkit`` command itself (the same ``rlhfkit.cli`` app, same settings) after wrapping a few
of the stage's functions to stamp the phases; ``trl`` is the script a TRL user writes for the same run (read
the data, build the trainer with TRL's defaults, train, save). Both write their phase stamps as JSON to
``$WHOLE_PROCESS_PHASES`` when the process exits. A stamp is this process's CPU seconds (all threads, from
the start of the interpreter), wall seconds since the parent spawned it (``$WHOLE_PROCESS_T0``), and the
resident memory and its high-water mark (``/proc/self/status``). Phases:

- ``imports``: start to the end of the stage's imports (interpreter start-up included);
- ``model load``, ``data prep``, ``reference``, ``save``: time inside the functions that do them (rlhfkit:
  ``load_causal_lm``/``build_reward_model``/``load_reward``, ``load_train_eval``/``load_prompts``/``tokenize_all``,
  the DPO reference pass, ``save_model``/``save_reward_model``; TRL: ``from_pretrained`` of models and tokenizer,
  building the dataset and the trainer's ``_prepare_dataset``, its ``save_model``);
- ``train begin``/``first step``/``train end``: the training loop's start (rlhfkit: its progress bar is made;
  TRL: ``on_train_begin``), the end of its first optimiser step, and the loop's end;
- ``rollout`` (online runs): time inside the sampler, part of the steps (rlhfkit: ``TransformersSampler.generate``;
  TRL: ``GRPOTrainer._generate``).

Online runs generate exactly ``--new-tokens`` tokens on both sides (EOS never ends a response), so both do
the same work: rlhfkit's sampler is given no EOS id, TRL's generation gets ``min_new_tokens``.

With ``$WHOLE_PROCESS_OPS`` set, the whole run goes under ``torch.profiler`` (flops counted) and, at exit, the
torch operators' own CPU time by kind goes there as JSON (``op_kinds``): matrix products (and their GFLOP),
attention, the optimiser's update, and every other operator; what no operator accounts for (the interpreter,
imports, Python between operators) is the process's CPU time less their sum. The profiler adds its own cost, so
these runs are not the timed ones.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

T0 = float(os.environ.get("WHOLE_PROCESS_T0", time.time()))
STAGE_MODULES = {"sft": "rlhfkit.train.sft", "rm": "rlhfkit.train.reward", "dpo": "rlhfkit.train.dpo"}
STAGE_MODULES.update(ppo="rlhfkit.train.ppo", grpo="rlhfkit.train.ppo")


def count_the(prompts, responses) -> list[float]:
    """The programmatic reward both sides use online: how often a response says "the"."""
    return [float(r.lower().split().count("the")) for r in responses]


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class Phases:
    """Marks (first time something happened) and time spent inside named phases (summed, not nested)."""

    def __init__(self):
        self.marks: dict[str, dict] = {}
        self.spent: dict[str, dict] = {}
        self._inside = False

    def now(self) -> dict:
        return {
            "cpu": time.process_time(),
            "wall": time.time() - T0,
            "rss_mb": _status_mb("VmRSS"),
            "hwm_mb": _status_mb("VmHWM"),
        }

    def mark(self, name: str, again: bool = False) -> None:
        if again or name not in self.marks:
            self.marks[name] = self.now()

    @contextmanager
    def timed(self, phase: str):
        if self._inside:  # a phase inside another (from_pretrained calling from_pretrained) counts once
            yield
            return
        self._inside, start = True, self.now()
        try:
            yield
        finally:
            end = self.now()
            self._inside = False
            acc = self.spent.setdefault(phase, {"cpu": 0.0, "wall": 0.0, "rss_after_mb": 0.0})
            acc["cpu"] += end["cpu"] - start["cpu"]
            acc["wall"] += end["wall"] - start["wall"]
            acc["rss_after_mb"] = end["rss_mb"]
            self.mark(f"after {phase}", again=True)

    def wrap(self, owner, name: str, phase: str) -> None:
        """Time every call of ``owner.name`` as ``phase`` (a no-op where ``owner`` has no such attribute)."""
        fn = getattr(owner, name, None)
        if fn is None:
            return

        @functools.wraps(fn)
        def timed_call(*args, **kwargs):
            with self.timed(phase):
                return fn(*args, **kwargs)

        setattr(owner, name, timed_call)

    def dump(self) -> None:
        self.mark("exit", again=True)
        path = os.environ.get("WHOLE_PROCESS_PHASES")
        if path:
            Path(path).write_text(json.dumps({"marks": self.marks, "spent": self.spent}))


PHASES = Phases()

OP_KINDS = ("matmul", "attention", "optimiser", "other")
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv", "aten::dot"}


def op_kind(name: str) -> str:
    """The kind of a torch operator (its profiler name): matmul, attention, optimiser or other."""
    if name in MATMULS:
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if "adam" in name.lower():
        return "optimiser"
    return "other"


def op_kinds(events) -> dict[str, dict[str, float]]:
    """Self CPU seconds (and GFLOP, for matrix products) by kind, from a profiler's ``key_averages()``.
    Autograd's and the optimiser's wrappers (``autograd::...``, ``Optimizer.step#...``) hold no work of their
    own beyond the operators they call, which are counted where they run."""
    kinds = {k: {"cpu_s": 0.0, "gflop": 0.0} for k in OP_KINDS}
    for e in events:
        kind = kinds[op_kind(e.key)]
        kind["cpu_s"] += e.self_cpu_time_total / 1e6
        kind["gflop"] += (e.flops or 0) / 1e9
    return kinds


def profile_ops(path: str) -> None:
    """Profile the rest of this process; at exit, its operators' time by kind goes to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], with_flops=True)
    prof.start()

    def write() -> None:
        prof.stop()
        Path(path).write_text(json.dumps(op_kinds(prof.key_averages())))

    atexit.register(write)  # before the phases' dump (exit handlers run last registered first)


def run_ours(stage: str, settings: list[str]) -> int:
    """The rlhfkit command for ``stage`` with ``settings``, its phases stamped."""
    import rlhfkit.cli as cli

    module = importlib.import_module(STAGE_MODULES[stage])  # what the command imports when the stage runs
    PHASES.mark("imports")
    from rlhfkit.runs import Progress

    for name in ("load_causal_lm", "build_reward_model", "load_reward"):
        PHASES.wrap(module, name, "model load")
    for name in ("load_train_eval", "load_prompts", "tokenize_all"):
        PHASES.wrap(module, name, "data prep")
    PHASES.wrap(module, "cached_reference_logps", "reference")
    for name in ("save_model", "save_reward_model"):
        PHASES.wrap(module, name, "save")
    progress_init, progress_update, progress_close = (
        Progress.__init__,
        Progress.update,
        Progress.close,
    )

    def init(self, *args, **kwargs):
        PHASES.mark("train begin")
        progress_init(self, *args, **kwargs)

    def update(self, *args, **kwargs):  # called at the end of every optimiser step
        PHASES.mark("first step")
        progress_update(self, *args, **kwargs)

    def close(self):
        PHASES.mark("train end", again=True)
        progress_close(self)

    Progress.__init__, Progress.update, Progress.close = init, update, close
    if stage in ("ppo", "grpo"):
        import rlhfkit.rollout

        rlhfkit.rollout.eos_ids = lambda model, tokenizer: []  # exactly max_new_tokens per response
        PHASES.wrap(rlhfkit.rollout.TransformersSampler, "generate", "rollout")
    words = ["rm", "train"] if stage == "rm" else ["ppo" if stage == "grpo" else stage]
    sys.argv = ["rlhfkit", *words, *settings]
    cli.program()  # the program's own exit: it ends the process (the exit handlers, the dump among them, run first)
    return 0


def run_trl(stage: str, args) -> int:
    """What a TRL user writes for the same run: TRL's trainer with its defaults, except the run's size."""
    import datasets
    import transformers
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    # By name, as `from trl import DPOTrainer` does: trl loads only the trainer asked for.
    kind = {"sft": "SFT", "rm": "Reward", "dpo": "DPO"}.get(stage, "GRPO")
    trainer_class, config_class = getattr(trl, f"{kind}Trainer"), getattr(trl, f"{kind}Config")
    if args.lora:
        import peft
    PHASES.mark("imports")

    load = transformers.PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, *a, **kw):
        with PHASES.timed("model load"):
            return load(cls, *a, **kw)

    transformers.PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    PHASES.wrap(trainer_class, "_prepare_dataset", "data prep")
    PHASES.wrap(trainer_class, "_generate", "rollout")  # GRPO's sampling (other trainers have none)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            PHASES.mark("train begin")

        def on_step_end(self, *a, **kw):
            PHASES.mark("first step")

        def on_train_end(self, *a, **kw):
            PHASES.mark("train end", again=True)

    with PHASES.timed("model load"):
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    with PHASES.timed("data prep"):
        rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
        dataset = datasets.Dataset.from_list(rows)
    size = dict(per_device_train_batch_size=args.batch)
    size.update(max_steps=args.steps) if args.steps else size.update(num_train_epochs=1)
    settings = dict(output_dir=args.out, bf16=args.bf16, use_cpu=True, **size)
    extra = {}
    if stage in ("ppo", "grpo"):
        settings.update(
            num_generations=args.group,
            max_completion_length=args.new_tokens,
            beta=args.beta,  # the same KL penalty (and so a reference model) as rlhfkit's
            generation_kwargs={"min_new_tokens": args.new_tokens},  # EOS never ends a response
        )
        extra["reward_funcs"] = [lambda prompts, completions, **kw: count_the(prompts, completions)]
    if args.lora:
        task = "SEQ_CLS" if stage == "rm" else "CAUSAL_LM"
        extra["peft_config"] = peft.LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type=task
        )
    trainer = trainer_class(
        model=args.model,
        args=config_class(**settings),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
        **extra,
    )
    trainer.train()
    with PHASES.timed("save"):
        trainer.save_model(str(Path(args.out) / "final"))
    return 0


def main() -> int:
    atexit.register(PHASES.dump)
    if os.environ.get("WHOLE_PROCESS_OPS"):
        profile_ops(os.environ["WHOLE_PROCESS_OPS"])
    side, stage, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    if side == "ours":
        return run_ours(stage, rest)
    import argparse

    ap = argparse.ArgumentParser()
    for name in ("--model", "--data", "--out"):
        ap.add_argument(name, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=0, help="optimiser steps (0: one epoch)")
    ap.add_argument("--group", type=int, default=4, help="completions per prompt (online)")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    return run_trl(stage, ap.parse_args(rest))


if __name__ == "__main__":
    sys.exit(main())
