"""`rlhfkit eval`: N models against a baseline, judged by any judges, with a leaderboard, capability retention,
safety and a reward-model report, written as ``eval.json`` (``rlhfkit.evaluate.schema.EvalReport``), PNG plots and
``report.html``.

    rlhfkit eval --models '[runs/dpo-1, runs/ppo-1]' --baseline runs/sft-1 --data prompts.jsonl \\
        --judges '[runs/rm-1, lm:smollm2-135m-instruct]' --reference runs/sft-1
    rlhfkit eval --models '[runs/generate-1]' --baseline sft --judges '[runs/rm-1]'      # generate's responses
    rlhfkit eval --models '[...]' --baseline sft --judges '[rlhfkit.toy.judge:gold]' --task-data toy \\
        --perplexity-data toy --redteam-data toy --benign-data toy --rm-data pairs.jsonl

Python (the production loop's gate calls this):

    from rlhfkit.evaluate.suite import evaluate_models
    report = evaluate_models(["runs/ppo-2"], baseline="runs/ppo-1", judges=["runs/rm-1"], data="prompts.jsonl")
    report.model("ppo-2").judges["runs/rm-1"].win_rate

What it does, in order: models given as model settings answer the prompts (``rlhfkit.evaluate.generate``: the same
seed for every model, resumable in the run folder); models given as generations files bring their responses; every
model's responses are put side by side on the prompts all of them answered (``judging.align``); each judge judges
them (``judging``): per model the win rate against the baseline with a 95% interval (ties half) and the
length-controlled win rate, for a reward the mean and spread of its scores, and a Bradley-Terry leaderboard with
bootstrap intervals over all pairwise judgements; each model that can be loaded gets the KL of its samples to the
reference, held-out perplexity, exact match on the task set, and its share of harmful requests complied with and of
benign ones refused (``capability``); each reward judge gets a report card on labelled data (``rm_report``).

Every finished piece (the responses, batch by batch; a judge's scores of one model or its verdicts on one pair; one
model's checks) is kept in the run folder as it is done, so rerunning an interrupted evaluation does only the rest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config.evaluation import EvalConfig
from rlhfkit.evaluate.checks import log, model_checks
from rlhfkit.evaluate.generate import (
    ModelGenerations,
    generate_to_file,
    generation_progress,
    is_generations,
    parse_named,
    read_generations,
)
from rlhfkit.evaluate.schema import Capability, EvalReport, JudgeInfo, ModelReport, Safety, Timing


@dataclass
class Entry:
    """One model to evaluate: its name, where it came from, and its responses (once sampled or read)."""

    name: str
    source: str
    spec: str | None = None  # a model setting: sampled here, and loaded for KL, capability and safety
    generations: ModelGenerations | None = None


class Finished:
    """The pieces of an evaluation already done, in ``path`` (JSONL, appended as each is done), each under a hash of
    what it depends on (``key``: the judge or model and the responses): ``finished(key, compute)`` reads a piece back
    or computes and keeps it. Without a path it keeps nothing."""

    def __init__(self, path: Path | None, resume: bool = True):
        from rlhfkit.data.io import read_resume_rows, resume_writer

        self.done = {}
        if path is not None and resume and path.exists():
            self.done = {r["key"]: r["value"] for r in read_resume_rows(path, ("key", "value"))}
        self.out = resume_writer(path, [{"key": k, "value": v} for k, v in self.done.items()]) if path else None

    def __call__(self, key: tuple, compute):
        digest = hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()
        if digest not in self.done:
            self.done[digest] = compute()
            if self.out is not None:
                self.out.write(json.dumps({"key": digest, "value": self.done[digest]}) + "\n")
                self.out.flush()
        return self.done[digest]

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


def resolve_entries(models: list[str], baseline: str) -> tuple[list[Entry], str]:
    """The entries the settings name (a generations file expands to its models), and the baseline's name (added as
    an entry when it is not one of the models' names)."""
    entries: list[Entry] = []

    def add(text: str, setting: str = "models") -> list[Entry]:
        name, target = parse_named(text)
        explicit = text.strip() != target
        if is_generations(target):
            groups = read_generations(target)
            if explicit:
                if name not in groups and len(groups) > 1:
                    raise ValueError(f"setting '{setting}': {target} has no model named {name!r} ({', '.join(groups)})")
                group = groups.get(name) or next(iter(groups.values()))
                group.name = name
                groups = {name: group}
            return [Entry(n, target, g.spec, g) for n, g in groups.items()]
        from rlhfkit.specs import parse_model_spec

        parse_model_spec(target, setting)
        return [Entry(name, target, target)]

    for text in models:
        entries += add(text)
    names = [e.name for e in entries]
    if baseline not in names:
        extra = add(baseline, "baseline")
        entries = extra + entries
        baseline = extra[0].name
    names = [e.name for e in entries]
    if len(set(names)) < len(names):
        raise ValueError(f"two models have the same name ({names}); name them as NAME=SPEC")
    return entries, baseline


