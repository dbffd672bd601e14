"""What a stage does before its first step and after its last: the learning-rate schedule written without
transformers' trainer utilities, tokenisation in one call per group and cached, and the program's exit
without the interpreter's teardown. (Speed itself is measured by bench/whole_process.py, not here.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.config import OptimPart
from rlhfkit.data.chat import _ids, completion_text, prompt_text, tokenize_prompt_completions
from rlhfkit.data.records import Message
from rlhfkit.train.common import make_scheduler

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("total, warmup_ratio", [(100, 0.1), (7, 0.0), (33, 0.5), (1, 0.0)])
def test_the_schedule_gives_transformers_numbers(schedule, total, warmup_ratio):
    """Exactly the multipliers of transformers' get_scheduler (constant_with_warmup for "constant"), at every
    step and past the end."""
    from transformers import get_scheduler

    cfg = OptimPart(lr_schedule=schedule, warmup_ratio=warmup_ratio, lr=1e-3)
    ours_opt, theirs_opt = (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3) for _ in range(2))
    ours = make_scheduler(ours_opt, cfg, total)
    name = {"constant": "constant_with_warmup"}.get(schedule, schedule)
    theirs = get_scheduler(name, theirs_opt, num_warmup_steps=int(warmup_ratio * total), num_training_steps=total)
    for _ in range(total + 3):
        assert ours.get_last_lr() == theirs.get_last_lr()
        ours_opt.step(), theirs_opt.step(), ours.step(), theirs.step()


def test_one_tokenizer_call_per_group_gives_the_ids_of_one_text_at_a_time(tiny):
    _, tok = tiny
    chat = [Message(role="user", content="what is one plus one ?")]
    for prompt, completions in [
        ("what is one plus one ?", [" two .", " three ."]),
        (chat, ["two .", [Message(role="assistant", content="three .")]]),
        ("plain prompt", [[Message(role="assistant", content="a reply")]]),
    ]:
        prompt_ids, completion_ids = tokenize_prompt_completions(tok, prompt, completions)
        as_chat = [Message(role="user", content=prompt)] if isinstance(prompt, str) else prompt
        prompts = [as_chat if not isinstance(c, str) else prompt for c in completions]
        assert prompt_ids == _ids(tok, prompt_text(tok, prompts[-1]))
        assert completion_ids == [_ids(tok, completion_text(tok, p, c)) for p, c in zip(prompts, completions)]


def test_token_ids_are_cached_by_records_tokenizer_settings_and_code(tmp_path, monkeypatch, tiny):
    from rlhfkit.data.io import read_records
    from rlhfkit.data.pairs import Group
    from rlhfkit.models.tiny import build_tokenizer
    from rlhfkit.toy.data import data_file
    from rlhfkit.train import token_cache
    from rlhfkit.train.dpo import tokenize_all

    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    records = read_records(data_file("comparison"), "comparison")[0][:20]
    tok = build_tokenizer()
    calls = []

    def tokenize(rs):
        calls.append(len(rs))
        return tokenize_all(tok, rs, 64)

    first = token_cache.cached_tokens(tokenize, records, tok, 64, item_type=Group)
    again = token_cache.cached_tokens(tokenize, records, tok, 64, item_type=Group)
    assert calls == [20] and again == first and isinstance(again[0], Group)
    token_cache.cached_tokens(tokenize, records[:19], tok, 64, item_type=Group)  # other records
    token_cache.cached_tokens(tokenize, records, tok, 32, item_type=Group)  # another max_length
    other = build_tokenizer()
    other.chat_template = "{{ messages[0]['content'] }}"
    token_cache.cached_tokens(tokenize, records, other, 64, item_type=Group)  # another tokenizer
    assert calls == [20, 19, 20, 20]
    # SFT's (ids, labels) pairs come back as the tuples they were
    pairs = token_cache.cached_tokens(lambda rs: [([1, 2], [-100, 2]) for _ in rs], records, tok, "sft")
    assert token_cache.cached_tokens(lambda rs: 1 / 0, records, tok, "sft") == pairs == [([1, 2], [-100, 2])] * 20
    # edited tokenisation code is a new key: the source of the modules that tokenise is hashed
    monkeypatch.setattr(token_cache, "SOURCES", ("rlhfkit.data.io",))
    token_cache.cached_tokens(tokenize, records, tok, 64, item_type=Group)
    assert calls == [20, 19, 20, 20, 20]
    # so is a module the stage names as shaping its ids (the reward model's reward_data)
    token_cache.cached_tokens(tokenize, records, tok, 64, item_type=Group, sources=("rlhfkit.data.records",))
    token_cache.cached_tokens(tokenize, records, tok, 64, item_type=Group, sources=("rlhfkit.data.records",))
    assert calls == [20, 19, 20, 20, 20, 20]


def test_the_token_cache_prune_keeps_the_newest_and_skips_files_another_process_deleted(tmp_path):
    """Every rank of a multi-process run prunes the same cache folder at once: a file listed and then deleted
    by another rank before this one reads its time is skipped (a clean-clone CI run died on exactly that)."""
    import os

    from rlhfkit.train.token_cache import prune

    files = []
    for i in range(6):
        f = tmp_path / f"{i}.json"
        f.write_text("[]")
        os.utime(f, (1000 + i, 1000 + i))
        files.append(f)
    gone = tmp_path / "deleted-by-another-rank.json"
    prune([*files[:3], gone, *files[3:]], keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4.json", "5.json"]


def test_the_program_leaves_without_teardown_with_everything_written(tmp_path):
    """`rlhfkit` exits through os._exit once the exit handlers ran: the printed figures, the metrics, the
    TensorBoard events and the finished card are all there, and errors keep their exit status."""
    out = tmp_path / "sft"
    cmd = [sys.executable, "-m", "rlhfkit.cli", "sft", "--data", "toy", "--max-steps", "2", "--batch-size", "4"]
    done = subprocess.run(
        [*cmd, "--output-dir", str(out), "--no-progress"], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sft finished" in done.stdout and "eval_loss" in done.stdout
    card = json.loads((out / "card.json").read_text())
    assert card["finished"] and card["figures"]["steps"] == 2
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()][-1] == 2
    assert sum(f.stat().st_size for f in (out / "tb").iterdir()) > 100
    assert (out / "final" / "model.safetensors").stat().st_size > 0
    again = subprocess.run([*cmd, "--output-dir", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 1 and "already holds a finished sft run" in again.stderr
    bad = subprocess.run([*cmd, "--lr", "fast"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert bad.returncode == 2 and "setting 'lr'" in bad.stderr


def test_a_stage_loads_neither_peft_nor_the_trainer_utilities_it_does_not_use(tmp_path):
    code = f"""
