"""The mitigation of over-optimisation: an ensemble's members made one conservative reward (mean - lambda std, the
worst member, a lower quantile; Coste et al. 2023), in every stage that optimises a reward, and switched to by the
monitor's alarm.

Run: PYTHONPATH=. python -m pytest tests/test_reward_transform.py -q
"""

import json

import pytest

from rlhfkit.config.stages import BestOfNConfig, PPOConfig
from rlhfkit.rewards import load_reward
from rlhfkit.runs import RunCard


def length(prompts, responses):
    return [float(len(r)) for r in responses]


def words(prompts, responses):
    return [float(len(r.split())) for r in responses]


ENSEMBLE = "tests.test_reward_transform:length,tests.test_reward_transform:words"


def test_transforms_by_hand():
    """Members' scores of "ab cd": length 5, words 2 -> mean 3.5, population std 1.5. mean_minus_std:1 -> 2.0,
    uncertainty_weighted:1 -> 3.5 - 2.25 = 1.25, worst -> 2, quantile:0.5 -> the mean, quantile:0.1 ->
    3.5 - 1.2816 * 1.5."""
    prompts, responses = ["p"], ["ab cd"]
    expected = {
        "mean": 3.5,
        "mean_minus_std:1": 2.0,
        "uncertainty_weighted:1": 1.25,
        "worst": 2.0,
        "quantile:0.5": 3.5,
        "quantile:0.1": 3.5 - 1.2815515655446004 * 1.5,
    }
    for transform, value in expected.items():
        got = load_reward(ENSEMBLE, transform=transform)(prompts, responses)
        assert got.item() == pytest.approx(value, abs=1e-5), transform


def test_bad_transforms_are_refused_with_the_setting_named():
    with pytest.raises(ValueError, match="setting 'reward_transform': unknown transform 'median'"):
        load_reward(ENSEMBLE, transform="median")
    with pytest.raises(ValueError, match="'quantile' needs q in \\(0, 1\\)"):
        PPOConfig(data="d", reward=ENSEMBLE, reward_transform="quantile:2")
    with pytest.raises(ValueError, match="'worst' takes the lowest of several members"):
        load_reward("tests.test_reward_transform:length", transform="worst")(["p"], ["x"])
    with pytest.raises(ValueError, match="'mean_minus_std:1' needs a spread"):
        load_reward("tests.test_reward_transform:length", transform="mean_minus_std:1")(["p"], ["x"])


@pytest.fixture
def alarm_from_step_1(monkeypatch):
    from rlhfkit.evaluate import monitor

    monkeypatch.setitem(
        monitor.REASONS, "forced_by_test", lambda history, s: "forced" if history[-1].step >= 1 else None
    )


def test_the_alarm_switches_ppo_to_the_penalised_reward_and_it_carries_on(tmp_path, toy_files, alarm_from_step_1):
    from rlhfkit.train.ppo import run

    cfg = PPOConfig(
        model="tiny", data=toy_files["prompt"], reward=ENSEMBLE, max_steps=3, batch_size=4, max_new_tokens=5,
        missing_eos_penalty=None, monitor=True, monitor_every=1, monitor_prompts=3, monitor_stop=True,
        monitor_switch_to="worst", monitor_settings={"patience": 1}, output_dir=str(tmp_path / "ppo"),
        progress=False, report_to=["jsonl"],
    )  # fmt: skip
    path = run(cfg)
    card = RunCard.read(path)
    assert card.figures["steps"] == 3  # switched, not stopped
    assert card.figures["monitor"]["switched_at"] == 1 and card.figures["monitor"]["stopped_at"] is None
    samples = [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]
    last = [s for s in samples if s["step"] == 3]
    # the logged score after the switch is the worst member: the word count, never the character count
    assert all(s["score"] == pytest.approx(min(len(s["response"]), len(s["response"].split()))) for s in last)


def test_the_alarm_switches_best_of_n_to_the_penalised_choice(tmp_path, toy_files):
    """KL over a tiny budget from N = 2: the alarm switches the choice to the worst member (word count), made over
    all n_max samples."""
    from rlhfkit.train.best_of_n import run

    cfg = BestOfNConfig(
        model="tiny", data=toy_files["prompt"], reward=ENSEMBLE, n_max=4, max_prompts=3, max_new_tokens=6,
        missing_eos_penalty=None, monitor=True, monitor_kl_budget=1e-3, monitor_settings={"patience": 1},
        monitor_switch_to="worst", output_dir=str(tmp_path / "bon"), progress=False, report_to=["jsonl"],
    )  # fmt: skip
    path = run(cfg)
    assert RunCard.read(path).figures["monitor"]["switched_at"] == 2
    samples = [json.loads(line) for line in (path / "monitor" / "samples.jsonl").read_text().splitlines()]
    chosen = [json.loads(line) for line in (path / "chosen.jsonl").read_text().splitlines()]
    for i, c in enumerate(chosen):
        texts = [s["response"] for s in samples[4 * i : 4 * i + 4]]
        worst = [min(len(t), len(t.split())) for t in texts]
        assert c["score"] == pytest.approx(max(worst)) and c["n"] == 4
