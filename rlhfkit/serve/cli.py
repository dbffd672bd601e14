"""``rlhfkit serve`` (the server) and ``rlhfkit ab`` (experiments, their reports, live figures, feedback files).

    rlhfkit serve --db annotations.db --port 8000                  # POST /v1/chat/completions, chat page at /
    rlhfkit ab create greeting --arm control=champion --arm treatment=challenger --split 50/50
    rlhfkit ab report greeting                                     # arms, differences, the significance test
    rlhfkit ab monitor --hours 1                                   # per version and arm
    rlhfkit ab export --kind comparison --out live.jsonl           # preferences as training data

Nothing here imports torch until a request is answered by a local model with the built-in sampler.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from rlhfkit.registry.cli import DB, fail, guarded, open_registry

ab_app = typer.Typer(help="A/B experiments over live traffic: create, split, stop, report; live figures; feedback files.",
                     no_args_is_help=True)  # fmt: skip


def serve(
    db: str = DB,
    host: str = typer.Option("127.0.0.1", help="interface to bind; keep loopback unless a TLS proxy is in front"),
    port: int = typer.Option(8000, min=1, max=65535, help="port to listen on"),
    max_batch: int = typer.Option(32, help="requests sampled together by the built-in sampler"),
    threads: int = typer.Option(1, help="torch threads of the built-in sampler"),
    max_tokens: int = typer.Option(48, help="a request's max_tokens when it gives none"),
    max_tokens_limit: int = typer.Option(512, help="the largest max_tokens a request may ask for"),
    refresh: float = typer.Option(1.0, help="seconds an alias or experiment is cached: promotions apply within this"),
    preload: bool = typer.Option(True, help="load the models of every alias and running experiment at start"),
    upstream_timeout: float = typer.Option(120.0, help="seconds to wait for an OpenAI-compatible upstream"),
    keep_alive: float = typer.Option(
        75.0, help="seconds an idle client connection is kept open; longer than clients keep theirs (httpx: 5)"
    ),
    seed: int = 0,
) -> None:
    """Serve registry aliases, versions and A/B experiments over an OpenAI-compatible API, recording every response
    and the feedback on it. Set RLHFKIT_SERVE_API_KEY to require a Bearer key on /v1."""
    import uvicorn

    from rlhfkit.serve.app import create_app
    from rlhfkit.serve.engine import Engine
    from rlhfkit.serve.upstream import Upstream

    if max_batch < 1 or threads < 1 or not 1 <= max_tokens <= max_tokens_limit or refresh < 0:
        fail("--max-batch and --threads must be >= 1, 1 <= --max-tokens <= --max-tokens-limit, --refresh >= 0")
    registry = open_registry(db)
    engine = Engine(max_batch=max_batch, threads=threads, seed=seed)
    app = create_app(
        registry.store,
        engine,
        Upstream(timeout=upstream_timeout),
        api_key=os.environ.get("RLHFKIT_SERVE_API_KEY") or None,
        default_max_tokens=max_tokens,
        max_tokens_limit=max_tokens_limit,
        refresh=refresh,
    )
    if preload:
        from rlhfkit.registry.experiments import Experiments

        targets = list(registry.aliases().values())
        for experiment in Experiments(registry).list():
            if experiment.status == "running":
                targets += [guarded(lambda a=arm: registry.resolve(a.target)) for arm in experiment.arms]
        for version in {v.id: v for v in targets if v.kind == "policy" and not v.endpoint}.values():
            engine.preload(version)
    typer.echo(f"serving {registry.store.dialect} registry on http://{host}:{port} (chat page at /)", err=True)
    # A server that closes idle connections as soon as its clients might reuse them (uvicorn's default: 5 s, as
    # httpx's pool) races them: a request sent on a connection being closed fails with a read error. 9 of 1,600
    # requests did so in bench/serve_load.py; a server that keeps them longer than clients do leaves the closing
    # to the clients, which never race themselves.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                timeout_keep_alive=keep_alive)  # fmt: skip


def _experiments(db: str):
    from rlhfkit.registry.experiments import Experiments

    return Experiments(open_registry(db))


@ab_app.command()
def create(
    name: str = typer.Argument(..., help="the experiment's name; requests name it as their model"),
    arm: list[str] = typer.Option(..., help="NAME=TARGET, TARGET an alias or NAME:NUMBER; two or more"),
    split: str | None = typer.Option(None, help="shares in the arms' order, e.g. 50/50 or 90/10 (default equal)"),
    control: str | None = typer.Option(None, help="the arm the others are compared with (default the first)"),
    metric: str = typer.Option(
        "thumbs_up",
        help="the primary metric its report tests: thumbs_up | rating | regenerated | refusal | harmful_flag",
    ),
    db: str = DB,
) -> None:
    """Start an A/B experiment: each user is assigned an arm by a hash of their id, for good."""
    from rlhfkit.registry.experiments import Arm, parse_arm, parse_split

    def make():
        arms = [parse_arm(a) for a in arm]
        shares = parse_split(split, len(arms)) if split else [1.0] * len(arms)
        return _experiments(db).create(name, [Arm(n, t, w) for (n, t), w in zip(arms, shares)], control, metric)

    experiment = guarded(make)
    total = sum(a.weight for a in experiment.arms)
    typer.echo(
        f"{experiment.name}: " + ", ".join(f"{a.name}={a.target} {a.weight / total:.0%}" for a in experiment.arms)
    )


@ab_app.command("list")
def list_experiments(db: str = DB) -> None:
    """Experiments with their arms and status."""
    for e in _experiments(db).list():
        arms = ", ".join(f"{a.name}={a.target}:{a.weight:g}" for a in e.arms)
        typer.echo(f"{e.name:20s} {e.status:8s} control {e.control:12s} metric {e.metric:12s} {arms}")


@ab_app.command("split")
def set_split(name: str, split: str = typer.Argument(..., help="new shares, e.g. 80/20"), db: str = DB) -> None:
    """Change an experiment's shares (users near a boundary move; growing an arm keeps its users)."""
    from rlhfkit.registry.experiments import parse_split

    experiments = _experiments(db)

    def change():
        current = experiments.get(name)
        shares = parse_split(split, len(current.arms))
        return experiments.set_weights(name, {a.name: w for a, w in zip(current.arms, shares)})

    e = guarded(change)
    typer.echo(f"{e.name}: " + ", ".join(f"{a.name} {a.weight:g}" for a in e.arms))


