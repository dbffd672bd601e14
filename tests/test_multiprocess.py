"""Two processes equal one process with the same global batch, for every trainer; checkpoints move between
process counts; a sharded (FSDP2) policy samples and saves the same model.

How: every stage runs once here, in the test process, and once in a two-process launch of the shipped config
(``accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2``, gloo on the CPU), started
once for all stages (tests/multiprocess_stages.py). The two runs' logged figures and final weights must agree.

Tolerances, and why they are not zero: the two runs compute the same sums in another order (a batch cut in two
halves, each padded to its own width; gradients added by an all-reduce instead of inside one backward), which
changes float32 rounding (~1e-7 relative per operation). Logged figures must agree within LOSS_TOL (relative, plus
ABS_TOL for figures near zero such as the first step's KL). Weights: Adam divides each gradient by its own running
size, so for a weight whose gradient is a near-cancelling sum, rounding can move its step by a sizeable share of
the learning rate; a few weights in 100,000 differ by up to ~2e-5 after six steps, the rest by under 1e-6. So every
weight must agree within WEIGHT_TOL and all but TYPICAL_SHARE of them within TYPICAL_TOL. Shares of tokens (PPO's
clipfrac) are counts: a token within rounding of the clip edge may fall on the other side, so they may differ by
one token (COUNT_TOL). The logged share is the mean over a step's 4 updates (2 epochs x 2 mini-batches of 2
responses of at most 12 tokens), so one token in a mini-batch of n tokens moves it by 1 / 4n: the tolerance is one
token of an 8-token mini-batch (seen after merging main: val/clipfrac 1/32 apart, weights 1.2e-7). A real mistake (a batch split twice, a mean of
per-process means, per-process whitening, a schedule stepped once per process) moves the figures by 1e-3 or more
and nearly every weight (docs/scaling.md gives the differences measured and the mistakes these tests catch).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.data.io import write_jsonl
from rlhfkit.runs import RunCard, read_metrics
from rlhfkit.toy.data import data_file

REPO = Path(__file__).resolve().parent.parent
LOSS_TOL = 1e-4  # relative, on every logged figure
ABS_TOL = 1e-5  # absolute, added to it: a figure near zero (step 1's KL, ~1e-6) has rounding errors of ~1e-6
COUNT_TOL = 1 / 32 + 1e-6  # absolute, on shares of tokens (clipfrac): one token of an 8-token mini-batch
WEIGHT_TOL = 1e-4  # absolute, on every weight of the final model (weights are ~0.02-1; lr 3e-3 a step)
TYPICAL_TOL, TYPICAL_SHARE = 1e-6, 1e-3  # and at most 0.1% of the weights further apart than 1e-6
SKIP_FIGURES = ("time/", "train/lr")  # and every figure ending in _per_s: wall-clock rates
TIMES: dict[str, float] = {}


def subset(kind: str, n: int, folder: Path) -> str:
    rows = [json.loads(line) for line in data_file(kind).read_text().splitlines()[:n]]
    path = folder / f"{kind}.jsonl"
    write_jsonl(path, rows)
    return str(path)


def plan(folder: Path) -> list[dict]:
    """Every trainer, tiny and short, with figures logged at every step."""
    demos, pairs, thumbs, prompts = (
        subset(k, n, folder) for k, n in (("demonstration", 160), ("comparison", 120), ("rating", 120), ("prompt", 60))
    )
    eval_prompts = subset("prompt", 6, folder / "eval")
    run = dict(progress=False, report_to=["jsonl"], log_every=1, seed=3)
    # responses of the untrained model rarely end within 12 tokens: keep the reward's score for them (the
    # response length, which varies from row to row)
    sampling = dict(
        **run, data=prompts, max_new_tokens=12, reward="rlhfkit.toy.rewards:length", missing_eos_penalty=None
    )
    ppo = dict(
        **run,
        data=prompts,
        eval_data=eval_prompts,
        reward="rlhfkit.toy.rewards:length",
        batch_size=4,
        max_new_tokens=12,
        ppo_epochs=2,
        num_minibatches=2,
        lr=3e-3,
        max_steps=4,
        save_every=2,
        keep_checkpoints=4,
    )
    return [
        dict(
            stage="sft",
            config=dict(
                **run,
                data=demos,
                batch_size=8,
                grad_accum=2,
                max_steps=6,
                lr=3e-3,
                eval_fraction=0.1,
                save_every=3,
                keep_checkpoints=4,
                group_by_length=False,  # batches of mixed lengths: processes hold different token counts
            ),
        ),
        dict(stage="rm", config=dict(**run, data=pairs, batch_size=8, max_steps=6, lr=3e-3, eval_fraction=0.1)),
        dict(stage="dpo", config=dict(**run, data=pairs, batch_size=8, max_steps=6, lr=3e-3, eval_fraction=0.1)),
        # grad_accum 2: each process's micro-batch is 2 of the 4 examples that KTO's z0 is a mean over
        dict(
            stage="kto",
            config=dict(**run, data=thumbs, batch_size=8, grad_accum=2, max_steps=6, lr=3e-3, eval_fraction=0.1),
        ),
        dict(
            stage="ppo",
            # with the over-optimisation monitor: its checks (at steps 0, 2, 4) are collective, and under FSDP2 the
            # check's sampler and the kept models gather the full weights
            config=dict(
                **ppo,
                adaptive_kl=True,
                target_kl=0.5,
                kl_horizon=50,
                normalize_reward="running",
                monitor=True,
                monitor_every=2,
            ),
        ),
        # RLOO and GRPO score each response against its group's: with the missing-EOS penalty every response scored
        # -1 and their advantages were the rounding of the KL penalty, which GRPO's division by the group's spread
        # (plus 1e-4) blew up, so one process and two agreed only where the CPU's rounding happened to. Here the
        # responses keep their word counts; GRPO also leaves the KL out of its reward (kl_coef 0), so that a group
        # of two equal counts has advantages of exactly 0 and not its KL's rounding divided by 1e-4.
        dict(stage="ppo", name="rloo", config=dict(**ppo, advantage="rloo", group_size=2, missing_eos_penalty=None)),
        dict(
            stage="ppo",
            name="grpo",
            config=dict(
                **ppo, advantage="grpo", group_size=2, lora=True, lora_r=4, missing_eos_penalty=None, kl_coef=0.0
            ),
        ),
        dict(
            stage="bon",
            config=dict(**sampling, n_max=4, max_prompts=6, batch_size=2),
        ),
        dict(
            stage="rejection",
            config=dict(**sampling, k=2, max_prompts=8, batch_size=4, sft_batch_size=4, max_steps=3),
        ),
    ]


def runner(stage: str):
    import importlib

    module, cls = {
        "sft": ("rlhfkit.train.sft", "SFTConfig"),
        "rm": ("rlhfkit.train.reward", "RewardConfig"),
        "dpo": ("rlhfkit.train.dpo", "DPOConfig"),
        "kto": ("rlhfkit.train.kto", "KTOConfig"),
        "ppo": ("rlhfkit.train.ppo", "PPOConfig"),
        "bon": ("rlhfkit.train.best_of_n", "BestOfNConfig"),
        "rejection": ("rlhfkit.train.rejection", "RejectionConfig"),
    }[stage]
    module = importlib.import_module(module)
    return lambda config: module.run(getattr(module, cls)(**config))


def launch(items: list[dict], folder: Path, config: str = "ddp.yaml", processes: int = 2) -> str:
    """Run ``items`` in a ``processes``-process launch of configs/accelerate/<config>; returns its output."""
    plan_file = folder / f"plan-{config}.json"
    keys = ("stage", "config", "interrupt")
    plan_file.write_text(json.dumps([{k: i[k] for k in keys if k in i} for i in items]))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / config),
        # port 0: the launcher's store binds a free port itself and tells the workers; a number picked here and
        # released before the launch could be taken by another process in between
        "--num_processes", str(processes), "--main_process_port", "0",
        str(REPO / "tests" / "multiprocess_stages.py"), str(plan_file),
    ]  # fmt: skip
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out.stdout


def interrupted_copy(run_dir: Path, at_step: int, dest: Path) -> Path:
    """The run folder as an interruption right after its checkpoint at ``at_step`` would have left it."""
    shutil.copytree(run_dir, dest)
    shutil.rmtree(dest / "final")
    for ckpt in (dest / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > at_step:
            shutil.rmtree(ckpt)
    card = RunCard.read(dest)
    card.finished, card.figures = False, {}
    card.write(dest)
    metrics = [m for m in read_metrics(dest) if m["step"] <= at_step and not any(k.startswith("eval/") for k in m)]
    (dest / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for extra in ("samples.jsonl", "critic.pt"):
        (dest / extra).unlink(missing_ok=True)
    return dest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (one-process run folder, two-process run folder)}, plus the resumed and the FSDP runs."""
    root = tmp_path_factory.mktemp("multiprocess")
    items = plan(root)
    for item in items:
        item.setdefault("name", item["stage"])
        item["one"] = dict(item["config"], output_dir=str(root / "one" / item["name"]))
        item["config"] = dict(item["config"], output_dir=str(root / "two" / item["name"]))
    start = time.perf_counter()
    for item in items:
        runner(item["stage"])(item["one"])
    TIMES["one process, all stages"] = time.perf_counter() - start
    # checkpoints of one process, resumed by two
    by_name = {i["name"]: i for i in items}
    resumed = []
    for name, step in (("sft", 3), ("ppo", 2)):
        copy = interrupted_copy(Path(by_name[name]["one"]["output_dir"]), step, root / "one-to-two" / name)
        resumed.append(dict(stage=by_name[name]["stage"], config=dict(by_name[name]["config"], output_dir=str(copy))))
    # a stop signal that reaches process 1 alone in step 4: both stop at its end, and the same command resumes
    cut = dict(by_name["sft"]["config"], output_dir=str(root / "two" / "sft-cut"))
    resumed += [dict(stage="sft", config=cut, interrupt={"rank": 1, "at_call": 4}), dict(stage="sft", config=cut)]
    start = time.perf_counter()
    print(launch(items + resumed, root))
    TIMES["two processes (DDP), all stages + 2 resumes, with start-up"] = time.perf_counter() - start
    # checkpoints of two processes, resumed by one
    out = {name: (Path(i["one"]["output_dir"]), Path(i["config"]["output_dir"])) for name, i in by_name.items()}
    out["sft interrupted on one of two"] = (out["sft"][0], root / "two" / "sft-cut")
    for name, step in (("sft", 3), ("ppo", 2)):
        copy = interrupted_copy(out[name][1], step, root / "two-to-one" / name)
        runner(by_name[name]["stage"])(dict(by_name[name]["one"], output_dir=str(copy)))
        out[f"{name} two->one"] = (out[name][0], copy)
        out[f"{name} one->two"] = (out[name][0], root / "one-to-two" / name)
    # the sharded policy: PPO (sampler gathers the full weights) and SFT under FSDP2 on two CPU processes
    fsdp = [dict(stage=n, config=dict(by_name[n]["config"], output_dir=str(root / "fsdp" / n))) for n in ("ppo", "sft")]
    start = time.perf_counter()
    print(launch(fsdp, root, config="fsdp2.yaml"))
    TIMES["two processes (FSDP2), ppo + sft, with start-up"] = time.perf_counter() - start
    for n in ("ppo", "sft"):
        out[f"{n} fsdp2"] = (out[n][0], root / "fsdp" / n)
    # DeepSpeed ZeRO on two CPU processes, where DeepSpeed is installed. grad_accum 1 (DeepSpeed's rule): SFT's
    # global batch then falls into the same two pieces as the one-process run's two micro-batches.
    if importlib.util.find_spec("deepspeed") is not None:
        for config, tag, names in (
            ("deepspeed-zero2.yaml", "zero2", ("sft", "dpo")),
            ("deepspeed-zero3.yaml", "zero3", ("sft", "ppo")),
        ):
            ds = [
                dict(stage=n, config=dict(by_name[n]["config"], grad_accum=1, output_dir=str(root / tag / n)))
                for n in names
            ]
            start = time.perf_counter()
            print(launch(ds, root, config=config))
            TIMES[f"two processes ({tag}), {' + '.join(names)}, with start-up"] = time.perf_counter() - start
            out.update({f"{n} {tag}": (out[n][0], root / tag / n) for n in names})
    print("\n" + "\n".join(f"{k}: {v:.1f} s" for k, v in TIMES.items()))
    return out