import sys
from rlhfkit.train.sft import SFTConfig, run
from rlhfkit.toy.data import data_file
run(SFTConfig(data=str(data_file("demonstration")), max_steps=1, batch_size=4, progress=False,
              report_to=["jsonl"], output_dir={str(tmp_path / "run")!r}))
print([m for m in ("peft", "transformers.trainer_utils", "torch.utils.tensorboard") if m in sys.modules])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_tensorboard_reads_the_event_files_rlhfkit_writes(tmp_path):
    """Scalars and text written by rlhfkit.tb_events read back through TensorBoard's own reader (which checks
    every record's CRC) exactly as torch's SummaryWriter would have them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlhfkit.tb_events import EventFileWriter, masked_crc32c

    assert masked_crc32c(b"123456789") == ((0xE3069283 >> 15 | 0xE3069283 << 17) + 0xA282EAD8) & 0xFFFFFFFF
    writer = EventFileWriter(tmp_path)
    writer.scalars(1, {"train/loss": 0.5, "train/lr": 1e-3})
    writer.scalars(2, {"train/loss": 0.25})
    writer.scalars(-1, {"eval/loss": 2.0})
    writer.text(3, "samples", "| prompt | response |\n|---|---|\n| où ? | ici |")
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.5), (2, 0.25)]
    assert acc.Scalars("train/lr")[0].value == pytest.approx(1e-3) and acc.Scalars("eval/loss")[0].step == -1
    (text,) = acc.Tensors("samples/text_summary")
    assert text.step == 3 and text.tensor_proto.string_val == [
        "| prompt | response |\n|---|---|\n| où ? | ici |".encode()
    ]
    assert acc.SummaryMetadata("samples/text_summary").plugin_data.plugin_name == "text"


FRAGMENTING_PASS = """
import torch
from rlhfkit.train.common import fix_mmap_threshold
fixed = fix_mmap_threshold()
def rss_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
start = rss_mb()
torch.ones(8_000_000)  # a 32 MB block, freed at once: glibc's dynamic threshold rises to 32 MB
temporaries, kept = [], []
for _ in range(50):  # a forward pass: a temporary of 4 MB, then 120 KB kept for the backward, layer after layer
    temporaries.append(torch.ones(1_000_000))
    kept.append(torch.ones(30_000))
