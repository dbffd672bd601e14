"""The over-optimisation monitor inside the trainers: checks at the set interval, signals logged, the alarm in the
card, a stop that keeps the best check's model, a resume that replays the checks, best-of-N's expected choice.

The alarms here are forced: best-of-N's by a KL budget of almost nothing (its KL is exact), PPO's and DPO's by a
reason added for the test that holds from step 1 on (a Monte-Carlo KL of a few samples of an untrained model is
noise around 0). The monitor's decisions on real signal shapes are tested on synthetic runs in tests/test_monitor.py
and measured on the toy world by ``python -m rlhfkit.toy.experiments.overoptimisation``.

Run: PYTHONPATH=. python -m pytest tests/test_monitor_hooks.py -q
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config.stages import BestOfNConfig, DPOConfig, PPOConfig, RejectionConfig
from rlhfkit.runs import RunCard, read_metrics
from rlhfkit.toy.data import data_file
from rlhfkit.train.best_of_n import expected_best_of_n

FORCE_ALARM = {"monitor_kl_budget": 1e-3, "monitor_settings": {"patience": 1}}


@pytest.fixture
def alarm_from_step_1(monkeypatch):
    """A reason that holds at every check from step 1 on."""
    from rlhfkit.evaluate import monitor

    monkeypatch.setitem(
        monitor.REASONS, "forced_by_test", lambda history, s: "forced" if history[-1].step >= 1 else None
    )


def count_the(prompts, responses):
    return [float(r.lower().split().count("the")) for r in responses]


def two_members(prompts, responses):
    return [[float(len(r)) for r in responses], [float(len(r.split())) for r in responses]]


def common(tmp_path, name, **kw):
    return dict(output_dir=str(tmp_path / name), progress=False, report_to=["jsonl"], **kw)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_expected_choice_of_best_of_n_by_hand():
    """Scores [3, 1, 2] with values [30, 10, 20] riding on them: best of 2 picks the value of the larger score of a
    random pair: pairs {1,2} -> 20, {1,3} -> 30, {2,3} -> 30, mean 80/3; values that differ from the scores follow
    the scores' order: values [5, 7, 9] -> pairs pick 9, 5, 5 -> 19/3."""
    s = torch.tensor([[3.0, 1.0, 2.0]])
    torch.testing.assert_close(expected_best_of_n(s, 2, torch.tensor([[30.0, 10.0, 20.0]])), torch.tensor([80 / 3]))
    torch.testing.assert_close(expected_best_of_n(s, 2, torch.tensor([[5.0, 7.0, 9.0]])), torch.tensor([19 / 3]))


