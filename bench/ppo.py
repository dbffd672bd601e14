"""PPO speed and memory against anchors measured in the same process (speed) or the same machine (memory).

    python bench/ppo.py                 # everything: speed (vs TRL GRPOTrainer), rollout (vs generate), memory
    python bench/ppo.py --only speed    # or rollout, memory
    python bench/ppo.py --steps 6 --repeat 2

Settings (issue 4): CPU, the tiny Llama ``tiny-4m`` (~4M parameters), 8 completions per step, exactly 48
new tokens (EOS disabled on both sides so every response is 48 tokens long), temperature 1, no top-k /
top-p, a programmatic reward (count of "the"), KL coefficient 0.05 with a frozen reference on both sides.

- speed: completions/s over whole steps (generation + scoring + reference + update), first step excluded
  (warm-up), with the same work per rollout on both sides: first one optimiser pass (TRL's default
  num_iterations 1 against ``--ppo-epochs 1``), then four (num_iterations 4 against rlhfkit's default 4 PPO
  epochs). rlhfkit ``ppo`` runs GAE with a value head; TRL's GRPOTrainer (TRL has no PPO trainer any
  more) runs 4 prompts x num_generations 2 = 8 completions per step, beta 0.05 (so it also keeps a
  reference), gradient checkpointing off, float32 like rlhfkit (``bf16=False``; TRL's default is bf16
  autocast, which also runs, as ``trl_bf16``, against rlhfkit ``--dtype bf16-mixed``: on this CPU it is
  slower). ``trl_defaults`` is TRL as it comes (bf16 autocast and gradient checkpointing on) against
  rlhfkit as it comes (float32, no checkpointing). Also shown: rlhfkit with
  ``--advantage grpo --group-size 2``, the same algorithm as TRL's.
- rollout: tokens/s of ``TransformersSampler.generate`` (the packed Llama step, and transformers' forward
  with ``packed_decode=False``) against plain ``model.generate(do_sample=True)``, same batch, 48 new tokens
  each (median of repeats), also the packed step in bf16 under autocast; and the time of one decode step's
  products with the weights as nn.Linear stores them (what the packed step uses), as a transposed copy (what
  it used before), and in bf16.
- memory: peak RSS (ru_maxrss) of ``rlhfkit ppo`` with LoRA, reference = adapters off, critic = head
  (one copy of the weights) against ``rlhfkit sft`` with LoRA, same model, batch 8; each in its own
  subprocess. Both the ratio of peaks and the ratio of the growth above the process's RSS once its
  libraries and model are loaded are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL, BATCH, NEW_TOKENS, KL = "tiny-4m", 8, 48, 0.05
# Steps are timed in process CPU seconds (one thread per process): on a shared machine wall time swings
# with the neighbours' load between the sequential runs, CPU time barely does. --wall switches to wall time.
CLOCK, CLOCK_KEY = time.process_time, "time/step_cpu_s"


def count_the(prompts, responses):
    return [float(r.lower().split().count("the")) for r in responses]


def _no_eos(model):
    """Both sides generate exactly NEW_TOKENS tokens: no EOS id in the generation config."""
    model.generation_config.eos_token_id = None
    return model


def model_folder(tmp: Path) -> str:
    """tiny-4m saved as a plain HF folder (TRL takes a model object or a path)."""
    from rlhfkit.models.tiny import build_tiny

    path = tmp / "tiny-4m"
    if not (path / "config.json").exists():
        model, tok = build_tiny(MODEL)
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return str(path)


def bench_rlhfkit(tmp: Path, steps: int, **overrides) -> float:
    from accelerate.state import AcceleratorState

    import rlhfkit.rollout as rollout
    from rlhfkit.runs import read_metrics
    from rlhfkit.toy.data import data_file
    from rlhfkit.train.ppo import PPOConfig, run

    AcceleratorState._reset_state(reset_partial_state=True)  # TRL's Trainer set its own state in this process
    original = rollout.eos_ids
    rollout.eos_ids = lambda model, tok: []  # 48 tokens on every row, as on the TRL side
    try:
        out = tmp / f"rlhfkit-{time.time_ns()}"
        settings = dict(
            model=MODEL,
            reward="bench.ppo:count_the",
            data=str(data_file("prompt")),
            output_dir=str(out),
            max_steps=steps,
            batch_size=BATCH,
            max_new_tokens=NEW_TOKENS,
            temperature=1.0,
            kl_coef=KL,
            missing_eos_penalty=None,
            progress=False,
            report_to=["jsonl"],
            eval_fraction=0.0,
            sample_every=10_000,
        )
        cfg = PPOConfig(**{**settings, **overrides})
        run(cfg)
    finally:
        rollout.eos_ids = original
    m = [r for r in read_metrics(out) if "time/step_s" in r][1:]
    completions = cfg.batch_size * cfg.group_size  # prompts per step x samples per prompt
    return completions * len(m) / sum(r[CLOCK_KEY] for r in m)


def bench_trl(tmp: Path, steps: int, num_iterations: int = 1, bf16: bool = False, checkpointing: bool = False) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhfkit.toy.data import prompts as toy_prompts

    path = model_folder(tmp)
    model = _no_eos(AutoModelForCausalLM.from_pretrained(path))
    tok = AutoTokenizer.from_pretrained(path)
    prompts = toy_prompts(BATCH * steps, 0)
    data = Dataset.from_list([{"prompt": p} for p in prompts])

    def reward(prompts, completions, **kw):
        return count_the(prompts, [c[0]["content"] if isinstance(c, list) else c for c in completions])

    class Clock(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.start = CLOCK()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(CLOCK() - self.start)

    clock = Clock()
    args = GRPOConfig(
        output_dir=str(tmp / "trl"),
        per_device_train_batch_size=BATCH,
        num_generations=2,
        max_completion_length=NEW_TOKENS,
        temperature=1.0,
        beta=KL,
        num_iterations=num_iterations,
        max_steps=steps,
        learning_rate=1e-5,
        use_cpu=True,
        bf16=bf16,
        report_to="none",
        logging_steps=1000,
        save_strategy="no",
        gradient_checkpointing=checkpointing,
        disable_dropout=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok, callbacks=[clock]
    )
    trainer.train()
    # With num_iterations > 1 TRL generates only every num_iterations-th step and trains on those
    # completions again in between: count each completion once, over whole cycles (any num_iterations
    # consecutive steps hold exactly one generation).
    times = clock.times[1:]
    times = times[: len(times) // num_iterations * num_iterations]
    return BATCH * len(times) / num_iterations / sum(times)


def bench_rollout(repeat: int) -> dict[str, float]:
    """Tokens/s of the sampler (packed Llama step, and transformers' forward: ``packed_decode=False``) and of
    ``model.generate``, medians over ``repeat`` rounds after one warm-up round."""
    from rlhfkit.config import SamplingPart
    from rlhfkit.data.records import from_json
    from rlhfkit.models.tiny import build_tiny
    from rlhfkit.rollout import TransformersSampler, encode_prompts
    from rlhfkit.toy.data import prompts as toy_prompts

    model, tok = build_tiny(MODEL)
    model = _no_eos(model).eval()
    prompts = [from_json(p) for p in toy_prompts(BATCH, 0)]
    samplers = {}
    for name, packed in (("packed", True), ("transformers_forward", False)):
        samplers[name] = TransformersSampler(
            model, tok, SamplingPart(max_new_tokens=NEW_TOKENS, temperature=1.0), packed_decode=packed
        )
        samplers[name].eos = []
    ids, mask = encode_prompts(tok, prompts)

    def generate():
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=NEW_TOKENS
            )
        assert out.shape[1] - ids.shape[1] == NEW_TOKENS

    def packed_bf16():  # the packed step under bf16 autocast, as on a GPU (on the CPU it keeps float32)
        import rlhfkit.models.decode as decode

        decode.AUTOCAST_ON_CPU = True
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                samplers["packed"].generate(prompts, generator=torch.Generator().manual_seed(0))
        finally:
            decode.AUTOCAST_ON_CPU = False

    runs = {
        name: (lambda s=s, i=0: s.generate(prompts, generator=torch.Generator().manual_seed(i)))
        for name, s in samplers.items()
    }
    runs["packed_bf16_autocast"] = packed_bf16
    runs["generate"] = generate
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeat + 1):  # the first round warms everything up
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            if i:
                rates[name].append(BATCH * NEW_TOKENS / (time.perf_counter() - t))
    return {name: statistics.median(r) for name, r in rates.items()}


def bench_products(repeat: int = 300) -> dict[str, float]:
    """Microseconds per product of 8 rows (one decode step) with the tiny-4m layers' weights, in the three
    forms the packed step could use: (out, in) float32 as nn.Linear stores it (what PackedLlama uses), (in, out)
    float32 (a transposed copy, what it used before), (out, in) bf16 (what it uses under bf16 autocast off the
    CPU). One copy per layer, cycled, so the weights are not hot in cache."""
    import torch.nn.functional as F

    from rlhfkit.models.catalog import TINY_PRESETS

    H, inter = TINY_PRESETS[MODEL]["hidden_size"], TINY_PRESETS[MODEL]["intermediate_size"]
    layers = TINY_PRESETS[MODEL]["num_hidden_layers"]
    result = {}
    for name, (n_out, n_in) in {"qkv": (3 * H, H), "gate_up": (2 * inter, H), "down": (H, inter)}.items():
        weights = [torch.randn(n_out, n_in) for _ in range(layers)]
        forms = {
            "out_in_f32": (torch.randn(BATCH, n_in), weights, lambda x, w: F.linear(x, w)),
            "in_out_f32": (torch.randn(BATCH, n_in), [w.t().contiguous() for w in weights], torch.matmul),
            "out_in_bf16": (
                torch.randn(BATCH, n_in).bfloat16(),
                [w.bfloat16() for w in weights],
                lambda x, w: F.linear(x, w),
            ),
        }
        for form, (x, ws, op) in forms.items():
            for w in ws * 5:  # warm-up
                op(x, w)
            t = time.perf_counter()
            for k in range(repeat):
                op(x, ws[k % layers])
            result[f"{name}_{form}_us"] = (time.perf_counter() - t) / repeat * 1e6
    return result


MEMORY_CHILD = r"""
import json, resource, sys, os
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, {repo!r})
stage, out = sys.argv[1], sys.argv[2]
import torch, transformers, peft, accelerate
from rlhfkit.models.tiny import build_tiny
build_tiny("tiny-4m")

