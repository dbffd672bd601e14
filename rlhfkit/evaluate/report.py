"""Plots (PNG) and a self-contained HTML report for an evaluation: a results table, reward against KL,
training curves and sample responses. Everything model-written is escaped."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from rlhfkit.runs import read_metrics

# The curve each stage is judged by, in TRL/CleanRL names.
CURVES = {
    "sft": ["train/loss", "eval/loss"],
    "rm": ["train/loss", "train/accuracy", "eval/accuracy"],
    "dpo": ["train/loss", "rewards/margins", "rewards/accuracies"],
    "ppo": ["objective/scores", "objective/kl", "objective/rlhf_reward"],
    "rejection": ["rejection/mean_reward", "rejection/best_of_k_reward"],
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reward_vs_kl(curves: dict[str, list[tuple[float, float, float | None]]], path: Path) -> Path:
    """Gold (solid) and proxy (dashed) reward against KL to the SFT policy, one colour per method
    (Gao et al. 2022: the proxy keeps rising while gold turns down under over-optimisation)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (method, points) in enumerate(curves.items()):
        points = sorted(points)
        colour = f"C{i}"
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=colour, label=f"{method} gold")
        proxy = [(p[0], p[2]) for p in points if p[2] is not None]
        if proxy:
            ax.plot(*zip(*proxy), "s--", color=colour, alpha=0.6, label=f"{method} proxy (RM)")
    ax.set_xlabel("KL(policy || SFT), nats per response")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(runs: dict[str, Path], path: Path) -> Path:
    """One panel per stage run, its key metrics against step."""
    plt = _pyplot()
    runs = {name: p for name, p in runs.items() if read_metrics(p)}
    fig, axes = plt.subplots(1, max(len(runs), 1), figsize=(3.4 * max(len(runs), 1), 3.0), squeeze=False)
    for ax, (name, run_path) in zip(axes[0], runs.items()):
        rows = read_metrics(run_path)
        stage = name.split("-")[0]
        for key in CURVES.get(stage, ["train/loss"]):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=key, marker="." if len(pts) < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).name)}">'


def write_html(
    path: Path,
    title: str,
    table: list[dict],
    plots: list[Path],
    samples: dict[str, list[tuple[str, str]]],
    notes: list[str] = (),
) -> Path:
    """A one-file report (images inlined) that opens anywhere."""
    e = html.escape
    head = "".join(f"<th>{e(str(k))}</th>" for k in table[0]) if table else ""
    body = "".join("<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row.values()) + "</tr>" for row in table)
    sample_html = "".join(
        f"<h3>{e(method)}</h3><table><tr><th>prompt</th><th>response</th></tr>"
        + "".join(f"<tr><td>{e(p)}</td><td>{e(r)}</td></tr>" for p, r in rows)
        + "</table>"
        for method, rows in samples.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px;text-align:left}}
th{{background:#f3f3f3}}img{{max-width:100%;margin:1em 0}}</style></head><body>
<h1>{e(title)}</h1>{"".join(f"<p>{e(n)}</p>" for n in notes)}
<h2>Results</h2><table><tr>{head}</tr>{body}</table>
<h2>Plots</h2>{"".join(_img(p) for p in plots)}
<h2>Samples</h2>{sample_html}</body></html>"""
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
