"""SFT learns, resumes exactly, checkpoints on Ctrl-C, and saves models plain transformers can load."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rlhfkit.data import Demonstration
from rlhfkit.data.chat import IGNORE_INDEX, tokenize_demonstration
from rlhfkit.runs import read_metrics
from rlhfkit.toy.data import data_file
from rlhfkit.train import batching
from rlhfkit.train.sft import SFTConfig, collate, evaluate, run, token_loss_sum

DEMOS = str(data_file("demonstration"))


def cfg(tmp_path, name="run", **kw):
    base = dict(
        output_dir=str(tmp_path / name),
        data=DEMOS,
        max_steps=30,
        batch_size=16,
        log_every=10,
        progress=False,
        report_to=["jsonl"],
    )
    return SFTConfig(**{**base, **kw})


def test_loss_is_on_completion_tokens_only(tiny):
    _, tok = tiny
    rec = Demonstration.model_validate(
        {
            "messages": [
                {"role": "system", "content": "be brief ."},
                {"role": "user", "content": "what is one plus one ?"},
                {"role": "assistant", "content": "the answer is two ."},
                {"role": "user", "content": "and two plus two ?"},
                {"role": "assistant", "content": "the answer is four ."},
            ]
        }
    )
    ids, labels = tokenize_demonstration(tok, rec)
    learned = tok.decode([t for t in labels if t != IGNORE_INDEX])
    assert learned == "the answer is two .<|im_end|>\nthe answer is four .<|im_end|>\n"
    assert tok.decode(ids) == tok.apply_chat_template([m.model_dump() for m in rec.messages], tokenize=False)


def test_sft_on_tiny_default_halves_the_loss_quickly(tmp_path, tiny):
    """The issue's bar: >= 50% lower held-out loss in under 30 s on this 2-core CPU. Measured in process
    CPU seconds (at most 2 x 30 with two threads), which neighbours on a shared machine do not inflate."""
    start, cpu_start = time.perf_counter(), time.process_time()
    path = run(cfg(tmp_path, max_steps=150, lr=3e-3, eval_fraction=0.05))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    card = json.loads((path / "card.json").read_text())
    # The same held-out loss for the untrained model (same seed, so same split and same initial weights).
    from rlhfkit.data.io import load_train_eval
    from rlhfkit.models.tiny import build_tiny
    from rlhfkit.train.sft import tokenize_all

    model, tok = build_tiny("tiny", seed=0)
    _, held, _ = load_train_eval(DEMOS, None, 0.05, "demonstration", seed=0)
    from accelerate import Accelerator

    initial = evaluate(model, tokenize_all(tok, held, 512), cfg(tmp_path), tok.pad_token_id, Accelerator())["eval/loss"]
    final = card["figures"]["eval_loss"]
    print(f"held-out loss {initial:.3f} -> {final:.3f} in {elapsed:.1f} s wall, {cpu:.1f} s CPU")
    assert final <= 0.5 * initial
    assert cpu < 2 * 30
    assert (path / "config.yaml").exists() and (path / "final" / "config.json").exists()
    assert card["stage"] == "sft" and card["finished"] and card["figures"]["steps"] == 150
    assert card["parents"] == [{"role": "model", "path": "tiny", "id": None}]


def test_gradient_accumulation_equals_one_big_batch(tiny):
    """Loss normalised by the step's token count: two micro-batches give the gradient of the whole batch."""
    model, tok = tiny
    from rlhfkit.toy.world import demonstrations

    ex = [tokenize_demonstration(tok, Demonstration.model_validate(d)) for d in demonstrations(8, seed=3)]

    def grads(micro_batches):
        model.zero_grad()
        batches = [collate(m, tok.pad_token_id, False, 512) for m in micro_batches]
        total = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        for b in batches:
            loss, _ = token_loss_sum(model, b)
            (loss / total).backward()
        return [p.grad.clone() for p in model.parameters()]

    whole, split = grads([ex]), grads([ex[:3], ex[3:]])
    model.zero_grad()
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_packing_gives_the_same_loss_as_padding(tiny):
    model, tok = tiny
    from rlhfkit.toy.world import demonstrations

    ex = [tokenize_demonstration(tok, Demonstration.model_validate(d)) for d in demonstrations(6, seed=4)]
    with torch.no_grad():
        padded, n1 = token_loss_sum(model, collate(ex, tok.pad_token_id, False, 512))
        packed_batch = collate(ex, tok.pad_token_id, True, 512)
        packed, n2 = token_loss_sum(model, packed_batch)
    assert packed_batch["input_ids"].shape[0] == 1 and n1 == n2
    torch.testing.assert_close(packed, padded, atol=1e-4, rtol=1e-5)


