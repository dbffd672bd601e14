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
    titled_tables: dict[str, list[dict] | None] | None = None,
) -> Path:
    """A one-file report (images inlined) that opens anywhere. ``titled_tables``: more tables, each under its title
    (a None value stands for ``table`` itself, to give it a title)."""
    e = html.escape

    def render(rows: list[dict]) -> str:
        head = "".join(f"<th>{e(str(k))}</th>" for k in rows[0]) if rows else ""
        body = "".join("<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row.values()) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    if titled_tables:
        results = "".join(
            f"<h3>{e(t)}</h3>{render(table if rows is None else rows)}" for t, rows in titled_tables.items()
        )
    else:
        results = render(table)
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
<h2>Results</h2>{results}
<h2>Plots</h2>{"".join(_img(p) for p in plots)}
<h2>Samples</h2>{sample_html}</body></html>"""
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


# --- `rlhfkit eval`'s plots and report ------------------------------------------------------------------------


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)[:40]


def plot_win_rates(models, judge: str, path: Path) -> Path:
    """Raw and length-controlled win rate against the baseline per model, with 95% intervals: a length-biased
    judge shows up as raw bars well above the LC ones for the long-winded models."""
    plt = _pyplot()
    rows = [(m.name, m.judges[judge]) for m in models if m.judges[judge].win_rate is not None]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * max(len(rows), 1)))
    for k, (_, j) in enumerate(rows):
        ax.errorbar(j.win_rate, k + 0.15, xerr=[[j.win_rate - j.win_lo], [j.win_hi - j.win_rate]], fmt="o",
                    color="C0", label="raw" if k == 0 else None)  # fmt: skip
        if j.lc_win_rate is not None:
            err = None if j.lc_lo is None else [[j.lc_win_rate - j.lc_lo], [j.lc_hi - j.lc_win_rate]]
            ax.errorbar(j.lc_win_rate, k - 0.15, xerr=err, fmt="s", color="C1",
                        label="length-controlled" if k == 0 else None)  # fmt: skip
    ax.axvline(0.5, color="grey", linestyle=":")
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.set_xlabel("win rate against the baseline (ties half)")
    ax.set_title(f"judge: {judge}"[:70], fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_leaderboard(entries, judge: str, path: Path) -> Path:
    """Bradley-Terry ratings (Elo scale) with their 95% bootstrap intervals, best at the top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 0.5 + 0.4 * max(len(entries), 1)))
    for k, e in enumerate(reversed(entries)):
        err = None if e.lo is None else [[e.rating - e.lo], [e.hi - e.rating]]
        ax.errorbar(e.rating, k, xerr=err, fmt="o", color="C2")
    ax.set_yticks(range(len(entries)), [e.model for e in reversed(entries)])
    ax.set_xlabel("rating (Elo scale; 400 points = 10:1 odds)")
    ax.set_title(f"leaderboard by {judge}"[:70], fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_score_vs_kl(models, judge: str, path: Path) -> Path:
    """Each model's mean score by a pointwise judge against its KL to the reference (Gao et al. 2022's axes)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for m in models:
        j = m.judges[judge]
        if m.kl is not None and j.reward_mean is not None:
            ax.plot(m.kl, j.reward_mean, "o", color="C3")
            ax.annotate(m.name, (m.kl, j.reward_mean), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("KL(model || reference), nats per response")
    ax.set_ylabel(f"mean score: {judge}"[:50])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def evaluation_plots(result, folder: Path) -> list[Path]:
    """Every plot of an ``EvalReport``: win rates and the leaderboard per judge, score against KL per reward."""
    plots = []
    for k, info in enumerate(result.judges):
        tag = f"j{k}_{_safe(info.spec)}"
        if any(m.judges[info.spec].win_rate is not None for m in result.models):
            plots.append(plot_win_rates(result.models, info.spec, folder / f"win_rates_{tag}.png"))
        plots.append(plot_leaderboard(result.leaderboards[info.spec], info.spec, folder / f"leaderboard_{tag}.png"))
        if info.kind == "pointwise" and sum(m.kl is not None for m in result.models) >= 2:
            plots.append(plot_score_vs_kl(result.models, info.spec, folder / f"score_vs_kl_{tag}.png"))
    return plots


def evaluation_html(result, path: Path, plots: list[Path], samples: dict) -> Path:
    """report.html of an evaluation: one table per judge, the leaderboards, capability, safety, reward models."""
    tables: dict[str, list[dict]] = {}
    for info in result.judges:
        rows = []
        for m in result.models:
            j = m.judges[info.spec]
            rows.append({"model": m.name, "win rate": j.win_rate, "95% low": j.win_lo, "95% high": j.win_hi,
                         "LC win rate": j.lc_win_rate, "score": j.reward_mean, "spread": j.member_spread,
                         "KL": m.kl, "length (chars)": m.mean_length})  # fmt: skip
        bias = f"; position bias {info.position_bias:+.3f}" if info.position_bias is not None else ""
        tables[f"judge {info.spec} ({info.kind}{bias})"] = rows
        tables[f"leaderboard by {info.spec}"] = [e.model_dump() for e in result.leaderboards[info.spec]]
    capability = [{"model": m.name, **m.capability.model_dump()} for m in result.models if m.capability]
    if capability:
        tables["capability retention"] = capability
    safety = [
        {"model": m.name, **m.safety.model_dump(exclude={"judge"}), **{f"judge {k}": v for k, v in (m.safety.judge or {}).items()}}
        for m in result.models
        if m.safety
    ]  # fmt: skip
    if safety:
        tables["safety"] = safety
    if result.reward_models:
        tables["reward models"] = [r.model_dump(exclude={"reliability", "by_length"}) for r in result.reward_models]
        for r in result.reward_models:
            if r.by_length:
                tables[f"{r.judge}: accuracy by length difference (chosen - rejected)"] = [
                    b.model_dump() for b in r.by_length
                ]
    notes = [f"baseline {result.baseline}; {result.prompts} prompts x {result.samples_per_prompt}; "
             f"preferences {result.preferences}; reference {result.reference}"]  # fmt: skip
    notes += [f"{m.name}: {n}" for m in result.models for n in m.notes]
    if result.timing:
        notes.append(f"{result.timing.wall_s:.1f} s wall, {result.timing.cpu_s:.1f} s CPU")
    first = next(iter(tables))
    return write_html(path, "rlhfkit eval", tables.pop(first), plots, samples, notes, {first: None, **tables})
