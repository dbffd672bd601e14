"""PPO / RLOO / GRPO trainer: KL penalty zero at the reference, the first update's ratio is 1, the adaptive
controller moves the right way, PPO raises a programmatic reward on a tiny model with KL held near its
target, the group baselines learn, LoRA runs with one copy of the weights, and a killed run resumes."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhfkit.config import ConfigError, SamplingPart, load_config
from rlhfkit.data.records import from_json
from rlhfkit.losses import kl_penalized_rewards, ppo_policy_loss
from rlhfkit.models.load import add_lora
from rlhfkit.rollout import TransformersSampler
from rlhfkit.rollout_forward import response_forward
from rlhfkit.runs import read_metrics
from rlhfkit.toy.data import data_file
from rlhfkit.toy.data import prompts as toy_prompts
from rlhfkit.train.ppo import PPOConfig, RewardNormalizer, run

REPO = Path(__file__).resolve().parents[1]
PROMPTS = str(data_file("prompt"))


def count_paris(prompts, responses):
    """The learning test's reward: how often the response says "paris"."""
    return [float(r.lower().split().count("paris")) for r in responses]


def cfg(tmp_path, name="ppo", **kw):
    base = dict(
        output_dir=str(tmp_path / name),
        model="tiny",
        reward="tests.test_ppo:count_paris",
        data=PROMPTS,
        temperature=0.7,
        max_steps=3,
        batch_size=4,
        max_new_tokens=8,
        progress=False,
        report_to=["jsonl"],
        eval_fraction=0.0,
    )
    return PPOConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    """The tiny model after a short SFT on the toy world, so it answers "the answer is <word> ."."""
    from rlhfkit.train.sft import SFTConfig
    from rlhfkit.train.sft import run as sft_run

    out = tmp_path_factory.mktemp("sft") / "sft"
    return str(
        sft_run(
            SFTConfig(
                output_dir=str(out),
                data=str(data_file("demonstration")),
                max_steps=120,
                batch_size=16,
                lr=3e-3,
                progress=False,
                report_to=["jsonl"],
                eval_fraction=0.0,
            )
        )
    )


def test_config_refuses_what_cannot_work():
    given = {"data": PROMPTS, "reward": "tests.test_ppo:count_paris"}
    with pytest.raises(ConfigError, match="group_size >= 2"):
        load_config(PPOConfig, None, {**given, "advantage": "rloo"})
    with pytest.raises(ConfigError, match="needs --lora"):
        load_config(PPOConfig, None, {**given, "reference": "lora-off"})
    with pytest.raises(ConfigError, match="did you mean 'kl_coef'"):
        load_config(PPOConfig, None, {**given, "kl_coeff": "0.1"})
    with pytest.raises(ConfigError, match="setting 'reward': Field required"):  # no silent toy reward
        load_config(PPOConfig, None, {"data": PROMPTS})


