"""Live figures from what serving stored: per version and arm, and an experiment's arms against its control.

For every group of responses: requests, users, time to first token and total latency (p50, p95, p99), and
rates with 95% intervals, each taken over users (the unit an experiment randomises; ``rlhfkit.evaluate.ab``):

    thumbs_up     thumbs up / thumbs given                         higher is better
    rating        mean rating / its scale                          higher is better
    regenerated   responses the user asked to regenerate           lower is better
    refusal       responses that refuse (``rlhfkit.evaluate.safety.is_refusal``, stored with each response)
    harmful_flag  responses a user flagged as harmful              lower is better

An arm raises an alarm on a metric when its difference from the control lies wholly on the worse side of zero
(its 95% interval excludes zero). Refusal counts as worse when higher: over-refusal is the usual regression.
The interval is per metric and per look; an experiment watched continuously will see an occasional false alarm,
so the decision belongs to ``rlhfkit ab report`` at the planned size, whose test is on the experiment's primary
metric (chosen when it was created).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from sqlalchemy import select

from rlhfkit.evaluate.ab import compare, percentile, ratio_estimate
from rlhfkit.feedback.db import Store
from rlhfkit.feedback.models import utcnow
from rlhfkit.registry.experiments import Experiments
from rlhfkit.registry.store import Registry
from rlhfkit.registry.tables import feedback, responses, versions

# metric -> +1 when higher is better, -1 when lower is better
METRICS = {"thumbs_up": 1, "rating": 1, "regenerated": -1, "refusal": -1, "harmful_flag": -1}


def _load(store: Store, where) -> tuple[list, dict]:
    cols = [responses.c.id, responses.c.user_id, responses.c.version_id, responses.c.experiment, responses.c.arm,
            responses.c.ttft_ms, responses.c.latency_ms, responses.c.refusal, responses.c.regenerate_of]  # fmt: skip
    with store.read_conn() as conn:
        rows = list(conn.execute(select(*cols).where(where)))
    with store.read_conn() as conn:
        fb = conn.execute(
            select(feedback.c.response_id, feedback.c.kind, feedback.c.value)
            .join(responses, responses.c.id == feedback.c.response_id)
            .where(where)
            .order_by(feedback.c.id)
        )
        last: dict[tuple, object] = {}
        for response_id, kind, value in fb:
            if kind in ("thumbs", "rating"):
                last[(response_id, kind)] = value  # the user's last word on it
            elif kind == "flag" and value == "harmful":
                last[(response_id, "harmful")] = True
    return rows, last


def figures(rows: list, last: dict) -> dict:
    """The figures of one group of responses (``rows``) given their feedback (``last``)."""
    regenerated = {r.regenerate_of for r in rows if r.regenerate_of}
    per_user: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for r in rows:
        unit = per_user[r.user_id or r.id]  # a request without a user is its own unit
        for metric, hit in (("regenerated", r.id in regenerated), ("refusal", r.refusal),
                            ("harmful_flag", (r.id, "harmful") in last)):  # fmt: skip
            unit[metric][0] += bool(hit)
            unit[metric][1] += 1
        thumbs = last.get((r.id, "thumbs"))
        if thumbs is not None:
            unit["thumbs_up"][0] += bool(thumbs)
            unit["thumbs_up"][1] += 1
        rating = last.get((r.id, "rating"))
        if rating is not None:
            unit["rating"][0] += rating["rating"] / rating["scale"]
            unit["rating"][1] += 1
    ttft = [r.ttft_ms for r in rows if r.ttft_ms is not None]
    latency = [r.latency_ms for r in rows if r.latency_ms is not None]
    out: dict = {"requests": len(rows), "users": len(per_user)}
    for name, values in (("ttft_ms", ttft), ("latency_ms", latency)):
        out[name] = {f"p{q}": percentile(values, q) for q in (50, 95, 99)}
    out["rates"] = {}
    for metric in METRICS:
        est = ratio_estimate([tuple(u[metric]) for u in per_user.values() if metric in u])
        interval = est.interval
        out["rates"][metric] = {
            "value": est.value,
            "lo": interval[0] if interval else None,
            "hi": interval[1] if interval else None,
            "n": int(est.denominator),
            "users": est.units,
            "_estimate": est,
        }
    return out


def _public(group: dict) -> dict:
    """Without the estimator objects (JSON-ready)."""
    return {**group, "rates": {m: {k: v for k, v in r.items() if k != "_estimate"} for m, r in group["rates"].items()}}


def live_figures(store: Store, hours: float = 24.0) -> dict:
    """Per (version, experiment, arm) over the last ``hours``."""
    since = utcnow() - timedelta(hours=hours)
    rows, last = _load(store, responses.c.created_at >= since)
    with store.read_conn() as conn:
        refs = {i: f"{n}:{k}" for i, n, k in conn.execute(select(versions.c.id, versions.c.name, versions.c.number))}
    groups = defaultdict(list)
    for r in rows:
        groups[(r.version_id, r.experiment, r.arm)].append(r)
    out = []
    for (version_id, experiment, arm), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        group = _public(figures(members, last))
        out.append({"version": refs.get(version_id), "experiment": experiment, "arm": arm, **group})
    return {"hours": hours, "groups": out}


def experiment_report(store: Store, name: str) -> dict:
    """Every arm's figures, each arm against the control (difference, 95% interval, two-sided p per metric), the
    alarms, and the test on the experiment's primary metric."""
    experiment = Experiments(Registry(store)).get(name)
    rows, last = _load(store, responses.c.experiment == name)
    by_arm = defaultdict(list)
    for r in rows:
        by_arm[r.arm].append(r)
    arms = {a.name: figures(by_arm.get(a.name, []), last) for a in experiment.arms}
    control = arms[experiment.control]
    comparisons, alarms = [], []
    for arm in experiment.arms:
        if arm.name == experiment.control:
            continue
        for metric, better in METRICS.items():
            d = compare(arms[arm.name]["rates"][metric]["_estimate"], control["rates"][metric]["_estimate"])
            if d is None:
                continue
            worse = d.hi < 0 if better > 0 else d.lo > 0
            row = {"arm": arm.name, "metric": metric, "diff": d.diff, "lo": d.lo, "hi": d.hi, "z": d.z, "p": d.p,
                   "worse": worse}  # fmt: skip
            comparisons.append(row)
            if worse:
                alarms.append(f"{arm.name}: {metric} {d.diff:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] vs {experiment.control}")
    headline = [c for c in comparisons if c["metric"] == experiment.metric]
    return {
        "experiment": name,
        "status": experiment.status,
        "control": experiment.control,
        "arms": [
            {"arm": a.name, "target": a.target, "weight": a.weight, **_public(arms[a.name])} for a in experiment.arms
        ],
        "comparisons": comparisons,
        "alarms": alarms,
        "test": {
            "metric": experiment.metric,
            "method": "two-sided z-test on the difference of per-user ratios (delta method)",
            "results": [{k: c[k] for k in ("arm", "diff", "lo", "hi", "p")} for c in headline],
            "significant": {c["arm"]: c["p"] < 0.05 for c in headline},
        },
    }
