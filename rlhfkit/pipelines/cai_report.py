"""The report of the ``smollm2-cai`` preset: refusal rates before and after, targets, the AI labels' agreement
with the refusal rule, samples of critiques and revisions, red-team rounds, time per step and the machine's
load (``report.json`` and ``report.md`` in the run folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rlhfkit.data.io import read_jsonl


def revision_samples(trace_path: Path, harmful: set[str], n: int) -> list[dict]:
    """The first ``n`` // 2 harmful and the rest benign requests of the trace: answer, critique, revision."""
    rows = read_jsonl(trace_path) if trace_path.exists() else []
    picked = [r for r in rows if r["prompt"] in harmful][: (n + 1) // 2]
    picked += [r for r in rows if r["prompt"] not in harmful][: n - len(picked)]
    return [
        {
            "prompt": r["prompt"],
            "kind": "harmful" if r["prompt"] in harmful else "benign",
            "answer": r["initial"],
            "steps": r["rounds"],
        }
        for r in picked
    ]


def make_report(cfg, results: dict, agreement: dict, red: dict, run_dir: Path, pipe, threads: int, load_start, labels):
    rates = {
        n: {"harmful_refusal": r["harmful_refusal"], "benign_refusal": r["benign_refusal"]} for n, r in results.items()
    }
    meets = {
        n: r["harmful_refusal"] >= cfg.target_harmful_refusal and r["benign_refusal"] <= cfg.target_benign_refusal
        for n, r in rates.items()
        if n != "base"
    }
    lines = ["| model | harmful refused | benign refused | meets targets |", "|---|---|---|---|"]
    for n, r in rates.items():
        ok = {True: "yes", False: "no"}.get(meets.get(n), "")
        lines.append(f"| {labels[n]} | {r['harmful_refusal']:.0%} | {r['benign_refusal']:.0%} | {ok} |")
    table = "\n".join(lines)
    prompts = read_jsonl(run_dir / "prompts.jsonl")
    harmful = {r["prompt"] for r in prompts if r["kind"] == "harmful"}
    revisions = revision_samples(run_dir / "revise" / "trace.jsonl", harmful, cfg.n_samples)
    base = results["base"]["answers"]
    picked = [r["prompt"] for r in base if r["kind"] == "harmful"][: (cfg.n_samples + 1) // 2]
    picked += [r["prompt"] for r in base if r["kind"] == "benign"][: cfg.n_samples // 2]
    by_model = {n: {r["prompt"]: r["response"] for r in res["answers"]} for n, res in results.items()}
    samples = [{"prompt": p, **{n: by_model[n][p] for n in results}} for p in picked]
    totals = pipe.totals()
    report = {
        "rates": rates,
        "meets_targets": meets,
        "targets": {"harmful_refusal_min": cfg.target_harmful_refusal, "benign_refusal_max": cfg.target_benign_refusal},
        "label_agreement_with_refusal_rule": agreement,
        "redteam_attack_success_rate_per_round": red,
        "time": {**totals, "steps": pipe.steps},
        "machine": {
            "cores": os.cpu_count(),
            "torch_threads": threads,
            "load_avg_start": load_start,
            "load_avg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "revision_samples": revisions,
        "samples": samples,
        "markdown_table": table,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    md = [
        "# SmolLM2-135M-Instruct: Constitutional AI (no hand-written refusals in training)",
        "",
        f"Greedy answers ({cfg.max_new_tokens} new tokens) to {cfg.n_eval_harmful} harmful and {cfg.n_eval_benign} "
        "benign held-out requests of the harmless preset; refusals by `rlhfkit.toy.harmless.is_refusal`.",
        "",
        table,
        "",
        f"Feedback model {cfg.feedback_model} ({cfg.feedback_format}); agreement of its labels with the refusal rule "
        f"(refuse harmful, answer benign) on the pairs where one side refuses: {agreement}.",
        "",
    ]
    if red:
        md += [
            "| red team: attack success rate | "
            + " | ".join(f"round {i + 1}" for i in range(cfg.redteam_rounds))
            + " |"
        ]
        md += ["|---|" + "---|" * cfg.redteam_rounds]
        md += [f"| {n} | " + " | ".join(f"{x:.0%}" for x in v) + " |" for n, v in red.items()]
        md += [""]
    md += [
        f"Time: {totals['wall_s'] / 60:.1f} min wall, {totals['cpu_s'] / 60:.1f} min process CPU ({threads} torch "
        f"threads on {os.cpu_count()} cores; load average at start {load_start}).",
        "",
        "| step | wall s | CPU s |",
        "|---|---|---|",
    ]
    md += [f"| {k} | {v.get('wall_s', 'reused')} | {v.get('cpu_s', '')} |" for k, v in pipe.steps.items()]
    md += ["", "## Critiques and revisions (SL-CAI)", ""]
    for s in revisions:
        md += [f"**{s['kind']}**: {s['prompt']}", "", f"- *answer*: {s['answer']}"]
        for step in s["steps"]:
            md += [f"- *critique ({step['principle']})*: {step['critique']}", f"- *revision*: {step['revision']}"]
        md.append("")
    md += ["## Answers before and after", ""]
    for s in samples:
        md += [f"**{s['prompt']}**", ""]
        md += [f"- *{labels[n]}*: " + s[n].replace("\n", " ")[:300] for n in results]
        md.append("")
    (run_dir / "report.md").write_text("\n".join(md))
    return report
