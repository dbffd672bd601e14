"""The demo's evaluation, through the stages every user has: `rlhfkit generate` samples each policy on the held-out
prompts, best-of-N is written as a generations file, and `rlhfkit eval` judges them all against an SFT sample with
the toy world's gold utility and the reward model (the demo's table is its report), with a leaderboard, capability
retention on the toy world's questions, safety on its harmful requests, and the reward model's report card.

The seeds are the ones the demo's table has always been measured with (a baseline SFT sample at seed + 7, a second
SFT sample at seed + 8, the trained policies at seed + 9, best-of-N's samples at seed + 11), in batches of 64.
"""

from __future__ import annotations

from pathlib import Path

from rlhfkit.config import SamplingPart
from rlhfkit.config.evaluation import EvalConfig, GenerateConfig
from rlhfkit.config.pipelines import DemoConfig
from rlhfkit.data.io import write_jsonl
from rlhfkit.evaluate.schema import EvalReport
from rlhfkit.losses import best_of_n_kl
from rlhfkit.toy.data import eval_data_file
from rlhfkit.toy.evaluation import PolicySamples, as_chat, eval_prompts
from rlhfkit.toy.gold import utility

GOLD = "rlhfkit.toy.judge:gold"
BASELINE = "sft-baseline"  # the SFT sample every method is compared with
TABLE_ORDER = ["sft", "best-of-{n}", "dpo", "ppo", "rejection"]


def best_of_n_curve(model, tokenizer, prompts, proxy, cfg: DemoConfig) -> tuple[dict[int, PolicySamples], list]:
    """Best-of-n for n = 1, 2, 4, ... bon_n: the proxy's favourite among the first n of bon_n samples per prompt;
    and the (kl, gold, proxy) points of its curve."""
    from rlhfkit.rollout import TransformersSampler
    from rlhfkit.train.best_of_n import sample_and_score

    sampler = TransformersSampler(model, tokenizer, SamplingPart(max_new_tokens=cfg.max_new_tokens))
    texts, scores, _ = sample_and_score(sampler, proxy, [as_chat(p) for p in prompts], cfg.bon_n, 16, cfg.seed + 11)
    out, curve = {}, []
    n = 1
    while n <= cfg.bon_n:
        best = [group[i] for group, i in zip(texts, scores[:, :n].argmax(-1).tolist())]
        out[n] = PolicySamples(prompts, best, [utility(p, t) for p, t in zip(prompts, best)])
        proxy_mean = float(scores[:, :n].max(-1).values.mean())
        curve.append((best_of_n_kl(n), sum(out[n].gold) / len(prompts), proxy_mean))
        n *= 2
    return out, curve


def best_of_n_file(cfg: DemoConfig, sft_dir: Path, held: list, proxy, bon_file: Path) -> dict:
    """Best-of-N on the held-out prompts: the choices at ``cfg.bon_n`` written to ``bon_file`` for the evaluation,
    and the curve (KL, gold, proxy) over N."""
    from rlhfkit.models.load import load_causal_lm

    sft_model, tokenizer = load_causal_lm(str(sft_dir))
    by_n, curve = best_of_n_curve(sft_model, tokenizer, held, proxy, cfg)
    kl = best_of_n_kl(cfg.bon_n)
    write_jsonl(
        bon_file,
        [
            {
                "model": f"best-of-{cfg.bon_n}",
                "prompt_index": i,
                "prompt": [m.model_dump() for m in as_chat(p)],
                "response": t,
                "kl": kl,
                "seed": cfg.seed + 11,
            }  # fmt: skip
            for i, (p, t) in enumerate(zip(held, by_n[cfg.bon_n].texts))
        ],
    )
    return {"curve": curve}


def evaluate_demo(pipe, cfg: DemoConfig, sft_dir: Path, rm_dir: Path, policies: dict[str, Path], proxy) -> tuple:
    """Generate, then `rlhfkit eval`; returns (table rows, the report, best-of-N's curve, samples per method)."""
    from rlhfkit.evaluate import generate
    from rlhfkit.evaluate.suite import run as eval_run

    root, data = pipe.root, pipe.root / "data"
    held = eval_prompts(cfg.eval_prompts)
    prompt_file = data / "eval_prompts.jsonl"
    write_jsonl(prompt_file, [{"prompt": [m.model_dump() for m in as_chat(p)]} for p in held])

    def generated(name: str, models: list[str], seed: int) -> Path:
        config = GenerateConfig(
            models=models,
            data=str(prompt_file),
            seed=seed,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=64,
            rollout_backend="transformers",
            output_dir=str(root / name),
        )
        return pipe.stage(name, lambda: generate.run(config))

    entries = [str(generated("generate-sft", [f"sft={sft_dir}"], cfg.seed + 8))]
    baseline = generated("generate-baseline", [f"{BASELINE}={sft_dir}"], cfg.seed + 7)
    curve = []
    if "bon" in cfg.methods:
        bon_file = data / f"best-of-{cfg.bon_n}.jsonl"
        curve = pipe.kept("best-of-n", lambda: best_of_n_file(cfg, sft_dir, held, proxy, bon_file))["curve"]
        entries.append(str(bon_file))
    if policies:
        entries.append(str(generated("generate-policies", [f"{m}={p}" for m, p in policies.items()], cfg.seed + 9)))

    eval_cfg = EvalConfig(
        models=entries,
        baseline=str(baseline),
        judges=[GOLD, str(rm_dir)],
        reference=str(sft_dir),
        rm_data=str(data / "comparisons_eval.jsonl"),
        rm_best_of_4_data=str(data / "best_of_4.jsonl") if (data / "best_of_4.jsonl").stat().st_size else None,
        task_data=str(eval_data_file("task")),
        perplexity_data=str(eval_data_file("reference-text")),
        redteam_data=str(eval_data_file("redteam")),
        benign_data=str(eval_data_file("benign")),
        max_tasks=cfg.eval_tasks,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        output_dir=str(root / "eval"),
    )
    eval_dir = pipe.stage("eval", lambda: eval_run(eval_cfg))
    report = EvalReport.read(eval_dir / "eval.json")
    samples = {}
    for entry in entries:
        for name, group in generate.read_generations(entry).items():
            samples[name] = [(p.text, r.response) for p, r in zip(held[:6], group.rows[:6])]
    rm_card = next((r for r in report.reward_models if r.judge == str(rm_dir)), None)
    rows = []
    order = [name.format(n=cfg.bon_n) for name in TABLE_ORDER]
    for m in sorted((m for m in report.models if not m.is_baseline), key=lambda m: order.index(m.name)):
        gold, rm = m.judges[GOLD], m.judges[str(rm_dir)]
        rows.append(
            {
                "method": m.name,
                "gold": gold.reward_mean,
                "win_rate": gold.win_rate,
                "win_lo": gold.win_lo,
                "win_hi": gold.win_hi,
                "lc_win_rate": gold.lc_win_rate,
                "kl_to_sft": m.kl,
                "proxy_reward": rm.reward_mean,
                "rm_heldout_acc": rm_card.pairwise_accuracy if rm_card else None,
            }
        )
    return rows, report, curve, samples