@ab_app.command()
def stop(name: str, db: str = DB) -> None:
    """Stop an experiment: its requests all go to the control arm from now on."""
    guarded(lambda: _experiments(db).stop(name))
    typer.echo(f"{name}: stopped (requests go to the control arm)")


@ab_app.command()
def report(
    name: str = typer.Argument(..., help="the experiment"),
    as_json: bool = typer.Option(False, "--json", help="the whole report as JSON"),
    db: str = DB,
) -> None:
    """The arms' figures, each arm against the control with 95% intervals and p-values, alarms, and the test."""
    from rlhfkit.serve.monitor import experiment_report

    registry = open_registry(db)
    out = guarded(lambda: experiment_report(registry.store, name))
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    typer.echo(print_report(out))


def _pct(rate: dict) -> str:
    if rate["value"] is None:
        return "-"
    if rate["lo"] is None:
        return f"{rate['value']:.1%} (n {rate['n']})"
    return f"{rate['value']:.1%} [{rate['lo']:.1%}, {rate['hi']:.1%}] (n {rate['n']})"


def print_report(out: dict) -> str:
    lines = [f"experiment {out['experiment']} ({out['status']}), control: {out['control']}", ""]
    for arm in out["arms"]:
        ttft = arm["ttft_ms"]
        p95 = f"{ttft['p95']:.0f}" if ttft["p95"] is not None else "-"
        lines.append(f"{arm['arm']} = {arm['target']}: {arm['requests']} requests from {arm['users']} users, "
                     f"time to first token p95 {p95} ms")  # fmt: skip
        for metric, rate in arm["rates"].items():
            lines.append(f"    {metric:13s} {_pct(rate)}")
    lines.append("")
    for c in out["comparisons"]:
        flag = "  ALARM" if c["worse"] else ""
        lines.append(f"{c['arm']} - {out['control']}: {c['metric']:13s} {c['diff']:+.3f} [{c['lo']:+.3f}, "
                     f"{c['hi']:+.3f}]  p = {c['p']:.3g}{flag}")  # fmt: skip
    test = out["test"]
    lines.append("")
    for r in test["results"]:
        verdict = "differs" if r["p"] < 0.05 else "no difference shown"
        lines.append(f"test ({test['metric']}, {test['method']}): {r['arm']} {verdict} at p = {r['p']:.3g}")
    if not test["results"]:
        lines.append(f"test ({test['metric']}): not enough feedback yet (two users with some in every arm)")
    return "\n".join(lines)


@ab_app.command()
def monitor(
    hours: float = typer.Option(24.0, help="look back this far"),
    as_json: bool = typer.Option(False, "--json"),
    db: str = DB,
) -> None:
    """Live figures per version and arm: requests, latency percentiles, feedback rates with intervals."""
    from rlhfkit.serve.monitor import live_figures

    registry = open_registry(db)
    out = live_figures(registry.store, hours)
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    for g in out["groups"]:
        where = f" {g['experiment']}/{g['arm']}" if g["experiment"] else ""
        p95 = g["ttft_ms"]["p95"]
        typer.echo(f"{g['version']}{where}: {g['requests']} requests, {g['users']} users, ttft p95 "
                   f"{'-' if p95 is None else f'{p95:.0f} ms'}; thumbs up {_pct(g['rates']['thumbs_up'])}")  # fmt: skip


@ab_app.command()
def export(
    kind: str = typer.Option(..., help="comparison (preferences after regenerate) | rating (thumbs and ratings)"),
    out: Path = typer.Option(..., help="JSONL file to write"),
    after: int = typer.Option(0, min=0, help="only feedback with a larger id (what a previous export did not take)"),
    db: str = DB,
) -> None:
    """Live feedback as the files the trainers read (rlhfkit.data.read_records)."""
    from rlhfkit.data.io import write_jsonl
    from rlhfkit.serve.records import live_comparisons, live_ratings

    if kind not in ("comparison", "rating"):
        fail(f"--kind {kind}: choose comparison or rating")
    registry = open_registry(db)
    rows = (live_comparisons if kind == "comparison" else live_ratings)(registry.store, after)
    try:
        write_jsonl(out, rows)
    except OSError as e:  # an --out that is a folder, or under a file
        fail(str(e))
    last = max((r["feedback_id"] for r in rows), default=after)
    typer.echo(f"wrote {len(rows)} {kind} rows to {out} (feedback ids up to {last}; next time --after {last})")