def sample_entries(cfg: EvalConfig, entries: list[Entry], folder: Path) -> None:
    """Responses for every entry given as a model setting, through the generate stage's resumable writer."""
    from rlhfkit.data.prompts import read_prompts

    to_sample = [e for e in entries if e.generations is None]
    if not to_sample:
        return
    if not cfg.data:
        raise ValueError(f"setting 'data': prompts are needed to sample {', '.join(e.name for e in to_sample)}")
    prompts = read_prompts(cfg.data)[: cfg.max_prompts]
    log(f"sampling {len(to_sample)} model(s) on {len(prompts)} prompts x {cfg.n}")
    models = [(e.name, e.spec) for e in to_sample]
    progress = generation_progress(cfg, len(models), len(prompts), folder, "eval: sampling")
    path = generate_to_file(cfg, models, prompts, folder, progress)
    progress.close()
    groups = read_generations(path)
    for e in to_sample:
        e.generations = groups[e.name]


def evaluate_models(
    models: list[str],
    baseline: str,
    judges: list[str],
    data: str | None = None,
    *,
    output_dir: str | Path | None = None,
    **settings,
) -> EvalReport:
    """Evaluate ``models`` (model settings or generations files) against ``baseline`` with ``judges``; any other
    setting of ``EvalConfig`` by keyword. Writes eval.json, plots and report.html into ``output_dir`` when given
    (a plain folder, not a run folder); returns the report."""
    cfg = EvalConfig(models=list(models), baseline=baseline, judges=list(judges), data=data, progress=False, **settings)
    if output_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return evaluate(cfg, Path(tmp), write_files=False)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return evaluate(cfg, Path(output_dir))


