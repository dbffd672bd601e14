"""The demo pipeline end to end with tiny budgets: every stage runs and the report is complete."""

import json

import pytest

from rlhfkit.config.pipelines import DemoConfig
from rlhfkit.pipelines.toy import run


def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path):
    root = run(DemoConfig(quick=True, output_dir=str(tmp_path / "demo")))
    results = json.loads((root / "results.json").read_text())
    methods = [r["method"] for r in results["rows"]]
    assert methods == ["sft", "best-of-4", "dpo", "ppo", "rejection"]
    for row in results["rows"]:
        assert 0.0 <= row["win_lo"] <= row["win_rate"] <= row["win_hi"] <= 1.0
        assert row["kl_to_sft"] >= -0.5  # a Monte-Carlo estimate of a KL: near or above zero
    for name in ("report.html", "reward_vs_kl.png", "training_curves.png", "card.json", "config.yaml"):
        assert (root / name).exists(), name
    for stage in ("sft", "rm", "dpo", "ppo", "rejection"):
        assert (root / stage / "card.json").exists(), stage
    html = (root / "report.html").read_text()
    assert "<script" not in html.lower() and "best-of-4" in html
    card = json.loads((root / "card.json").read_text())
    assert card["stage"] == "demo" and card["figures"]["rows"] == results["rows"]
    # Training data is only what the annotators said: no gold scores in it.
    row = json.loads((root / "data" / "comparisons.jsonl").read_text().splitlines()[0])
    assert set(row) <= {"prompt", "chosen", "rejected", "tie", "annotator"}


@pytest.mark.slow
def test_rerun_reuses_finished_stages(tmp_path, monkeypatch):
    """A rerun of a finished demo trains nothing, samples no feedback and no best-of-N again (steps with no run
    folder of their own, kept in data/), and prints the same table."""
    from rlhfkit.pipelines import toy, toy_eval

    out = tmp_path / "demo"
    run(DemoConfig(quick=True, output_dir=str(out), methods=["dpo", "bon"]))
    stamp = (out / "sft" / "card.json").stat().st_mtime
    first = json.loads((out / "results.json").read_text())

    def again(*args):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(toy, "simulated_feedback", again)
    monkeypatch.setattr(toy_eval, "best_of_n_file", again)
    run(DemoConfig(quick=True, output_dir=str(out), methods=["dpo", "bon"]))
    assert (out / "sft" / "card.json").stat().st_mtime == stamp
    second = json.loads((out / "results.json").read_text())
    assert {**first, "wall_seconds": 0} == {**second, "wall_seconds": 0}


def test_rerun_with_other_settings_is_refused_before_anything_is_written(tmp_path):
    """Finished stages are reused on a rerun, so a rerun in the same folder with other settings would mix
    old stages with new settings: refused, naming the setting; the saved config stays as it was."""
    saved = DemoConfig(quick=True, output_dir=str(tmp_path), seed=1).budgets().to_yaml()
    (tmp_path / "config.yaml").write_text(saved)
    with pytest.raises(ValueError, match=r"config.yaml.*seed: 1 -> 0"):
        run(DemoConfig(quick=True, output_dir=str(tmp_path)))
    assert (tmp_path / "config.yaml").read_text() == saved and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