def test_reward_normalizer_by_hand():
    """initial: first batch [1, 2, 3] -> mean 2, std 1 (unbiased); later batches reuse it: [4] -> 2.
    running: then [5] joins: mean 2.75, var ((1.75^2 + .75^2 + .25^2 + 2.25^2) / 3) = 2.916667."""
    init = RewardNormalizer("initial")
    torch.testing.assert_close(init(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(init(torch.tensor([4.0])), torch.tensor([2.0]))
    running = RewardNormalizer("running")
    running(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(running(torch.tensor([5.0])), torch.tensor([(5 - 2.75) / 2.916667**0.5]))
    again = RewardNormalizer("running", running.state())
    assert again.state() == running.state()


def _rollout(model, tok, n=8):
    sampler = TransformersSampler(model, tok, SamplingPart(max_new_tokens=10, temperature=0.7))
    return sampler.generate([from_json(p) for p in toy_prompts(n, 0)], generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_exactly_zero_when_policy_is_reference_in_a_real_rollout(tiny, estimator):
    model, tok = tiny
    rollout = _rollout(model, tok)
    logp = response_forward(model, rollout, 0.7)["logprobs"]
    scores = torch.arange(8.0)
    # a copy as reference
    ref = response_forward(copy.deepcopy(model), rollout, 0.7)["logprobs"]
    rewards = kl_penalized_rewards(scores, logp, ref, rollout.response_mask, 0.3, estimator)
    last = rollout.response_mask.sum(-1) - 1
    expected = torch.zeros_like(rewards)
    expected[torch.arange(8), last] = scores
    assert torch.equal(rewards, expected)
    # LoRA with adapters off as reference: fresh adapters (B = 0) leave the policy equal to the reference
    from rlhfkit.config import ModelPart

    peft_model = add_lora(copy.deepcopy(model), ModelPart(lora=True, lora_r=4))
    policy_logp = response_forward(peft_model, rollout, 0.7)["logprobs"]
    with peft_model.disable_adapter():
        ref_logp = response_forward(peft_model, rollout, 0.7)["logprobs"]
    rewards = kl_penalized_rewards(scores, policy_logp, ref_logp, rollout.response_mask, 0.3, estimator)
    assert torch.equal(rewards, expected)


def test_first_minibatch_ratio_is_one(tiny):
    """The old log-probs are the same forward as the first update's: ratio 1, nothing clipped, approx_kl 0."""
    model, tok = tiny
    rollout = _rollout(model, tok)
    with torch.no_grad():
        old = response_forward(model, rollout, 0.7)["logprobs"]
    new = response_forward(model, rollout, 0.7)["logprobs"]
    _, stats = ppo_policy_loss(new, old, torch.randn_like(new), rollout.response_mask)
    assert stats["clipfrac"] == 0 and abs(stats["approx_kl"]) < 1e-7


def _mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


@pytest.mark.slow
def test_ppo_raises_a_programmatic_reward_with_kl_near_target(tmp_path, sft_model):
    """The issue's learning test: reward = count of "paris"; PPO with the adaptive KL controller raises it
    well above its start in under a minute on CPU while the KL settles near its target."""
    start = time.perf_counter()
    path = run(
        cfg(
            tmp_path,
            model=sft_model,
            max_steps=36,
            batch_size=16,
            max_new_tokens=12,
            temperature=1.0,
            lr=1e-3,
            adaptive_kl=True,
            kl_coef=0.2,
            target_kl=4.0,
            kl_horizon=100,
            normalize_reward="none",
            ppo_epochs=2,
            num_minibatches=2,
            sample_every=12,
        )
    )
    elapsed = time.perf_counter() - start
    m = [r for r in read_metrics(path) if "objective/scores" in r]
    first, last = m[:3], m[-6:]
    report = {
        "reward_start": _mean(first, "objective/scores"),
        "reward_end": _mean(last, "objective/scores"),
        "kl_start": m[0]["objective/kl"],
        "kl_end": _mean(last, "objective/kl"),
        "kl_coef_end": m[-1]["objective/kl_coef"],
        "seconds": round(elapsed, 1),
    }
    print("learning test:", json.dumps(report))
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / "ppo_learning_test.json").write_text(json.dumps(report, indent=2))
    assert report["reward_end"] >= report["reward_start"] + 0.4
    # The first batch is sampled by the reference itself: KL 0 up to the rounding between the sampler's
    # cached attention and the reference's full forward (~1e-6 per token; exactly 0 with recompute_logprobs).
    assert abs(m[0]["objective/kl"]) < 1e-3
    assert 0.4 * 4.0 <= report["kl_end"] <= 2.0 * 4.0
    # healthy-run figures from the literature
    assert _mean(last, "policy/clipfrac") < 0.2 and _mean(last, "policy/approx_kl") < 0.05
    assert _mean(last, "val/eos_rate") > 0.8
    samples = [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 12, 24, 36}
    # Wall time is printed, not asserted (it depends on the machine and its load): 36 steps took ~60 s
    # on 2 shared CPU cores, and 186 s with 4 other jobs running.


def test_behaviour_pass_from_the_sampler_matches_a_recomputed_one(tmp_path):
    """PPO takes the behaviour policy's log-probs and values from the sampler; running the policy again
    (recompute_logprobs) gives the same step to float rounding, and a first-step KL of exactly 0."""
    fast = read_metrics(run(cfg(tmp_path, "fast", max_steps=1, seed=3)))
    slow = read_metrics(run(cfg(tmp_path, "slow", max_steps=1, seed=3, recompute_logprobs=True)))
    fast, slow = (next(r for r in m if "objective/kl" in r) for m in (fast, slow))
    assert slow["objective/kl"] == 0.0 and abs(fast["objective/kl"]) < 1e-4
    for key in ("objective/scores", "objective/entropy", "loss/policy", "loss/value", "val/mean"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-4), key


def test_under_bf16_autocast_the_reference_pass_takes_the_samplers_precision(tmp_path, monkeypatch):
    """On a CPU that emulates bf16 the sampler decodes in float32 under --dtype bf16-mixed, so the reference pass
    runs in float32 too: the first step's KL is then the float32 run's, to the bit (bf16 rounding against float32
    had given -3.4e-4 per response here), and with recompute_logprobs (both passes under autocast) exactly 0."""
    from rlhfkit.models import decode

    monkeypatch.setattr(decode, "cpu_bf16_in_hardware", lambda: False)

    def first_kl(name, **kw):
        metrics = read_metrics(run(cfg(tmp_path, name, max_steps=1, seed=3, **kw)))
        return next(r for r in metrics if "objective/kl" in r)["objective/kl"]

    assert first_kl("bf16", dtype="bf16-mixed") == first_kl("f32")
    assert first_kl("bf16-recomputed", dtype="bf16-mixed", recompute_logprobs=True) == 0.0


@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_a_minibatch_in_pieces_trains_as_one_forward(tmp_path, monkeypatch, advantage):
    """On the CPU a mini-batch runs forward and backward in pieces of rows (less activation memory), each
    loss weighted by its share of the mini-batch's tokens: the same updates and logged figures as one
    forward over the whole mini-batch, to float rounding."""
    from safetensors.torch import load_file

    from rlhfkit.train import batching

    extra = dict(advantage="grpo", group_size=4, batch_size=3) if advantage == "grpo" else dict(batch_size=12)
    settings = dict(max_steps=2, seed=5, num_minibatches=2, entropy_coef=0.01, **extra)  # 6 rows a mini-batch
    split, seen = batching.micro_rows, []
    monkeypatch.setattr(batching, "micro_rows", lambda rows, *a: seen.append(split(rows, *a)) or seen[-1])
    pieces = run(cfg(tmp_path, "pieces", **settings))
    assert {tuple(len(p) for p in ps) for ps in seen} == {(4, 2)}
    monkeypatch.setattr(batching, "micro_rows", lambda rows, *a: [rows])
    whole = run(cfg(tmp_path, "whole", **settings))
    a, b = (load_file(str(p / "final" / "model.safetensors")) for p in (pieces, whole))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    last = [next(r for r in reversed(read_metrics(p)) if "loss/policy" in r) for p in (pieces, whole)]
    compared = [k for k in last[1] if k.startswith(("loss/", "policy/", "val/clipfrac", "train/grad_norm"))]
    assert "policy/entropy" in compared and "loss/total" in compared
    for key in compared:
        assert last[0][key] == pytest.approx(last[1][key], rel=1e-4, abs=1e-6), key


def test_adaptive_controller_moves_the_coefficient(tmp_path):
    """A KL far below its target lowers kl_coef step by step; far above raises it (Ziegler et al. 2019)."""
    low = read_metrics(run(cfg(tmp_path, "low", adaptive_kl=True, target_kl=1000.0, kl_horizon=10)))
    high = read_metrics(run(cfg(tmp_path, "high", adaptive_kl=True, target_kl=1e-6, kl_horizon=10, lr=1e-2)))
    low_coefs = [r["objective/kl_coef"] for r in low if "objective/kl_coef" in r]
    assert low_coefs[0] == 0.05 and low_coefs[1] < low_coefs[0] and low_coefs[2] < low_coefs[1]
    high_coefs = [r["objective/kl_coef"] for r in high if "objective/kl_coef" in r]
    assert high_coefs[2] > high_coefs[1]  # step 1's KL is ~0 (policy == reference), so it starts from step 2


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_group_baselines_learn_without_a_critic(tmp_path, sft_model, advantage):
    path = run(
        cfg(
            tmp_path,
            advantage=advantage,
            group_size=4,
            model=sft_model,
            max_steps=40,
            batch_size=4,
            max_new_tokens=12,
            temperature=1.0,
            lr=1e-3,
            kl_coef=0.02,
            normalize_reward="none",
            ppo_epochs=2,
            num_minibatches=2,
        )
    )
    m = [r for r in read_metrics(path) if "objective/scores" in r]
    assert "loss/value" not in m[0] and "val/explained_variance" not in m[0]
    start, end = _mean(m[:3], "objective/scores"), _mean(m[-5:], "objective/scores")
    print(advantage, start, end)
    # 40 steps: at 20 the gain is at the edge of the threshold and moves with float rounding (GRPO went 0.02 -> 0.15
    # whole mini-batches, 0.02 -> 0.075 in CPU pieces of 4 rows); at 40, 0.02 -> 0.90 (GRPO) and 0.00 -> 2.09 (RLOO)
    assert end >= start + 0.1
    assert not (path / "critic.pt").exists()


def test_lora_one_copy_and_separate_critic_run(tmp_path):
    lora = run(cfg(tmp_path, "lora", lora=True, lora_r=4, max_steps=2))
    card = json.loads((lora / "card.json").read_text())
    assert card["figures"]["steps"] == 2 and (lora / "final" / "config.json").exists() and (lora / "critic.pt").exists()
    cfg_lora = (lora / "config.yaml").read_text()
    assert "reference: auto" in cfg_lora
    sep = run(
        cfg(
            tmp_path,
            "separate",
            critic="separate",
            reference="copy",
            kl_estimator="k3",
            max_steps=2,
            stop=["."],
            entropy_coef=0.01,
        )
    )
    m = read_metrics(sep)
    assert "val/explained_variance" in m[0] and "policy/entropy" in m[0]


def test_critic_from_the_reward_model(tmp_path):
    reward = pytest.importorskip("rlhfkit.models.reward")
    rm = reward.build_reward_model("tiny")
    rm_path = reward.save_reward_model(rm, tmp_path / "rm")
    path = run(cfg(tmp_path, reward=f"rm:{rm_path}", critic="separate", critic_init="reward", max_steps=2))
    parents = json.loads((path / "card.json").read_text())["parents"]
    assert [(p["role"], p["path"]) for p in parents] == [
        ("model", "tiny"),
        ("reference", "tiny"),
        ("reward", f"rm:{rm_path}"),
    ]


@pytest.mark.slow
def test_resume_after_kill_continues_the_same_run(tmp_path):
    """SIGKILL (no chance to save) after the step-4 checkpoint; the same command resumes from it and finishes
    with the step count of an uninterrupted run and the same metrics after the checkpoint."""
    args = [
        "--model",
        "tiny",
        "--reward",
        "tests.test_ppo:count_paris",
        "--data",
        PROMPTS,
        "--temperature",
        "0.7",
        "--batch-size",
        "4",
        "--max-new-tokens",
        "8",
        "--save-every",
        "4",
        "--progress",
        "false",
        "--report-to",
        "[jsonl]",
        "--eval-fraction",
        "0",
        "--max-steps",
        "10",
    ]
    straight = run(cfg(tmp_path, "straight", max_steps=10, save_every=4))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rlhfkit.cli", "ppo", "--output-dir", str(out)] + args
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    deadline = time.time() + 90
    while time.time() < deadline and not (out / "checkpoints" / "step-4" / "trainer_state.json").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "step-4" / "trainer_state.json").exists() and not (out / "final").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout
    resumed = {r["step"]: r for r in read_metrics(out) if "objective/scores" in r}
    reference = {r["step"]: r for r in read_metrics(straight) if "objective/scores" in r}
    assert max(resumed) == 10 and json.loads((out / "card.json").read_text())["figures"]["steps"] == 10
    for step in range(5, 11):
        for key in ("objective/scores", "objective/kl", "loss/policy", "objective/kl_coef"):
            assert resumed[step][key] == pytest.approx(reference[step][key], abs=1e-5), (step, key)


def test_ppo_pieces_shrink_with_the_activations_of_their_tokens():
    """A mini-batch's CPU pieces are 4 rows while their tokens' activations fit PPO's budget, halved until they do;
    the samples of one prompt count its tokens once (they share its forward). SmolLM2's 8 rows of an 80-token prompt
    and 48 new tokens: 4 rows keep ~0.97 GB, so pieces of 2; tiny-4m keeps 4; GRPO's groups of 4 one prompt each
    (80 + 4 x 48 tokens: ~0.5 GB) keep 4."""
    from rlhfkit.train.batching import micro_rows
    from rlhfkit.train.ppo_batch import RolloutBatch

    def batch(prompts: int, per_prompt: int, P: int = 80, T: int = 48) -> RolloutBatch:
        query = torch.arange(prompts).repeat_interleave(per_prompt)[:, None].expand(-1, P)
        zeros = torch.zeros(prompts * per_prompt, T)
        return RolloutBatch(
            query, torch.ones_like(query), zeros.long(), zeros, zeros, zeros, zeros, zeros[:, 0], zeros[:, 0]
        )

    rows, smollm2, tiny_4m = torch.arange(8), 576 * 30, 256 * 4
    sizes = lambda b, width: [len(p) for p in micro_rows(rows.flip(0), "cpu", width, b.piece_tokens)]  # noqa: E731
    assert batch(8, 1).piece_tokens(rows[:4]) == 4 * (80 + 48)
    assert batch(2, 4).piece_tokens(rows[:4]) == 80 + 4 * 48 and batch(2, 4).piece_tokens(rows) == 2 * 80 + 8 * 48
    assert sizes(batch(8, 1), smollm2) == [2, 2, 2, 2]
    assert sizes(batch(8, 1), tiny_4m) == [4, 4]
    assert sizes(batch(2, 4), smollm2) == [4, 4]
    # the whole-process bench's SmolLM2 prompts (~117 tokens with the chat template): PPO 2 rows, GRPO groups of 4
    assert sizes(batch(8, 1, P=117), smollm2) == [2, 2, 2, 2] and sizes(batch(2, 4, P=117), smollm2) == [4, 4]
    assert sizes(batch(8, 1, P=4000), smollm2) == [1] * 8  # over budget even alone: one row a piece
    assert [p.tolist() for p in micro_rows(rows.flip(0), "cpu", smollm2, batch(8, 1).piece_tokens)][0] == [0, 1]
    assert [len(p) for p in micro_rows(rows, "cpu")] == [4, 4]  # no size given: 4 rows
    assert [len(p) for p in micro_rows(rows, "cuda")] == [8]  # off the CPU: the whole mini-batch


def test_minibatches_are_as_many_as_the_scheduler_counts_and_none_is_short(tmp_path, monkeypatch):
    """9 rows in 4 mini-batches: 3, 2, 2 and 2 rows (not 3, 3, 3 and none), so two processes would each have a share
    of every mini-batch, and the linear schedule ends at 0 after exactly the optimiser steps it was sized for (with
    three mini-batches a pass it ended at a quarter of the peak rate)."""
    from rlhfkit.train import ppo

    sizes, share = [], ppo.minibatch_share
    monkeypatch.setattr(ppo, "minibatch_share", lambda rows, acc: sizes.append(len(rows)) or share(rows, acc))
    out = run(cfg(tmp_path, "nine", batch_size=9, num_minibatches=4, ppo_epochs=2, max_steps=2, lr_schedule="linear",
                  warmup_ratio=0.0))  # fmt: skip
    assert sizes == [3, 2, 2, 2] * 4  # 2 steps x 2 epochs
    lrs = [r["train/lr"] for r in read_metrics(out) if "train/lr" in r]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_ctrl_c_inside_an_update_stops_at_the_steps_end_and_resumes_the_same_run(tmp_path, monkeypatch):
    """SIGTERM (handled as Ctrl-C is; SIGINT is ignored in a suite started in the background) while step 2's four
    optimiser steps are under way: the step finishes, the checkpoint holds step 2 and the model after it, and the
    resumed run ends with an uninterrupted run's weights. (A checkpoint taken at the signal held step 1's count with
    half of step 2's updates, and the resumed run did them again.)"""
    from safetensors.torch import load_file

    from rlhfkit.train import common

    settings = dict(max_steps=4, num_minibatches=2, ppo_epochs=2, seed=3, save_every=100)
    whole = run(cfg(tmp_path, "whole", **settings))
    real, calls = common.optimizer_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # step 2's second update
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(common, "optimizer_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(tmp_path, "cut", **settings))
    assert len(calls) == 8  # the step in flight finished its four updates
    (ckpt,) = (tmp_path / "cut" / "checkpoints").glob("step-*")
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    monkeypatch.setattr(common, "optimizer_step", real)
    resumed = run(cfg(tmp_path, "cut", **settings))
    a, b = (load_file(str(p / "final" / "model.safetensors")) for p in (whole, resumed))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