def test_batch_order_is_a_function_of_seed_and_epoch():
    lengths = list(range(100))
    a = batching.batch_order(lengths, 8, seed=1, epoch=0, group_by_length=True)
    assert a == batching.batch_order(lengths, 8, seed=1, epoch=0, group_by_length=True)
    assert a != batching.batch_order(lengths, 8, seed=1, epoch=1, group_by_length=True)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 20  # grouped by length: little padding inside a batch


def test_resume_matches_an_uninterrupted_run(tmp_path):
    straight = run(cfg(tmp_path, "straight", max_steps=40))
    with_ckpt = run(cfg(tmp_path, "ckpt", max_steps=40, save_every=20, keep_checkpoints=5))
    # A third run starts from the step-20 checkpoint of the second, as a run killed at step 20 would.
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    os.symlink(with_ckpt / "checkpoints" / "step-20", resumed_dir / "checkpoints" / "step-20")
    resumed = run(cfg(tmp_path, "resumed", max_steps=40))
    losses = [[m["train/loss"] for m in read_metrics(p) if "train/loss" in m] for p in (straight, resumed)]
    assert losses[0][-2:] == losses[1]  # the resumed run logs only steps 30 and 40, identical
    from safetensors.torch import load_file

    a, b = load_file(straight / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_folder_is_not_overwritten(tmp_path):
    run(cfg(tmp_path, max_steps=2))
    with pytest.raises(FileExistsError, match="already holds a finished sft run"):
        run(cfg(tmp_path, max_steps=2))


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "interrupted"
    cmd = [
        sys.executable,
        "-m",
        "rlhfkit.cli",
        "sft",
        "--data",
        "toy",
        "--output-dir",
        str(out),
        "--model",
        "tiny-4m",
        "--max-steps",
        "300",
        "--log-every",
        "1",
        "--no-progress",
        "--batch-size",
        "4",
    ]
    # A shell without job control starts background commands with SIGINT ignored, and Python keeps an ignored
    # SIGINT ignored (no KeyboardInterrupt): a suite run as `... &` then ran all 300 steps. Ctrl-C is what this
    # test sends, so the child starts with SIGINT at its default, as a terminal's foreground job does.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(read_metrics(out)) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "checkpoint saved" in output
    assert (
        f"to resume: rlhfkit sft --data toy --output-dir {out} --model tiny-4m" in output
    )  # the folder to rerun with, named
    (ckpt,) = (out / "checkpoints").glob("step-*")
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert step >= 3
    assert step < 300
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # the same command resumes
    assert done.returncode == 0, done.stderr
    assert f"resumed from {ckpt}" in done.stdout
    assert read_metrics(out)[-1]["step"] == 300
    other = subprocess.run(cmd + ["--lr", "0.01"], capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and "already holds a finished sft run" in other.stderr


def test_skip_invalid_lists_bad_rows_in_the_run_folder(tmp_path):
    data = tmp_path / "demos.jsonl"
    good = {"prompt": "what is one plus one ?", "completion": "two ."}
    data.write_text("\n".join([json.dumps(good)] * 40 + ["{broken", json.dumps({"prompt": "x"})]) + "\n")
    from rlhfkit.data import DataError

    with pytest.raises(DataError, match=r"demos.jsonl:41: malformed JSON"):
        run(cfg(tmp_path, "strict", data=str(data), max_steps=2))
    path = run(cfg(tmp_path, "lenient", data=str(data), max_steps=2, skip_invalid=True))
    rows = [json.loads(line) for line in (path / "invalid_rows.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rows] == [f"{data}:41", f"{data}:42"]
    assert "field 'completion': missing" in rows[1]["error"]