def evaluate(cfg: EvalConfig, folder: Path, write_files: bool = True) -> EvalReport:
    """The whole evaluation, with ``folder`` for the sampled responses (resumable) and the report's files."""
    import torch

    from rlhfkit.evaluate import judging, report
    from rlhfkit.judges import load_judge

    wall0, cpu0 = time.perf_counter(), time.process_time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    entries, baseline = resolve_entries(cfg.models, cfg.baseline)
    judges = [load_judge(spec, batch_size=cfg.judge_batch_size) for spec in cfg.judges]
    sample_entries(cfg, entries, folder / "generations")
    pool = judging.align({e.name: e.generations for e in entries}, baseline)
    log(f"{len(pool.names)} models, {len(pool.keys)} responses each; judging with {len(judges)} judge(s)")
    finished = Finished(folder / "finished.jsonl" if write_files else None, cfg.resume)

    by_name = {e.name: e for e in entries}
    results = {name: {} for name in pool.names}
    leaderboards, infos = {}, []
    for judge in judges:
        j = judging.judge_pool(judge, pool, cfg.all_pairs, finished)
        infos.append(JudgeInfo(spec=judge.spec, kind=j.kind, position_bias=j.position_bias))
        for name in pool.names:
            results[name][judge.spec] = judging.result_against_baseline(
                j, pool, name, cfg.preferences, n_boot=cfg.lc_bootstrap, seed=cfg.seed
            )
        leaderboards[judge.spec] = judging.leaderboard(j, pool, cfg.all_pairs, cfg.n_bootstrap, cfg.seed)

    models = []
    for name in pool.names:
        rows = by_name[name].generations.rows
        tokens = [len(r.token_ids) for r in rows if r.token_ids is not None]
        ended = [r.ended for r in rows if r.ended is not None]
        notes = (
            [f"{pool.dropped[name]} responses without a partner in every model left out"]
            if name in pool.dropped
            else []
        )
        models.append(
            ModelReport(
                name=name,
                source=by_name[name].source,
                spec=by_name[name].spec,
                is_baseline=name == baseline,
                n=len(pool.keys),
                mean_length=float(pool.lengths(name).mean()),
                mean_tokens=sum(tokens) / len(tokens) if len(tokens) == len(rows) else None,
                eos_rate=sum(ended) / len(ended) if ended else None,
                judges=results[name],
                notes=notes,
            )
        )
    answers = model_checks(cfg, models, by_name, finished)
    finished.close()
    if write_files and answers:
        from rlhfkit.data.io import write_jsonl

        write_jsonl(folder / "answers.jsonl", answers)

    reward_models, plots = [], []
    plot_dir = folder if write_files else None
    if cfg.rm_data or cfg.rm_best_of_4_data:
        from rlhfkit.evaluate.rm_report import reward_model_report

        for k, judge in enumerate(judges):
            if hasattr(judge, "reward"):
                card, files = reward_model_report(judge.reward, cfg.rm_data, cfg.rm_best_of_4_data, plot_dir, f"j{k}")
                reward_models.append(card)
                plots += files
    out = EvalReport(
        baseline=baseline,
        reference=cfg.reference,
        prompts=len({k[0] for k in pool.keys}),
        samples_per_prompt=max(k[1] for k in pool.keys) + 1,
        preferences=cfg.preferences,
        judges=infos,
        models=models,
        leaderboards=leaderboards,
        reward_models=reward_models,
    )
    if write_files:
        plots = report.evaluation_plots(out, folder) + plots
        out.plots = [p.name for p in plots]
    out.timing = Timing(
        wall_s=round(time.perf_counter() - wall0, 2),
        cpu_s=round(time.process_time() - cpu0, 2),
        threads=torch.get_num_threads(),
    )
    if write_files:
        out.write(folder / "eval.json")
        report.evaluation_html(out, folder / "report.html", plots, samples(pool, cfg.samples_in_report))
    return out


def samples(pool, n: int) -> dict[str, list[tuple[str, str]]]:
    from rlhfkit.data.records import flat_text

    return {
        name: [(flat_text(p), r) for p, r in zip(pool.prompts[:n], pool.responses[name][:n])] for name in pool.names
    }


def run(cfg: EvalConfig) -> Path:
    """The `rlhfkit eval` stage: a run folder holding eval.json, the plots, report.html and the sampled responses."""
    from rlhfkit.runs import RunFolder, parent_of

    run_dir = RunFolder.open(cfg.stage, cfg)
    for spec in cfg.judges:  # a mistyped judge fails before anything is sampled or written
        from rlhfkit.specs import parse_judge_spec

        parse_judge_spec(spec)
    entries, _ = resolve_entries(cfg.models, cfg.baseline)
    parents = [parent_of(f"model:{e.name}", e.source) for e in entries]
    parents += [parent_of("judge", spec) for spec in cfg.judges]
    data = {k: getattr(cfg, k) for k in ("data", "rm_data", "rm_best_of_4_data", "task_data", "perplexity_data")}
    run_dir.start(parents, {k: v for k, v in data.items() if v})
    if not cfg.resume:
        shutil.rmtree(run_dir.path / "generations", ignore_errors=True)
    result = evaluate(cfg, run_dir.path)
    run_dir.finish(
        {
            "baseline": result.baseline,
            "judges": [j.spec for j in result.judges],
            "models": [summary_row(m, result.judges[0].spec) for m in result.models],
            "leaderboard": [e.model_dump() for e in result.leaderboards[result.judges[0].spec]],
            "reward_models": [r.model_dump(exclude={"reliability", "by_length"}) for r in result.reward_models],
            "wall_seconds": result.timing.wall_s,
            "cpu_seconds": result.timing.cpu_s,
        }
    )
    print_report(result)
    return run_dir.path