def figures(run_dir: Path) -> dict[tuple[int, str], float]:
    return {
        (m["step"], k): v
        for m in read_metrics(run_dir)
        for k, v in m.items()
        if k != "step" and not k.startswith(SKIP_FIGURES) and not k.endswith("_per_s") and isinstance(v, float)
    }


def assert_same_figures(one: Path, two: Path) -> None:
    a, b = figures(one), figures(two)
    assert a.keys() == b.keys() and a
    worst = max((abs(b[k] - a[k]) / (LOSS_TOL * abs(a[k]) + ABS_TOL), k) for k in a if not k[1].endswith("clipfrac"))
    clip = max((abs(b[k] - a[k]) for k in a if k[1].endswith("clipfrac")), default=None)
    clip_note = "" if clip is None else f"; clipfrac {clip:.4f} apart (tolerance {COUNT_TOL:.4f})"
    where = f"{two.parent.name}/{two.name}"
    print(f"{where}: largest figure difference {worst[0]:.2f} of its tolerance ({worst[1][1]}){clip_note}")
    for key in a:
        if key[1].endswith("clipfrac"):
            assert abs(b[key] - a[key]) <= COUNT_TOL, key
        else:
            assert abs(b[key] - a[key]) <= LOSS_TOL * abs(a[key]) + ABS_TOL, (key, a[key], b[key])


