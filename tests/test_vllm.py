"""vLLM rollouts: a colocated engine and a server take the trainer's weights, seeds follow rows, a dead server
raises instead of hanging, and PPO runs with vLLM. They need vLLM and a GPU, and skip without them (the
development machine of this project has neither: these tests have not run there; docs/scaling.md says so).

    pytest tests/test_vllm.py -s      # on a GPU machine with `pip install rlhfkit[vllm]`
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is an optional extra (pip install rlhfkit[vllm])")
if not torch.cuda.is_available():
    pytest.skip("vLLM needs a GPU", allow_module_level=True)

from rlhfkit.config import SamplingPart  # noqa: E402
from rlhfkit.models.load import save_model  # noqa: E402
from rlhfkit.models.tiny import build_tiny  # noqa: E402
from rlhfkit.rollout import RowSeeds, TransformersSampler  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [f"question {i} : what is the capital of country {i} ?" for i in range(16)]
GREEDY = dict(max_new_tokens=12, top_k=1)


def tiny_on_gpu(seed: int):
    model, tok = build_tiny("tiny-4m", seed=seed)
    return model.to("cuda").eval(), tok


def greedy_texts(model, tok) -> list[str]:
    return TransformersSampler(model, tok, SamplingPart(**GREEDY)).generate(PROMPTS).texts


def agreement(a: list[str], b: list[str]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


@pytest.fixture(scope="module")
def colocated(tmp_path_factory):
    """One engine for the module (vLLM keeps process-wide state: one engine per process), started from one model
    in float32 so its greedy tokens can be compared with the trainer's."""
    from rlhfkit.vllm_backend.colocate import ColocatedSampler

    start, tok = tiny_on_gpu(seed=0)
    folder = tmp_path_factory.mktemp("start")
    save_model(start, tok, folder)
    sampler = ColocatedSampler(start, tok, SamplingPart(**GREEDY), model_spec=str(folder), dtype=torch.float32)
    return sampler, start, tok


def test_colocated_engine_samples_with_the_weights_it_is_given(colocated):
    sampler, start, tok = colocated
    other, _ = tiny_on_gpu(seed=1)
    assert agreement(sampler.generate(PROMPTS).texts, greedy_texts(start, tok)) >= 0.9
    started = time.perf_counter()
    sampler.sync_weights(other)
    torch.cuda.synchronize()
    print(f"weight sync, tiny-4m (4.4M parameters), in place: {time.perf_counter() - started:.3f} s")
    after = sampler.generate(PROMPTS).texts
    assert agreement(after, greedy_texts(other, tok)) >= 0.9  # the pushed weights, not the starting ones
    assert agreement(after, greedy_texts(start, tok)) <= 0.5
    sampler.sync_weights(start)


def test_row_seeds_give_each_row_its_own_sample_whatever_the_batch(colocated):
    sampler, start, tok = colocated
    sampler.params = SamplingPart(max_new_tokens=12, temperature=1.0)
    try:
        whole = sampler.generate(PROMPTS[:4], n=2, rows=RowSeeds(7)).texts
        halves = (
            sampler.generate(PROMPTS[:2], n=2, rows=RowSeeds(7)).texts
            + sampler.generate(PROMPTS[2:4], n=2, rows=RowSeeds(7, first_row=4)).texts
        )
    finally:
        sampler.params = SamplingPart(**GREEDY)
    assert agreement(whole, halves) >= 0.75  # kernels may batch differently: near-ties can flip a token
    assert whole[0] != whole[1] or whole[2] != whole[3]  # repeated prompts get different seeds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_takes_pushed_weights_and_a_dead_server_raises_in_time(tmp_path):
    from rlhfkit.vllm_backend.client import ServerSampler

    start, tok = tiny_on_gpu(seed=0)
    other, _ = tiny_on_gpu(seed=1)
    save_model(start, tok, tmp_path / "start")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rlhfkit.cli", "vllm-serve", "--model", str(tmp_path / "start"), "--port", str(port),
         "--dtype", "float32", "--gpu-memory-utilization", "0.3"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        import httpx

        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        params = SamplingPart(
            **GREEDY, vllm_mode="server", vllm_server=f"http://127.0.0.1:{port}", vllm_sync_timeout=30
        )
        sampler = ServerSampler(start, tok, params)
        started = time.perf_counter()
        sampler.sync_weights(other)
        print(f"weight sync to a server, tiny-4m, NCCL: {time.perf_counter() - started:.3f} s")
        assert agreement(sampler.generate(PROMPTS).texts, greedy_texts(other, tok)) >= 0.9
        server.kill()
        server.wait()
        started = time.perf_counter()
        with pytest.raises((TimeoutError, RuntimeError, OSError, httpx.HTTPError)):
            sampler.sync_weights(start)
        assert time.perf_counter() - started < 30 + 60  # the timeout, not a hang
    finally:
        server.kill()


def test_ppo_with_a_colocated_engine_runs_and_reports_the_sync_share(tmp_path):
    """In a fresh process (one engine per process). The sync share of a step is the issue's < 10% target."""
    code = f"""
import json
from rlhfkit.train.ppo import PPOConfig, run
from rlhfkit.runs import read_metrics
from rlhfkit.toy.data import data_file
path = run(PPOConfig(model="tiny-4m", data=str(data_file("prompt")), reward="rlhfkit.toy.rewards:count_the",
                     rollout_backend="vllm", max_steps=4, batch_size=16, max_new_tokens=32, progress=False,
                     report_to=["jsonl"], output_dir={str(tmp_path / "ppo")!r}))
m = read_metrics(path)[1:4]
print(json.dumps({{"sync_s": sum(x["time/weight_sync_s"] for x in m), "step_s": sum(x["time/step_s"] for x in m)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    times = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"PPO tiny-4m with colocated vLLM: weight sync {times['sync_s'] / times['step_s']:.1%} of a step")
    assert (tmp_path / "ppo" / "final" / "config.json").exists()