del temporaries
print(fixed, round(rss_mb() - start))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_fixed_mmap_threshold_gives_freed_temporaries_back_to_the_os():
    """Under glibc's default (dynamic) threshold the 200 MB of freed temporaries stay in the process, pinned between
    the small tensors kept; with the threshold a stage fixes when RLHFKIT_MMAP_THRESHOLD is set, they go back to
    the OS when freed."""
    growth = {}
    for value in ("0", str(1 << 20)):
        env = dict(os.environ, RLHFKIT_MMAP_THRESHOLD=value, OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", FRAGMENTING_PASS], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        fixed, mb = out.stdout.split()
        assert fixed == str(value != "0")
        growth[value] = int(mb)
    assert growth["0"] > 150 and growth[str(1 << 20)] < 30, growth


def test_stages_on_the_cpu_fix_the_mmap_threshold_when_asked(monkeypatch):
    from rlhfkit.config import ModelPart
    from rlhfkit.train import common

    calls = []
    monkeypatch.setattr(common, "fix_mmap_threshold", lambda: calls.append(1) or True)
    common.make_accelerator(ModelPart(model="tiny"))
    assert calls == [1]


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bf16_mixed_on_a_cpu_without_bf16_instructions_says_so(monkeypatch, capsys, has_bf16):
    """Asked for bf16-mixed where bf16 products are emulated (4-8x float32 here), a stage says so once at its
    start; where the CPU has them, or in float32, it says nothing."""
    from rlhfkit.config import ModelPart
    from rlhfkit.train import common

    monkeypatch.setattr(common, "cpu_has_bf16", lambda: has_bf16)
    common.make_accelerator(ModelPart(model="tiny", dtype="bf16-mixed"))
    said = capsys.readouterr().out
    assert ("bf16 products are emulated" in said) is (not has_bf16)
    common.make_accelerator(ModelPart(model="tiny"))
    assert "bf16" not in capsys.readouterr().out


def test_the_bench_counts_matrix_products_by_their_flops():
    """bench/whole_process.py --ops: under the profiler, a product's GFLOP is 2mkn and it is counted as a
    matmul; an addition and an attention call land in their own kinds, not in the products."""
    from torch.profiler import ProfilerActivity, profile

    from bench.whole_process_children import op_kind, op_kinds

    a, b = torch.randn(64, 32), torch.randn(32, 16)
    q = torch.randn(1, 2, 8, 4)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(3):
            a @ b
        a + a
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    kinds = op_kinds(prof.key_averages())
    assert kinds["matmul"]["gflop"] == pytest.approx(3 * 2 * 64 * 32 * 16 / 1e9)
    assert kinds["other"]["gflop"] == pytest.approx(64 * 32 / 1e9) and kinds["other"]["cpu_s"] > 0  # the add
    assert kinds["attention"]["cpu_s"] > 0
    assert [op_kind(n) for n in ("aten::addmm", "aten::_fused_adamw_", "aten::mul")] == ["matmul", "optimiser", "other"]
