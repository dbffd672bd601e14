"""A/B statistics by hand and by simulation, and the experiment report over a real database: per-arm rates over
users, differences with intervals and p-values, alarms, the command's table."""

from __future__ import annotations

import math
import random

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.evaluate.ab import compare, percentile, ratio_estimate
from rlhfkit.feedback.models import utcnow
from rlhfkit.registry.experiments import Arm, Experiments
from rlhfkit.registry.store import Registry
from rlhfkit.registry.tables import feedback, responses
from rlhfkit.serve.monitor import experiment_report, live_figures
from tests.production.conftest import fake_run


def test_ratio_estimate_by_hand():
    """Three users with (ups, thumbs) = (1, 2), (2, 2), (0, 1): R = 3/5 = 0.6; mean x 1, mean n 5/3;
    s_xx = 1, s_nn = 1/3, s_xn = 0.5; Var = (1 - 2*0.6*0.5 + 0.36/3) / (3 * 25/9) = 0.52 / (25/3) = 0.0624."""
    est = ratio_estimate([(1, 2), (2, 2), (0, 1), (0, 0)])  # a user without thumbs is no unit
    assert est.value == pytest.approx(0.6) and est.units == 3
    assert est.se == pytest.approx(math.sqrt(0.0624))
    # one trial per user: the two-proportion z-test's unpooled standard error sqrt(p (1 - p) / (k - 1) ... )
    ones = ratio_estimate([(1, 1)] * 30 + [(0, 1)] * 70)
    assert ones.se == pytest.approx(math.sqrt(0.3 * 0.7 / 99), rel=1e-9)  # sample variance: k - 1
    assert ratio_estimate([(1, 1)]).se is None and ratio_estimate([]).value is None
    d = compare(ratio_estimate([(1, 1)] * 60 + [(0, 1)] * 40), ones)
    assert d.diff == pytest.approx(0.3) and d.lo < 0.3 < d.hi and d.p < 1e-4
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 95) == 5 and percentile([], 50) is None


def _clustered_arm(rng: random.Random, users: int) -> list[tuple[int, int]]:
    """Users who differ: each has their own thumbs-up probability (0.2 or 0.8) and 1 to 9 thumbs."""
    out = []
    for _ in range(users):
        p, n = rng.choice([0.2, 0.8]), rng.randint(1, 9)
        out.append((sum(rng.random() < p for _ in range(n)), n))
    return out


def test_the_delta_method_keeps_the_false_positive_rate_where_thumbs_as_independent_would_not():
    """A/A on clustered users, 600 times: the delta method's test rejects about 5% of the time; counting every
    thumbs as independent rejects far more often, which is why the report takes variances over users."""
    rng = random.Random(0)
    delta_fp = naive_fp = 0
    trials = 600
    for _ in range(trials):
        a, b = _clustered_arm(rng, 60), _clustered_arm(rng, 60)
        delta_fp += compare(ratio_estimate(a), ratio_estimate(b)).p < 0.05
        flat_a = [(1, 1)] * sum(x for x, _ in a) + [(0, 1)] * sum(n - x for x, n in a)
        flat_b = [(1, 1)] * sum(x for x, _ in b) + [(0, 1)] * sum(n - x for x, n in b)
        naive_fp += compare(ratio_estimate(flat_a), ratio_estimate(flat_b)).p < 0.05
    assert 0.025 < delta_fp / trials < 0.08, delta_fp
    assert naive_fp / trials > 0.2, naive_fp


def _populate(registry: Registry, experiment: str, arm: str, version_id: int, users: int, p_up: float, seed: int):
    rng = random.Random(seed)
    now = utcnow()
    with registry.store.write_conn() as conn:
        for u in range(users):
            user = f"{arm}-{u}"
            for k in range(3):
                rid = f"r-{arm}-{u}-{k}"
                conn.execute(responses.insert().values(
                    id=rid, user_id=user, route=experiment, experiment=experiment, arm=arm, version_id=version_id,
                    messages=[{"role": "user", "content": "q"}], text="sorry , i can not help with that ." if k == 0
                    else "the answer is paris .", stream=True, refusal=k == 0, ttft_ms=10.0 + k, latency_ms=50.0 + k,
                    regenerate_of=None, created_at=now))  # fmt: skip
                conn.execute(feedback.insert().values(
                    response_id=rid, idempotency_key=f"k-{rid}", kind="thumbs", value=rng.random() < p_up,
                    user_id=user, version_id=version_id, experiment=experiment, arm=arm, created_at=now))  # fmt: skip
        conn.commit()