def assert_same_weights(one: Path, two: Path) -> None:
    a, b = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    worst, share = diff.max().item(), (diff > TYPICAL_TOL).float().mean().item()
    where = f"{two.parent.name}/{two.name}"
    print(f"{where}: largest weight difference {worst:.1e}; {share:.4%} of weights over {TYPICAL_TOL:.0e}")
    assert worst <= WEIGHT_TOL, f"largest weight difference {worst:.2e} > {WEIGHT_TOL:.0e}"
    assert share <= TYPICAL_SHARE, f"{share:.3%} of the weights differ by more than {TYPICAL_TOL:.0e}"


@pytest.mark.parametrize("name", ["sft", "rm", "dpo", "kto", "ppo", "rloo", "grpo", "rejection"])
def test_two_processes_equal_one_with_the_same_global_batch(runs, name):
    one, two = runs[name]
    assert_same_figures(one, two)
    if name == "rm":
        a, b = load_file(one / "final" / "head.safetensors"), load_file(two / "final" / "head.safetensors")
        assert all(torch.allclose(a[k], b[k], atol=TYPICAL_TOL) for k in a)
    assert_same_weights(one, two)
    assert RunCard.read(two).finished


def test_best_of_n_writes_the_same_choices_on_two_processes(runs):
    one, two = runs["bon"]
    read = lambda p: [json.loads(line) for line in (p / "chosen.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = read(one), read(two)
    assert [r["completion"] for r in a] == [r["completion"] for r in b] and len(a) == 6
    assert [r["score"] for r in a] == [r["score"] for r in b]


@pytest.mark.parametrize("name", ["ppo", "ppo fsdp2"])
def test_the_monitor_checks_the_same_policy_on_two_processes(runs, name):
    """PPO's over-optimisation checks (steps 0, 2, 4) on two processes, plain and FSDP2: the same signals (compared
    with the other figures), the same check samples, and the same kept models, gathered whole under FSDP2."""
    one, two = runs[name]
    assert {step for step, key in figures(two) if key == "monitor/kl"} == {0, 2, 4}
    samples = lambda p: (p / "monitor" / "samples.jsonl").read_text()  # noqa: E731
    assert samples(one) == samples(two)
    kept = sorted(p.name for p in (one / "monitor").glob("step-*"))
    assert kept and kept == sorted(p.name for p in (two / "monitor").glob("step-*"))
    for step in kept:
        a, b = (load_file(p / "monitor" / step / "model.safetensors") for p in (one, two))
        assert a.keys() == b.keys() and all(b[k].shape == a[k].shape for k in a)
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= WEIGHT_TOL


@pytest.mark.parametrize("name", ["sft two->one", "sft one->two", "ppo two->one", "ppo one->two"])
def test_checkpoints_resume_on_another_number_of_processes(runs, name):
    one, resumed = runs[name]
    assert_same_weights(one, resumed)
    assert_same_figures(one, resumed)


def test_a_ctrl_c_that_reaches_one_process_stops_both_at_the_same_step(runs):
    """Process 1 alone gets a SIGTERM in step 4: both processes stop at its end (the request is summed over them
    there; one process stopping alone left the other waiting in a collective), the checkpoint holds step 4, and the
    resumed run ends as an uninterrupted one-process run does."""
    one, cut = runs["sft interrupted on one of two"]
    steps = sorted(json.loads((c / "trainer_state.json").read_text())["step"] for c in (cut / "checkpoints").glob("*"))
    assert 4 in steps and max(steps) == 6  # step 4's checkpoint at the interruption, then the resumed run's
    assert_same_weights(one, cut)
    assert_same_figures(one, cut)


@pytest.mark.parametrize("name", ["ppo fsdp2", "sft fsdp2"])
def test_sharded_policy_samples_trains_and_saves_the_same_model(runs, name):
    """FSDP2 on two CPU processes: each holds half of every weight; the sampler gathers the full weights for a
    rollout, the final model is gathered for saving. Same figures and weights as one unsharded process."""
    one, sharded = runs[name]
    assert_same_figures(one, sharded)
    assert_same_weights(one, sharded)
    ckpt = next((sharded / "checkpoints").glob("step-*"))
    assert any(p.name.startswith("pytorch_model_fsdp") for p in ckpt.iterdir())  # the checkpoint is sharded


def test_a_global_batch_falls_into_the_same_pieces_on_any_number_of_processes():
    """12 examples, worked by hand. 2 processes x grad_accum 2: process 0 takes [0,4,8] and [1,5,9], process 1
    [2,6,10] and [3,7,11]; micro-batch 0 of both together is the even examples, as it is for one process with
    grad_accum 2 (KTO's z0 is a mean over it). 2 processes x 1 cut the batch into the same pieces as 1 x 2."""
    from types import SimpleNamespace

    from rlhfkit.train.batching import split_micro

    batch = list(range(12))

    def pieces(P, g):
        return [split_micro(batch, SimpleNamespace(num_processes=P, process_index=p), g) for p in range(P)]

    assert pieces(2, 2) == [[[0, 4, 8], [1, 5, 9]], [[2, 6, 10], [3, 7, 11]]]
    assert pieces(1, 2) == [[[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]]
    assert sorted(pieces(2, 2)[0][0] + pieces(2, 2)[1][0]) == pieces(1, 2)[0][0]
    assert [m for (m,) in pieces(2, 1)] == pieces(1, 2)[0]
    assert pieces(3, 1) == [[[0, 3, 6, 9]], [[1, 4, 7, 10]], [[2, 5, 8, 11]]]


def test_the_global_batch_check_counts_the_pieces_the_trainer_cuts():
    """3 examples on 2 CPU processes, grad_accum unset. In pieces of 8 (the default) that is one micro-batch per
    process, which 3 examples fill. A model whose pieces are 1 example (``cpu_micro_batch`` of a large model on
    long examples) cuts ceil(3 / 2) = 2 micro-batches per process: 4 slots for 3 examples, so one process would
    run a micro-batch fewer than the other; the check refuses it, naming the pieces."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from rlhfkit.train.batching import check_global_batch, split_micro

    def cpu(p=0):
        return SimpleNamespace(
            num_processes=2, process_index=p, device=torch.device("cpu"), distributed_type=DistributedType.MULTI_CPU
        )

    check_global_batch(cpu(), 3, None)  # pieces of 8: one micro-batch each
    with pytest.raises(
        ValueError, match=r"grad_accum 2 \(unset: pieces of up to 1 examples on the CPU\) it must be at least 4"
    ):
        check_global_batch(cpu(), 3, None, micro_batch=1)
    counts = [len(split_micro([0, 1, 2], cpu(p), None, 1)) for p in (0, 1)]
    assert counts == [2, 1]  # what the refused batch would have run: the processes out of step
    check_global_batch(cpu(), 4, None, micro_batch=1)


@pytest.mark.parametrize("name", ["sft zero2", "dpo zero2", "sft zero3", "ppo zero3"])
def test_deepspeed_zero_on_cpu_processes_equals_one_process(runs, name):
    """ZeRO-2 (gradients and optimiser state split) and ZeRO-3 (weights split too: PPO's sampler gathers them,
    the final model is gathered for saving) on two CPU processes (DeepSpeed's CPU backend, gloo)."""
    if name not in runs:
        pytest.skip("DeepSpeed is not installed (pip install deepspeed; it runs on CPU processes too)")
    one, ds = runs[name]
    assert_same_figures(one, ds)
    assert_same_weights(one, ds)