def test_ppo_checks_at_the_interval_and_logs_the_signals(tmp_path, toy_files):
    from rlhfkit.train.ppo import run

    cfg = PPOConfig(
        model="tiny", data=toy_files["prompt"], reward="tests.test_monitor_hooks:two_members", max_steps=4,
        batch_size=4, max_new_tokens=6, missing_eos_penalty=None, monitor=True, monitor_every=2, monitor_prompts=5,
        monitor_reward="tests.test_monitor_hooks:count_the", **common(tmp_path, "ppo"),
    )  # fmt: skip
    path = run(cfg)
    summary = json.loads((path / "monitor" / "monitor.json").read_text())
    assert [c["step"] for c in summary["history"]] == [0, 2, 4]
    first = summary["history"][0]
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy before any update is the reference
    assert first["ensemble_std"] > 0 and first["second_rm_reward"] is not None and first["entropy"] > 0
    logged = [m for m in read_metrics(path) if "monitor/kl" in m]
    assert [m["step"] for m in logged] == [0, 2, 4] and all("monitor/rm_gap" in m for m in logged)
    rows = [json.loads(line) for line in (path / "monitor" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 15 and {r["step"] for r in rows} == {0, 2, 4}
    # the members' spread as everywhere else: the std over 2, |a - b| / 2 (it was over 1: sqrt(2) times that)
    texts = [r["response"] for r in rows if r["step"] == 0]
    spread = sum(abs(len(t) - len(t.split())) / 2 for t in texts) / len(texts)
    assert first["ensemble_std"] == pytest.approx(spread, rel=1e-5)
    # each check's standard error of the second reward's mean, the floor of the monitor's noise: std / sqrt(5)
    for check in summary["history"]:
        scores = torch.tensor(count_the(None, [r["response"] for r in rows if r["step"] == check["step"]]))
        assert check["second_rm_reward"] == pytest.approx(float(scores.mean()))
        assert check["second_rm_reward_se"] == pytest.approx(float(scores.std() / 5**0.5))
    assert first["proxy_reward_se"] is not None
    assert all(0.0 <= check["degenerate_share"] <= 1.0 for check in summary["history"])  # its wiring: below
    card = RunCard.read(path)
    assert card.figures["monitor"]["checks"] == 3 and card.figures["monitor"]["alarm"] is False


def test_the_share_of_looping_samples_is_read_from_the_sampled_tokens(tmp_path, monkeypatch):
    """Three samples: one loops (4 4 4 7 7: 2 distinct of 5), one does not (4 5 6 and the stop token), and one would
    loop only if its padding counted (4 5 6, then six pads: 4 distinct of 9): a share of 1/3."""
    from types import SimpleNamespace

    from rlhfkit import rollout, samplers
    from rlhfkit.config import SamplingPart
    from rlhfkit.train.monitoring import PolicyMonitor

    ids = torch.tensor([[4, 4, 4, 7, 7, 3, 3, 3, 3], [4, 5, 6, 2, 3, 3, 3, 3, 3], [4, 5, 6, 3, 3, 3, 3, 3, 3]])
    lengths = torch.tensor([5, 4, 3])
    mask = (torch.arange(9) < lengths[:, None]).long()

    class Sampler:
        def generate(self, prompts, generator=None):
            B = len(prompts)
            return rollout.Rollout(
                prompts=prompts, query_ids=torch.ones(B, 1, dtype=torch.long), query_mask=torch.ones(B, 1),
                response_ids=ids[:B], response_mask=mask[:B], logprobs=torch.zeros(B, 9), ended=lengths[:B] < 9,
                texts=["a"] * B,
            )  # fmt: skip

    monkeypatch.setattr(samplers, "make_sampler", lambda *args, **kwargs: Sampler())
    cfg = SimpleNamespace(
        monitor_reward=None, monitor_ensemble=None, monitor_settings={}, monitor_kl_budget=None, monitor_prompts=3,
        monitor_switch_to=None,
    )  # fmt: skip
    monitor = PolicyMonitor(cfg, SimpleNamespace(path=tmp_path), None, ["p1", "p2", "p3"])
    samples = monitor.sample(torch.nn.Linear(1, 1), None, SamplingPart())
    assert samples.degenerate.tolist() == [True, False, False]
    assert monitor.measure(samples, step=0).degenerate_share == pytest.approx(1 / 3)


def test_ppo_monitor_kl_of_the_start_is_zero_under_bf16_mixed(tmp_path, toy_files):
    """The monitor samples its checks without autocast, in float32; the reference pass it compares them with runs
    in float32 too, so the check before any update measures a KL of 0, not the rounding of bf16 against float32."""
    from rlhfkit.train.ppo import run

    cfg = PPOConfig(
        model="tiny", data=toy_files["prompt"], reward="tests.test_monitor_hooks:count_the", max_steps=1,
        batch_size=4, max_new_tokens=6, missing_eos_penalty=None, monitor=True, monitor_every=1, monitor_prompts=8,
        dtype="bf16-mixed", **common(tmp_path, "ppo"),
    )  # fmt: skip
    summary = json.loads((run(cfg) / "monitor" / "monitor.json").read_text())
    assert summary["history"][0]["step"] == 0 and summary["history"][0]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_ppo_stops_at_the_alarm_and_keeps_the_best_checks_model(tmp_path, toy_files, alarm_from_step_1):
    """The check at step 1 raises the alarm (patience 1) and stops the run; the best check is the last one before
    any reason held, step 0, so final/ holds the starting weights."""
    from rlhfkit.models.tiny import build_tiny
    from rlhfkit.train.ppo import run

    cfg = PPOConfig(
        model="tiny", data=toy_files["prompt"], reward="tests.test_monitor_hooks:count_the", max_steps=6, batch_size=4,
        max_new_tokens=6, missing_eos_penalty=None, lr=1e-2, monitor=True, monitor_every=1, monitor_prompts=4,
        monitor_stop=True, monitor_settings={"patience": 1}, **common(tmp_path, "ppo"),
    )  # fmt: skip
    path = run(cfg)
    card = RunCard.read(path)
    mon = card.figures["monitor"]
    assert mon["alarm"] and mon["alarm_step"] == 1 and mon["stopped_at"] == 1 and mon["best_step"] == 0
    assert card.figures["steps"] == 1 and mon["alarm_reasons"] == {"forced_by_test": "forced"}
    start = build_tiny("tiny", seed=0)[0].state_dict()
    kept = weights(path / "final")
    assert all(torch.equal(kept[k], start[k]) for k in kept)


INTERRUPT = {"calls": 0, "at": None}


def interrupting_count_the(prompts, responses):
    """count_the that raises KeyboardInterrupt (as Ctrl-C would) at its ``INTERRUPT["at"]``-th call."""
    INTERRUPT["calls"] += 1
    if INTERRUPT["calls"] == INTERRUPT["at"]:
        raise KeyboardInterrupt
    return count_the(prompts, responses)


def test_a_resumed_ppo_run_replays_its_checks(tmp_path, toy_files):
    """Calls of the reward: check 0, rollouts 0 and 1, check 2, rollout 2 (the 5th: interrupted there, so the
    checkpoint holds step 2). The resumed run keeps checks 0 and 2, does not repeat check 2, and ends with the
    checks of an uninterrupted run."""
    import importlib

    from rlhfkit.train.ppo import run

    # the reward setting imports this file as tests.test_monitor_hooks, which pytest's own import is not
    INTERRUPT = importlib.import_module("tests.test_monitor_hooks").INTERRUPT
    base = dict(
        model="tiny", data=toy_files["prompt"], reward="tests.test_monitor_hooks:interrupting_count_the", max_steps=4,
        batch_size=4, max_new_tokens=6, missing_eos_penalty=None, monitor=True, monitor_every=2, monitor_prompts=3,
    )  # fmt: skip
    INTERRUPT.update(calls=0, at=None)
    whole = run(PPOConfig(**base, **common(tmp_path, "whole")))
    INTERRUPT.update(calls=0, at=5)
    with pytest.raises(KeyboardInterrupt):
        run(PPOConfig(**base, **common(tmp_path, "cut")))
    history = json.loads((tmp_path / "cut" / "monitor" / "monitor.json").read_text())["history"]
    assert [c["step"] for c in history] == [0, 2]
    INTERRUPT.update(calls=0, at=None)
    resumed = run(PPOConfig(**base, **common(tmp_path, "cut")))
    a = json.loads((whole / "monitor" / "monitor.json").read_text())["history"]
    b = json.loads((resumed / "monitor" / "monitor.json").read_text())["history"]
    assert [c["step"] for c in b] == [0, 2, 4]
    assert [x["proxy_reward"] for x in a] == pytest.approx([x["proxy_reward"] for x in b], abs=1e-5)
    assert INTERRUPT["calls"] == 4  # rollouts 2 and 3, check 4, the held-out score: no second check at step 2
    samples = (resumed / "monitor" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in samples] == [0] * 3 + [2] * 3 + [4] * 3


def test_dpo_monitor_reads_held_out_accuracy_and_stops(tmp_path, alarm_from_step_1):
    from rlhfkit.train.dpo import run

    cfg = DPOConfig(
        model="tiny", data=str(data_file("comparison")), eval_data=str(data_file("comparison", seed=1)), max_steps=4,
        batch_size=4, lr=1e-2, monitor=True, monitor_every=1, monitor_prompts=4, monitor_max_new_tokens=5,
        monitor_stop=True, monitor_settings={"patience": 1}, **common(tmp_path, "dpo"),
    )  # fmt: skip
    path = run(cfg)
    history = json.loads((path / "monitor" / "monitor.json").read_text())["history"]
    assert history[0]["heldout_accuracy"] is not None and history[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    mon = RunCard.read(path).figures["monitor"]
    assert mon["stopped_at"] == 1 and mon["best_step"] == 0


def test_best_of_n_checks_every_n_and_keeps_the_best_n(tmp_path, toy_files):
    """KL = log N - (N - 1) / N is over the tiny budget from N = 2: the alarm at N = 2 keeps N = 1, so each chosen
    response is the first sample."""
    from rlhfkit.train.best_of_n import run

    cfg = BestOfNConfig(
        model="tiny", data=toy_files["prompt"], reward="tests.test_monitor_hooks:two_members", n_max=4, max_prompts=3,
        max_new_tokens=6, missing_eos_penalty=None, monitor=True, monitor_stop=True, **FORCE_ALARM,
        **common(tmp_path, "bon"),
    )  # fmt: skip
    path = run(cfg)
    mon = RunCard.read(path).figures["monitor"]
    assert mon["alarm_step"] == 2 and mon["kept_n"] == 1
    chosen = [json.loads(line) for line in (path / "chosen.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (path / "monitor" / "samples.jsonl").read_text().splitlines()]
    firsts = [s["response"] for s in samples if s["sample"] == 0]
    assert [c["completion"] for c in chosen] == firsts and all(c["n"] == 1 for c in chosen)
    history = json.loads((path / "monitor" / "monitor.json").read_text())["history"]
    assert history[0]["ensemble_std"] is not None  # the training reward has two members


def test_rejection_checks_each_round(tmp_path, toy_files):
    from rlhfkit.train.rejection import run

    cfg = RejectionConfig(
        model="tiny", data=toy_files["prompt"], reward="tests.test_monitor_hooks:count_the", k=2, rounds=2,
        max_prompts=4, max_steps=1, batch_size=4, sft_batch_size=4, max_new_tokens=5, missing_eos_penalty=None, monitor=True,
        monitor_prompts=3, **common(tmp_path, "rej"),
    )  # fmt: skip
    path = run(cfg)
    steps = [c["step"] for c in json.loads((path / "monitor" / "monitor.json").read_text())["history"]]
    assert steps == [0, 1, 2]  # the start of each round, and the last round's policy


def test_a_reason_that_can_be_off_is_switched_off_by_null_from_the_command_line():
    from rlhfkit.config.base import load_config, parse_overrides
    from rlhfkit.train.monitoring import monitor_settings

    given = parse_overrides(["--monitor-settings", "{degenerate_share: null, z: 2}"])
    cfg = load_config(PPOConfig, None, {"model": "tiny", "data": "prompts.jsonl", "reward": "r", **given})
    settings = monitor_settings(cfg.monitor_settings, cfg.monitor_kl_budget)
    assert settings.degenerate_share is None and settings.z == 2


def test_a_bad_monitor_setting_fails_before_the_folder_exists(tmp_path, toy_files):
    from rlhfkit.train.ppo import run

    for bad, message in (
        ({"monitor_settings": {"patiense": 2}}, "unknown \\['patiense'\\]"),
        ({"monitor_settings": {"patience": None}}, "\\['patience'\\] cannot be null"),
        ({"monitor_reward": "rlhfkit.toy.judge:gold"}, "gold utility"),
    ):
        cfg = PPOConfig(
            model="tiny", data=toy_files["prompt"], reward="tests.test_monitor_hooks:count_the", max_steps=1,
            batch_size=2, monitor=True, **bad, **common(tmp_path, "never"),
        )  # fmt: skip
        with pytest.raises(ValueError, match=message):
            run(cfg)
        assert not (tmp_path / "never").exists()


@pytest.fixture
def alarm_from_step_2(monkeypatch):
    from rlhfkit.evaluate import monitor

    monkeypatch.setitem(
        monitor.REASONS, "forced_by_test", lambda history, s: "forced" if history[-1].step >= 2 else None
    )


def test_a_stop_read_from_a_full_runs_checks_is_the_stopped_runs(tmp_path, toy_files, alarm_from_step_2):
    """The over-optimisation experiment runs PPO to the end and reads where --monitor-stop would have stopped from its
    checks (``replay_stop``). That is only honest if a stopped run is the same run up to its stop: here the alarm
    comes at step 2 and the last clean check is step 1; the stopped run's card and final/ model must be the full
    run's step-2 alarm and step-1 model."""
    from rlhfkit.toy.experiments.overoptimisation import replay_stop
    from rlhfkit.train.ppo import run

    def ppo(name, stop):
        return run(
            PPOConfig(
                model="tiny", data=toy_files["prompt"], reward="tests.test_monitor_hooks:count_the", max_steps=4,
                batch_size=4, max_new_tokens=6, missing_eos_penalty=None, lr=1e-2, monitor=True, monitor_every=1,
                monitor_prompts=4, monitor_stop=stop, monitor_settings={"patience": 1}, **common(tmp_path, name),
            )
        )  # fmt: skip

    full, stopped = ppo("full", stop=False), ppo("stopped", stop=True)
    mon = RunCard.read(stopped).figures["monitor"]
    assert replay_stop(full)[:2] == (mon["alarm_step"], mon["best_step"]) == (2, 1)
    assert RunCard.read(full).figures["steps"] == 4 and mon["stopped_at"] == 2
    kept, replayed = weights(stopped / "final"), weights(full / "monitor" / "step-1")
    assert all(torch.equal(kept[k], replayed[k]) for k in kept)


def test_dpo_monitor_with_only_ties_held_out_has_no_accuracy(tmp_path):
    """Held-out pairs that are all ties leave no decided pair to be accurate on (the quick demo's labels are nearly
    all ties): the check records no accuracy instead of failing."""
    from rlhfkit.data.io import read_jsonl, write_jsonl
    from rlhfkit.train.dpo import run

    ties = tmp_path / "ties.jsonl"
    write_jsonl(ties, [{**row, "tie": True} for row in read_jsonl(data_file("comparison", seed=1))[:8]])
    cfg = DPOConfig(
        model="tiny", data=str(data_file("comparison")), eval_data=str(ties), max_steps=1, batch_size=4,
        monitor=True, monitor_every=1, monitor_prompts=2, monitor_max_new_tokens=4, **common(tmp_path, "dpo"),
    )  # fmt: skip
    path = run(cfg)
    history = json.loads((path / "monitor" / "monitor.json").read_text())["history"]
    assert [c["heldout_accuracy"] for c in history] == [None, None]


def test_an_alarms_cost_is_the_kept_checks_gold_against_the_end(tmp_path, monkeypatch):
    """``alarm_cost`` replays the monitor on a run's saved checks (here a KL budget crossed at steps 30 and 40, patience
    2: the alarm at 40, the last clean check 20 kept) and sets the kept check's gold against the end's."""
    from rlhfkit.toy.experiments import overoptimisation

    history = [{"step": s, "kl": kl} for s, kl in [(0, 0.0), (10, 0.5), (20, 0.9), (30, 2.0), (40, 3.0), (50, 4.0)]]
    (tmp_path / "monitor").mkdir()
    (tmp_path / "config.yaml").write_text("monitor_kl_budget: 1.0\nmonitor_settings: {}\n")
    (tmp_path / "monitor" / "monitor.json").write_text(json.dumps({"settings": {}, "history": history}))
    curve = {0: -0.4, 10: 0.1, 20: 0.3, 30: 0.35, 40: 0.2, 50: 0.1}
    monkeypatch.setattr(overoptimisation, "check_gold", lambda run: curve)
    cost = overoptimisation.alarm_cost(tmp_path)
    assert (cost["alarm_step"], cost["kept_step"]) == (40, 20)
    assert cost["gold_at_stop"] == 0.3 and cost["final_gold"] == 0.1 and cost["peak_gold"] == 0.35
    assert cost["kept_minus_end"] == pytest.approx(0.2)
    assert cost["gain_ratio"] == pytest.approx(0.7 / 0.75)


def test_the_experiments_alarms_are_decided_again_by_the_rule_as_it_is_now(tmp_path, monkeypatch):
    """``judged`` replays every run's saved checks, the healthy runs' too, so a finished seed's figures follow the
    monitor's rule as it is now and not what the run's card recorded: the same history alarms under a KL budget
    and stays quiet without one. The budget is the run's own setting (``monitor_kl_budget``, or in
    ``monitor_settings``), read from its config.yaml; the thresholds ``monitor.json`` recorded, which include the
    defaults of the day (here a stale budget on every run), do not decide."""
    from rlhfkit.evaluate.monitor import MonitorSettings
    from rlhfkit.toy.experiments import overoptimisation

    history = [{"step": s, "kl": kl} for s, kl in [(0, 0.0), (10, 0.5), (20, 0.9), (30, 2.0), (40, 3.0), (50, 4.0)]]
    runs = {name: tmp_path / name for name in ("over", "ppo", "dpo")}
    configs = {
        "over": "monitor_kl_budget: 1.0\nmonitor_settings: {}\n",
        "ppo": "monitor_kl_budget: null\nmonitor_settings: {kl_budget: 1.0}\n",
        "dpo": "monitor_kl_budget: null\nmonitor_settings: {}\n",
    }
    recorded = {**MonitorSettings(kl_budget=1.0).__dict__}
    for name, path in runs.items():
        (path / "monitor").mkdir(parents=True)
        (path / "config.yaml").write_text(configs[name])
        (path / "monitor" / "monitor.json").write_text(json.dumps({"settings": recorded, "history": history}))
    curve = {0: -0.4, 10: 0.1, 20: 0.3, 30: 0.35, 40: 0.2, 50: 0.1}
    monkeypatch.setattr(overoptimisation, "check_gold", lambda run: curve)
    decided = overoptimisation.judged(curve, runs["over"], {"ppo": runs["ppo"], "dpo": runs["dpo"]})
    assert (decided["alarm_step"], decided["kept_step"], decided["alarm_reasons"]) == (40, 20, ["kl_over_budget"])
    assert decided["gain_ratio"] == pytest.approx(0.7 / 0.75)
    assert decided["false_alarms"] == {"ppo": True, "dpo": False}
    assert list(decided["false_alarm_cost"]) == ["ppo"]
    assert decided["healthy_most_looping"] == {"ppo": None, "dpo": None}  # runs that did not measure it
    # replay_settings put other thresholds over every run's own: the same runs judged by another rule
    other = overoptimisation.judged(curve, runs["over"], {"ppo": runs["ppo"]}, replay={"kl_budget": None})
    assert other["alarm_step"] is None and other["false_alarms"] == {"ppo": False}
    from rlhfkit.config.pipelines import OveroptimisationConfig

    assert OveroptimisationConfig(replay_settings={"kl_budget": None}).changed_settings({}) == []  # a finished seed