def summary_row(m: ModelReport, judge: str) -> dict:
    j = m.judges.get(judge)
    return {
        "name": m.name,
        "win_rate": j.win_rate if j else None,
        "lc_win_rate": j.lc_win_rate if j else None,
        "reward_mean": j.reward_mean if j else None,
        "kl": m.kl,
        "mean_length": m.mean_length,
    }


def print_report(r: EvalReport) -> None:
    """The figures a user ran the evaluation for: per model and judge, and the first judge's leaderboard."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for info in r.judges:
        table = Table(title=f"judge {info.spec} (baseline {r.baseline}; 95% intervals)", title_justify="left")
        for col in ("model", "win rate", "LC win rate", "score", "KL", "length"):
            table.add_column(col, no_wrap=True)
        for m in r.models:
            j = m.judges[info.spec]
            win = "-" if j.win_rate is None else f"{j.win_rate:.1%} [{j.win_lo:.0%}-{j.win_hi:.0%}]"
            lc = "-" if j.lc_win_rate is None else f"{j.lc_win_rate:.1%}"
            if j.lc_lo is not None:
                lc += f" [{j.lc_lo:.0%}-{j.lc_hi:.0%}]"
            score = "-" if j.reward_mean is None else f"{j.reward_mean:.3f}"
            kl = "-" if m.kl is None else f"{m.kl:.2f}"
            table.add_row(m.name, win, lc, score, kl, f"{m.mean_length:.0f}")
        console.print(table)
    first = r.judges[0].spec
    table = Table(title=f"leaderboard by {first} (Bradley-Terry, Elo scale, 95% bootstrap)", title_justify="left")
    for col in ("model", "rating", "95% interval", "W-L-T"):
        table.add_column(col, no_wrap=True)
    for e in r.leaderboards[first]:
        interval = "-" if e.lo is None else f"{e.lo:.0f} - {e.hi:.0f}"
        table.add_row(e.model, f"{e.rating:.0f}", interval, f"{e.wins}-{e.losses}-{e.ties}")
    console.print(table)
    checked = [m for m in r.models if m.capability is not None or m.safety is not None]
    if checked:
        table = Table(title="capability and safety (95% intervals)", title_justify="left")
        # two-line headers: one-line ones made the table wider than an 80-column log, which cut the figures short
        for col in ("model", "perplexity", "exact\nmatch", "harmful\ncomplied", "benign\nrefused"):
            table.add_column(col, no_wrap=True)
        for m in checked:
            c, s = m.capability or Capability(), m.safety or Safety()
            table.add_row(
                m.name,
                "-" if c.perplexity is None else f"{c.perplexity:.2f}",
                _share(c.exact_match, c.exact_match_lo, c.exact_match_hi),
                _share(s.harmful_complied, s.harmful_complied_lo, s.harmful_complied_hi),
                _share(s.benign_refused, s.benign_refused_lo, s.benign_refused_hi),
            )
        console.print(table)
    for rm in r.reward_models:
        acc = "-" if rm.pairwise_accuracy is None else f"{rm.pairwise_accuracy:.3f}"
        bo4 = "-" if rm.best_of_4_accuracy is None else f"{rm.best_of_4_accuracy:.3f}"
        ece = "-" if rm.ece is None else f"{rm.ece:.3f}"
        print(f"reward model {rm.judge}: pairwise accuracy {acc} ({rm.pairs} pairs), best-of-4 {bo4}, ECE {ece}")
    if r.timing:
        print(f"eval: {r.timing.wall_s:.1f} s wall, {r.timing.cpu_s:.1f} s CPU ({r.timing.threads} thread(s))")


def _share(rate: float | None, lo: float | None, hi: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%} [{lo:.0%}-{hi:.0%}]"