def test_experiment_report_finds_a_worse_arm_and_raises_the_alarm(tmp_path):
    db = str(tmp_path / "ab.db")
    registry = Registry.open(db)
    a, b = (registry.register(str(fake_run(tmp_path, n))) for n in ("a", "b"))
    Experiments(registry).create("exp", [Arm("control", a.ref, 1), Arm("treatment", b.ref, 1)])
    _populate(registry, "exp", "control", a.id, 80, 0.7, 0)
    _populate(registry, "exp", "treatment", b.id, 80, 0.4, 1)
    out = experiment_report(registry.store, "exp")
    control, treatment = out["arms"]
    assert (control["requests"], control["users"]) == (240, 80)
    assert control["ttft_ms"]["p50"] == pytest.approx(11.0) and control["rates"]["refusal"]["value"] == pytest.approx(
        1 / 3
    )
    thumbs = next(c for c in out["comparisons"] if c["metric"] == "thumbs_up")
    assert thumbs["diff"] < -0.2 and thumbs["hi"] < 0 and thumbs["worse"] and thumbs["p"] < 0.001
    assert out["test"]["significant"] == {"treatment": True}
    assert any(alarm.startswith("treatment: thumbs_up") for alarm in out["alarms"])
    assert not any("refusal" in alarm for alarm in out["alarms"])  # the same share of refusals in both arms
    groups = live_figures(registry.store, hours=1)["groups"]
    assert {(g["version"], g["arm"]) for g in groups} == {(a.ref, "control"), (b.ref, "treatment")}
    result = CliRunner().invoke(app, ["ab", "report", "exp", "--db", db])
    assert result.exit_code == 0 and "test (thumbs_up" in result.output and "treatment differs at p =" in result.output
    assert "ALARM" in result.output
    bad = CliRunner().invoke(app, ["ab", "report", "nope", "--db", db])
    assert bad.exit_code == 1 and "no such experiment" in bad.output


def test_ab_commands_create_split_stop(tmp_path):
    db = str(tmp_path / "cmd.db")
    registry = Registry.open(db)
    for n in ("a", "b"):
        registry.register(str(fake_run(tmp_path, n)))
    registry.promote("champion", "policy:1")
    runner = CliRunner()

    def call(*args):
        result = runner.invoke(app, ["ab", *args, "--db", db])
        return result.exit_code, result.output

    assert call("create", "e1", "--arm", "control=champion", "--arm", "treatment=policy:2", "--split", "90/10") == (
        0, "e1: control=champion 90%, treatment=policy:2 10%\n")  # fmt: skip
    assert call("split", "e1", "50/50")[1] == "e1: control 50, treatment 50\n"
    assert "running" in call("list")[1]
    assert call("stop", "e1")[0] == 0 and "stopped" in call("list")[1]
    code, out = call("create", "e2", "--arm", "control=champion", "--arm", "t=nothing")
    assert code == 1 and "no such alias" in out
    code, out = call("create", "e3", "--arm", "control=champion", "--arm", "t=policy:2", "--split", "1/2/3")
    assert code == 1 and "give 2 non-negative shares" in out


def test_ab_export_to_a_path_it_cannot_write_is_one_line_and_leaves_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    result = CliRunner().invoke(
        app, ["ab", "export", "--kind", "rating", "--out", str(tmp_path / "out"), "--db", str(tmp_path / "a.db")]
    )
    assert result.exit_code == 1 and "Is a directory" in result.output and not isinstance(result.exception, Exception)
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []
