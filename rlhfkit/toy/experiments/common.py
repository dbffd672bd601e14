"""What the toy-world experiments share with the demo: its SFT policy and its samples, a whole demo run with the
over-optimisation monitor (the evaluation experiments stand beside it), monitored runs' check samples judged by gold,
and the seeds loop."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from rlhfkit.config import SamplingPart, StageConfig, describe_settings, load_config, parse_overrides
from rlhfkit.config.pipelines import DemoConfig
from rlhfkit.data.io import read_jsonl, write_jsonl
from rlhfkit.pipelines.base import Pipeline
from rlhfkit.quiet import quiet_third_parties
from rlhfkit.runs import RunFolder
from rlhfkit.toy.evaluation import as_chat
from rlhfkit.toy.world import Prompt, demonstrations


def finished_figures(cfg: StageConfig) -> dict | None:
    """The figures of a seed's folder that finished with these settings (None when it has not finished)."""
    folder = RunFolder(cfg.output_dir)
    if not folder.is_finished():
        return None
    folder.config = cfg
    folder.refuse_other_settings()
    return folder.card().figures


def stage_settings(root: Path, name: str, seed: int) -> dict:
    return dict(output_dir=str(root / name), seed=seed, progress=True, report_to=["jsonl"])


def demo_sft(pipe: Pipeline, seed: int, quick: bool) -> Path:
    """The demo's SFT stage with the demo's settings (``DemoConfig``'s), so the policy is the demo's; ``quick``:
    150 steps (the demo's quick 20 give text too garbled for annotators to tell apart)."""
    from rlhfkit.train import sft

    demo = DemoConfig(seed=seed)
    if quick:
        demo = demo.model_copy(update={"sft_steps": 150})
    path = pipe.root / "data" / "demonstrations.jsonl"
    write_jsonl(path, demonstrations(2000, seed=seed, quality=demo.demo_quality))
    return pipe.stage(
        "sft",
        lambda: sft.run(
            sft.SFTConfig(
                model=demo.model,
                data=str(path),
                max_steps=demo.sft_steps,
                lr=demo.sft_lr,
                batch_size=32,
                log_every=25,
                **stage_settings(pipe.root, "sft", seed),
            )
        ),
    )


def demo_folder(demo_dir: str, seed: int, quick: bool) -> Path:
    """The seed's monitored demo folder: ``demo_dir`` with ``{seed}`` filled in, ``-quick`` added for a smoke run."""
    folder = Path(demo_dir.format(seed=seed))
    return folder.with_name(folder.name + "-quick") if quick else folder  # never mixed with a full demo


def first_labels(demo_data: Path, n: int, path: Path) -> Path:
    """The demo's first ``n`` comparisons (``demo_data``/comparisons.jsonl) written to ``path``: the labels of a
    reward model made weak on purpose."""
    write_jsonl(path, read_jsonl(demo_data / "comparisons.jsonl")[:n])
    return path


def monitored_demo(demo_dir: str, seed: int, quick: bool) -> Path:
    """The seed's demo run with the monitor on (its PPO, DPO and rejection sampling checked, a second reward model
    trained on the held-out labels): ``demo_dir`` with ``{seed}`` filled in (``-quick`` added for a smoke run), reused when finished, else run (a rerun
    resumes it stage by stage), as `rlhfkit demo --seed S --monitor --output-dir DIR` does."""
    from rlhfkit.pipelines.toy import run as demo_run

    folder = demo_folder(demo_dir, seed, quick)
    if not RunFolder(folder).is_finished():
        demo_run(DemoConfig(seed=seed, monitor=True, quick=quick, output_dir=str(folder)))
    return folder


def check_gold(run: Path) -> dict[int, float]:
    """Mean gold utility of each check's samples of a monitored run (``monitor/samples.jsonl``), by step: the
    monitor never sees it, the experiments judge it with it afterwards."""
    from rlhfkit.toy.judge import gold

    by_step: dict[int, tuple[list, list]] = {}
    for line in (run / "monitor" / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        prompts, texts = by_step.setdefault(row["step"], ([], []))
        prompts.append(row["prompt"])
        texts.append(row["response"])
    return {step: sum(gold(p, t)) / len(t) for step, (p, t) in sorted(by_step.items())}


def sample_responses(
    model, tokenizer, prompts: list[Prompt], n: int, max_new_tokens: int, seed: int, path: Path
) -> list[list[str]]:
    """``n`` samples per prompt, drawn as the demo draws them (chunks of 64, one generator seeded by ``seed``);
    kept in ``path`` so a rerun reuses them."""
    from rlhfkit.rollout import TransformersSampler

    if path.exists():
        return json.loads(path.read_text())
    sampler = TransformersSampler(model, tokenizer, SamplingPart(max_new_tokens=max_new_tokens))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, len(prompts), 64):
        chunk = prompts[s : s + 64]
        texts = sampler.generate([as_chat(p) for p in chunk], n=n, generator=gen).texts
        out += [texts[i * n : (i + 1) * n] for i in range(len(chunk))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def run_seeds(
    description: str, config_class: type[StageConfig], run: Callable, summarise: Callable, default_dir: str
) -> None:
    """``--seeds 0 1 2 [--output-dir DIR] [--setting value ...]`` (``--help`` lists the settings): one folder per
    seed (DIR/seed-S, reused when finished), then ``summarise(results, DIR)`` prints the table and writes
    DIR/summary.json."""
    quiet_third_parties()  # as the `rlhfkit` program runs (its --verbose has no counterpart here)
    parser = argparse.ArgumentParser(
        description=description,
        # the experiment's own settings, taken as --setting value after the two below (parse_known_args)
        epilog=describe_settings(config_class),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output-dir", default=default_dir)
    args, rest = parser.parse_known_args()
    root = Path(args.output_dir)
    results = []
    for seed in args.seeds:
        overrides = {**parse_overrides(rest), "seed": seed, "output_dir": str(root / f"seed-{seed}")}
        results.append(run(load_config(config_class, None, overrides)))
    summary = summarise(results, root)
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {root / 'summary.json'}")
