"""`rlhfkit demo --loop --quick` end to end, cut short in round 1's traffic and again in the A/B test's: each rerun
learns only from the feedback of the phase it finished, and tests in a fresh experiment."""

from __future__ import annotations

import json

import pytest

from rlhfkit.config.loop import DemoLoopConfig
from rlhfkit.pipelines import toy_loop
from rlhfkit.registry.experiments import Experiments
from rlhfkit.registry.store import Registry
from rlhfkit.serve.records import live_comparisons


class Cut(Exception):
    """The interruption: raised once some of a phase's traffic has reached the database."""


@pytest.mark.slow
def test_a_rerun_after_a_cut_phase_learns_and_tests_only_on_the_finished_phases_traffic(tmp_path, monkeypatch):
    real, phases = toy_loop.simulate, []

    async def cut_round_1_and_the_ab_test_once(url, model, users, *args, **kwargs):
        phases.append(model)
        first_ab = model.startswith("final-vs-sft") and not any(p.startswith("final-vs-sft") for p in phases[:-1])
        if phases == ["champion"] or first_ab:
            await real(url, model, users[:2], *args, **kwargs)  # part of the phase's traffic reaches the database
            raise Cut
        return await real(url, model, users, *args, **kwargs)

    monkeypatch.setattr(toy_loop, "simulate", cut_round_1_and_the_ab_test_once)
    cfg = DemoLoopConfig(quick=True, output_dir=str(tmp_path / "loop"), sabotage=False, offline=False)
    for _ in range(2):
        with pytest.raises(Cut):
            toy_loop.run(cfg)
    root = toy_loop.run(cfg)
    assert phases == ["champion", "champion", "champion", "final-vs-sft-0", "final-vs-sft-0-retry1"]

    results = json.loads((root / "results.json").read_text())
    store = Registry.open(str(root / "production.db")).store
    served = results["traffic"]["round-1"]
    window = json.loads((root / "loop" / "round-1" / "start.json").read_text())
    assert served["feedback_after"] > 0  # the cut phase's feedback is in the database...
    assert (window["live_after"], window["live_until"]) == (served["feedback_after"], served["feedback_until"])
    [round_1, _] = json.loads((root / "card.json").read_text())["figures"]["rounds"]
    own = live_comparisons(store, served["feedback_after"], served["feedback_until"])
    assert round_1["labels"]["live"] == len(own) > 0  # ...but round 1 learnt from its own phase's alone
    assert results["ab"]["experiment"] == "final-vs-sft-0-retry1"
    assert Experiments(Registry(store)).get("final-vs-sft-0").status == "stopped"