def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

# Reset the high-water mark (VmHWM) once libraries are loaded: building the tokenizer peaks above what
# training needs, which would hide the difference between the stages.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status_kb("VmRSS")
common = dict(model="tiny-4m", lora=True, batch_size=8, max_steps=4, progress=False, report_to=["jsonl"], output_dir=out)
from rlhfkit.toy.data import data_file
if stage == "sft":
    from rlhfkit.train.sft import SFTConfig, run
    run(SFTConfig(eval_fraction=0.0, data=str(data_file("demonstration")), **common))
else:
    from rlhfkit.train.ppo import PPOConfig, run
    run(PPOConfig(reward="bench.ppo:count_the", data=str(data_file("prompt")), max_new_tokens=48, critic="head",
                  reference="lora-off", eval_fraction=0.0, **common))
peak = status_kb("VmHWM")
print(json.dumps({{"base_mb": base / 1024, "peak_mb": peak / 1024}}))
"""


def bench_memory(tmp: Path) -> dict:
    result = {}
    for stage in ("sft", "ppo"):
        code = MEMORY_CHILD.format(repo=str(REPO))
        done = subprocess.run(
            [sys.executable, "-c", code, stage, str(tmp / f"mem-{stage}")],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=600,
        )
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        result[stage] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


SPEED_RUNS = {
    "trl": lambda tmp, steps: bench_trl(tmp, steps),
    "trl4": lambda tmp, steps: bench_trl(tmp, steps, num_iterations=4),
    "trl_bf16": lambda tmp, steps: bench_trl(tmp, steps, bf16=True),  # TRL's own default: bf16 autocast
    # TRL as it comes: bf16 autocast and gradient checkpointing on (its GRPOConfig defaults)
    "trl_defaults": lambda tmp, steps: bench_trl(tmp, steps, bf16=True, checkpointing=True),
    "ppo1_bf16": lambda tmp, steps: bench_rlhfkit(tmp, steps, ppo_epochs=1, dtype="bf16-mixed"),
    "ppo1": lambda tmp, steps: bench_rlhfkit(tmp, steps, ppo_epochs=1),
    "ppo4": lambda tmp, steps: bench_rlhfkit(tmp, steps),
    "grpo": lambda tmp, steps: bench_rlhfkit(
        tmp, steps, advantage="grpo", group_size=2, ppo_epochs=1, batch_size=BATCH // 2
    ),
}


def child(name: str, steps: int) -> float:
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(steps)] + (
        ["--wall"] if CLOCK_KEY == "time/step_s" else []
    )
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1200)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    value = float(done.stdout.strip().splitlines()[-1])
    print(f"  {name}: {value:.2f} completions/s", flush=True)
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=sorted(SPEED_RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["speed", "rollout", "memory"])
    parser.add_argument("--steps", type=int, default=6, help="steps per speed run (the first is warm-up)")
    parser.add_argument("--repeat", type=int, default=5, help="rollout repeats")
    parser.add_argument("--wall", action="store_true", help="time steps by wall clock instead of process CPU time")
    args = parser.parse_args()
    if args.wall:
        global CLOCK, CLOCK_KEY
        CLOCK, CLOCK_KEY = time.perf_counter, "time/step_s"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.child:
        with tempfile.TemporaryDirectory() as d:
            print(SPEED_RUNS[args.child](Path(d), args.steps))
        return
    results = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "model": MODEL,
        "batch": BATCH,
        "new_tokens": NEW_TOKENS,
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only in (None, "rollout"):
            rates = bench_rollout(args.repeat)
            products = bench_products()
            ours, unpacked, theirs = rates["packed"], rates["transformers_forward"], rates["generate"]
            results["rollout"] = {
                "rlhfkit_tokens_per_s": ours,
                "rlhfkit_transformers_forward_tokens_per_s": unpacked,
                "rlhfkit_packed_bf16_autocast_tokens_per_s": rates["packed_bf16_autocast"],
                "generate_tokens_per_s": theirs,
                "ratio": ours / theirs,
                "decode_products_us": products,
            }
            print(
                f"rollout: rlhfkit {ours:.0f} tok/s (through transformers' forward: {unpacked:.0f}; packed step "
                f"under bf16 autocast: {rates['packed_bf16_autocast']:.0f}), model.generate {theirs:.0f} tok/s, "
                f"ratio {ours / theirs:.2f}x"
            )
            print(
                "decode products, 8 rows, us: "
                + ", ".join(
                    f"{n} {products[f'{n}_out_in_f32_us']:.0f} (out, in) / {products[f'{n}_in_out_f32_us']:.0f} (in, out) / "
                    f"{products[f'{n}_out_in_bf16_us']:.0f} bf16"
                    for n in ("qkv", "gate_up", "down")
                )
            )
        if args.only in (None, "speed"):
            # Matched work per rollout: one optimiser pass on both sides (TRL's default num_iterations=1 and
            # --ppo-epochs 1), then four on both (num_iterations=4 and rlhfkit's default 4 PPO epochs).
            # Each measurement runs in its own process, so one trainer's leftovers cannot slow the next.
            names = ("trl", "ppo1", "grpo", "trl4", "ppo4", "trl_bf16", "ppo1_bf16", "trl_defaults")
            speed = {name: child(name, args.steps) for name in names}
            trl, ppo1, grpo, trl4, ppo4, trl_bf16, ppo1_bf16, trl_defaults = (speed[k] for k in names)
            results["speed"] = {
                "trl_grpo_completions_per_s": trl,
                "rlhfkit_ppo_1_epoch_completions_per_s": ppo1,
                "rlhfkit_grpo_completions_per_s": grpo,
                "trl_grpo_4_iterations_completions_per_s": trl4,
                "rlhfkit_ppo_4_epochs_completions_per_s": ppo4,
                "ppo_ratio_1_pass": ppo1 / trl,
                "grpo_ratio_1_pass": grpo / trl,
                "ppo_ratio_4_passes": ppo4 / trl4,
                "trl_grpo_bf16_default_completions_per_s": trl_bf16,
                "ppo_ratio_1_pass_vs_trl_bf16": ppo1 / trl_bf16,
                "rlhfkit_ppo_1_epoch_bf16_completions_per_s": ppo1_bf16,
                "ppo_ratio_1_pass_both_bf16": ppo1_bf16 / trl_bf16,
                "trl_grpo_defaults_completions_per_s": trl_defaults,
                "ppo_ratio_1_pass_vs_trl_defaults": ppo1 / trl_defaults,
                "clock": CLOCK_KEY,
            }
            print(
                f"speed, one optimiser pass per rollout: TRL GRPOTrainer {trl:.2f} completions/s; "
                f"rlhfkit ppo {ppo1:.2f} ({ppo1 / trl:.2f}x); rlhfkit grpo-mode {grpo:.2f} ({grpo / trl:.2f}x)"
            )
            print(
                f"speed, four passes per rollout: TRL GRPOTrainer {trl4:.2f} completions/s; "
                f"rlhfkit ppo {ppo4:.2f} ({ppo4 / trl4:.2f}x)"
            )
            print(
                f"TRL with its default bf16 autocast (slower on this CPU): {trl_bf16:.2f} completions/s; "
                f"rlhfkit ppo, one pass: float32 {ppo1 / trl_bf16:.2f}x, --dtype bf16-mixed {ppo1_bf16:.2f} "
                f"({ppo1_bf16 / trl_bf16:.2f}x)"
            )
            print(
                f"TRL with all its defaults (bf16 autocast, gradient checkpointing on): {trl_defaults:.2f} completions/s; "
                f"rlhfkit ppo with its defaults, one pass: {ppo1 / trl_defaults:.2f}x"
            )
        if args.only in (None, "memory"):
            mem = bench_memory(tmp)
            ratio = mem["ppo"]["peak_mb"] / mem["sft"]["peak_mb"]
            growth = (mem["ppo"]["peak_mb"] - mem["ppo"]["base_mb"]) / max(
                mem["sft"]["peak_mb"] - mem["sft"]["base_mb"], 1e-9
            )
            results["memory"] = {**mem, "peak_ratio": ratio, "growth_ratio": growth}
            print(
                f"memory: peak RSS sft {mem['sft']['peak_mb']:.0f} MB, ppo {mem['ppo']['peak_mb']:.0f} MB, ratio {ratio:.2f}x "
                f"(growth above the loaded process: {growth:.2f}x)"
            )
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"ppo-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
