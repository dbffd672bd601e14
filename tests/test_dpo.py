"""DPO: learning on a set with a known rule, the three kinds of reference agree, the shared-prompt layout
is exact, every loss variant runs, resume equals an uninterrupted run, the command works."""

import json
import shutil
from contextlib import nullcontext

import pytest
import torch

from rlhfkit.data.io import write_jsonl
from rlhfkit.data.pairs import Group, collate_groups, last_layer_only_at, pack_groups, positions_to_keep
from rlhfkit.models.load import add_lora
from rlhfkit.models.tiny import build_tiny
from rlhfkit.runs import read_metrics
from rlhfkit.toy.data import rule_comparisons
from rlhfkit.train.dpo import CompletionLogProbs, DPOConfig, dpo_step, make_loss_fn, reference_logps, run

FAST = dict(progress=False, report_to=["jsonl"], log_every=1, batch_size=8, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def rule_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rule")
    write_jsonl(folder / "train.jsonl", rule_comparisons(240, seed=0))
    write_jsonl(folder / "eval.jsonl", rule_comparisons(100, seed=1))
    return folder


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """For tests of the mechanics (references, caching, resume, command), not of learning."""
    folder = tmp_path_factory.mktemp("small")
    write_jsonl(folder / "train.jsonl", rule_comparisons(64, seed=0))
    write_jsonl(folder / "eval.jsonl", rule_comparisons(16, seed=1))
    return folder


def _cfg(folder, out, **kw):
    return DPOConfig(
        **{
            "data": str(folder / "train.jsonl"),
            "eval_data": str(folder / "eval.jsonl"),
            "output_dir": str(out),
            **FAST,
            **kw,
        }
    )


def test_dpo_learns_the_rule_held_out(rule_data, tmp_path):
    """Held-out chosen-minus-rejected log-prob margin rises and implicit-reward accuracy exceeds 80%."""
    out = tmp_path / "dpo"
    run(_cfg(rule_data, out, max_steps=30, lr=3e-3, beta=0.1, log_every=10))  # margin rises by ~24 here
    evals = [m for m in read_metrics(out) if "eval/loss" in m]
    before, after = evals[0], evals[-1]
    margin = lambda m: m["eval/logps/chosen"] - m["eval/logps/rejected"]  # noqa: E731
    print("dpo held-out margin", margin(before), "->", margin(after), "accuracy", after["eval/rewards/accuracies"])
    assert margin(after) > margin(before) + 1.0
    assert after["eval/rewards/accuracies"] > 0.8
    assert after["eval/loss"] < before["eval/loss"]
    assert (out / "final" / "model.safetensors").exists()
    card = json.loads((out / "card.json").read_text())
    assert [p["role"] for p in card["parents"]] == ["model", "reference"] and card["data"]["train"]["sha256_16"]
    assert card["finished"] and card["figures"]["eval_accuracy"] is not None


def _first_step(metrics):
    return next(m for m in metrics if m["step"] == 1 and "train/loss" in m)


def test_references_agree_on_the_first_step(small_data, tmp_path):
    """copy, precomputed and (with LoRA) lora-off give the same first-step loss; at step 1 the policy equals
    the reference, so the loss is log 2 and the implicit rewards are 0."""
    first = {}
    for ref, lora in [("copy", False), ("precomputed", False), ("copy", True), ("lora-off", True)]:
        out = tmp_path / f"{ref}-{lora}"
        run(_cfg(small_data, out, max_steps=2, reference=ref, lora=lora, lora_r=4, eval_data=None, eval_fraction=0.0))
        first[(ref, lora)] = _first_step(read_metrics(out))
    for m in first.values():
        assert m["train/loss"] == pytest.approx(0.6931471805599453, abs=1e-5)
    assert first[("copy", True)]["train/loss"] == pytest.approx(first[("lora-off", True)]["train/loss"], abs=1e-6)
    assert first[("copy", False)]["train/loss"] == pytest.approx(first[("precomputed", False)]["train/loss"], abs=1e-6)
    # and the second step (after one update) agrees too, so the reference stayed fixed
    for a, b in [(("copy", False), ("precomputed", False)), (("copy", True), ("lora-off", True))]:
        sa = next(m for m in read_metrics(tmp_path / f"{a[0]}-{a[1]}") if m["step"] == 2 and "train/loss" in m)
        sb = next(m for m in read_metrics(tmp_path / f"{b[0]}-{b[1]}") if m["step"] == 2 and "train/loss" in m)
        assert sa["train/loss"] == pytest.approx(sb["train/loss"], abs=1e-5)


def test_a_separate_reference_model(small_data, tmp_path):
    """With ref_model the reference is that model, not the starting one: the first step's mean margin is
    beta * ((log pi_start - log pi_ref)(chosen) - (...)(rejected)) over the pairs, for a precomputed reference
    and for a copy alike, and the card names it as the reference parent. (Iterative DPO starts from the last
    round's policy and keeps the SFT model as pi_ref.)"""
    from transformers import AutoModelForCausalLM

    from rlhfkit.data.io import read_records
    from rlhfkit.train.dpo import tokenize_all

    moved = run(_cfg(small_data, tmp_path / "moved", max_steps=3, lr=3e-3))
    tiny_model, tok = build_tiny("tiny", seed=0)
    groups = tokenize_all(tok, read_records(small_data / "train.jsonl", "comparison")[0], 512)
    start_model = AutoModelForCausalLM.from_pretrained(moved / "final")
    diff = reference_logps(CompletionLogProbs(start_model), groups, tok.pad_token_id, True, 8, "cpu")
    diff = (diff - reference_logps(CompletionLogProbs(tiny_model), groups, tok.pad_token_id, True, 8, "cpu")).view(
        -1, 2
    )
    expected = 0.1 * (diff[:, 0] - diff[:, 1]).mean().item()
    assert abs(expected) > 1e-3  # the two models differ on these pairs, so the check below can fail
    for kind in ("precomputed", "copy"):
        out = tmp_path / kind
        run(_cfg(small_data, out, model=str(moved), ref_model="tiny", reference=kind, max_steps=1, batch_size=64,
                 eval_data=None, eval_fraction=0.0))  # fmt: skip
        assert _first_step(read_metrics(out))["rewards/margins"] == pytest.approx(expected, abs=1e-4), kind
        card = json.loads((out / "card.json").read_text())
        assert [(p["role"], p["path"]) for p in card["parents"]] == [("model", str(moved)), ("reference", "tiny")]
    with pytest.raises(ValueError, match="lora-off"):
        DPOConfig(data="d.jsonl", lora=True, reference="lora-off", ref_model="tiny")


def test_lora_off_reference_equals_the_base_model():
    model, _ = build_tiny("tiny", seed=0)
    base = CompletionLogProbs(model)
    groups = [Group([5, 6, 7], [[8, 9], [10]]), Group([11], [[12, 13, 14], [15, 16]])]
    expected = reference_logps(base, groups, 0, True, 8, "cpu")
    cfg = DPOConfig(data="pairs.jsonl", lora=True, lora_r=4)
    peft_policy = CompletionLogProbs(add_lora(model, cfg))
    for p in peft_policy.parameters():  # move the adapters away from zero so they change the output
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.5)
    with peft_policy.model.disable_adapter():
        off = reference_logps(peft_policy, groups, 0, True, 8, "cpu")
    assert torch.allclose(off, expected, atol=1e-6)
    assert not torch.allclose(reference_logps(peft_policy, groups, 0, True, 8, "cpu"), expected, atol=1e-3)


def test_precomputed_equal_on_the_fly(small_data, tmp_path):
    out = tmp_path / "pre"
    run(_cfg(small_data, out, max_steps=1, reference="precomputed"))
    from safetensors.torch import load_file

    from rlhfkit.data.io import read_records
    from rlhfkit.train.dpo import tokenize_all

    cached = load_file(str(out / "ref_logps.safetensors"))
    model, tok = build_tiny("tiny", seed=0)
    records = read_records(small_data / "eval.jsonl", "comparison")[0]
    fly = reference_logps(CompletionLogProbs(model), tokenize_all(tok, records, 512), tok.pad_token_id, False, 4, "cpu")
    assert torch.allclose(cached["eval"], fly, atol=1e-4, rtol=1e-6)


def test_a_reference_cache_cut_short_is_computed_again(small_data, tmp_path):
    import json

    from safetensors.torch import load_file

    out = tmp_path / "pre"
    cfg = _cfg(small_data, out, max_steps=1, reference="precomputed")
    run(cfg)
    cache = out / "ref_logps.safetensors"
    first = {name: t.clone() for name, t in load_file(str(cache)).items()}  # not the file's memory map
    card = json.loads((out / "card.json").read_text())
    (out / "card.json").write_text(json.dumps({**card, "finished": False}))  # as if interrupted before the end
    cache.write_bytes(cache.read_bytes()[:40])
    run(cfg)
    again = load_file(str(cache))
    assert torch.equal(again["train"], first["train"]) and torch.equal(again["eval"], first["eval"])


def test_a_reference_cache_of_other_held_out_pairs_is_computed_again(small_data, tmp_path):
    """The held-out file edited between an interruption and the resume (as many pairs, chosen and rejected swapped):
    the cache of its reference log-probs is keyed by its content, not its path, so it is computed again."""
    from safetensors.torch import load_file

    folder, out = tmp_path / "data", tmp_path / "pre"
    shutil.copytree(small_data, folder)
    cfg = _cfg(folder, out, max_steps=1, reference="precomputed")
    run(cfg)
    first = load_file(str(out / "ref_logps.safetensors"))["eval"].clone()
    card = json.loads((out / "card.json").read_text())
    (out / "card.json").write_text(json.dumps({**card, "finished": False}))  # as if interrupted before the end
    rows = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    write_jsonl(folder / "eval.jsonl", [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows])
    run(cfg)
    again = load_file(str(out / "ref_logps.safetensors"))["eval"]
    assert torch.allclose(again.view(-1, 2).flip(1).reshape(-1), first, atol=1e-3)  # the pairs, swapped back


def test_shared_prompt_is_exact_in_value_and_gradient():
    model, _ = build_tiny("tiny", seed=0)
    policy = CompletionLogProbs(model)
    groups = [Group([5, 6, 7, 8], [[9, 10, 11], [12, 13]]), Group([5, 6], [[14, 15, 16, 17], [18]])]
    ref = torch.tensor([-20.0, -13.0, -25.0, -7.0])
    grads = []
    for shared in (True, False):
        model.zero_grad()
        loss, _ = dpo_step(
            policy,
            groups,
            ref,
            make_loss_fn(DPOConfig(data="pairs.jsonl")),
            DPOConfig(data="pairs.jsonl", shared_prompt=shared),
            0,
            "cpu",
        )
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        if shared:
            shared_loss = loss.item()
    assert loss.item() == pytest.approx(shared_loss, abs=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_packed_mask_is_the_diagram():
    """The layout of rlhfkit.data.pairs' docstring, plus a shorter second group to show padding:

        row 0:     p0 p1 p2 | c0 c1 | r0 r1 r2        positions 0 1 2 | 3 4 | 3 4 5
        row 1:     q0 | d0 | e0 | pad pad pad pad pad  positions 0 | 1 | 1 | 0 0 0 0 0
    Each completion token sees the prompt and the earlier tokens of its own completion; padding sees itself."""
    packed = pack_groups([Group([1, 2, 3], [[4, 5], [6, 7, 8]]), Group([9], [[10], [11]])], pad_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 0, 0, 0, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5], [0, 1, 1, 0, 0, 0, 0, 0]]
    row0 = [
        "10000000",
        "11000000",
        "11100000",  # prompt: causal
        "11110000",
        "11111000",  # c0, c1: prompt + itself
        "11100100",
        "11100110",
        "11100111",
    ]  # r0..r2: prompt + itself, never c
    row1 = ["10000000", "11000000", "10100000"] + [
        "".join("1" if j == i else "0" for j in range(8)) for i in range(3, 8)
    ]
    as_text = lambda m: ["".join(str(int(v)) for v in r) for r in m.tolist()]  # noqa: E731
    assert as_text(packed.attention_mask[0, 0]) == row0
    assert as_text(packed.attention_mask[1, 0]) == row1
    assert packed.token_pred.tolist() == [2, 3, 2, 5, 6, 0, 0]  # p2 predicts both c0 and r0
    assert (packed.last_row.tolist(), packed.last_pos.tolist()) == ([0, 0, 1, 1], [4, 7, 1, 2])


def test_last_layer_only_at_the_read_positions_is_exact():
    """Running the last layer's o_proj and MLP only where the head reads leaves the read hidden states and every
    gradient unchanged, actually skips the other positions, and removes its hooks afterwards."""
    model, _ = build_tiny("tiny", seed=0)
    body = model.model
    packed = pack_groups([Group([5, 6, 7, 8], [[9, 10, 11], [12, 13]]), Group([5, 6], [[14, 15, 16, 17], [18]])], 0)
    rows, cols = positions_to_keep(packed.token_row, packed.token_pred, packed.input_ids.shape)
    assert len(rows) == 8 < packed.token_row.numel() == 10  # each prompt's last token predicts two first tokens
    seen = []
    model.model.layers[-1].mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1]))
    results = []
    for prune in (False, True):
        model.zero_grad()
        with last_layer_only_at(body, rows, cols) if prune else nullcontext():
            hidden = body(
                input_ids=packed.input_ids,
                attention_mask=packed.attention_mask,
                position_ids=packed.position_ids,
                use_cache=False,
            ).last_hidden_state
        read = hidden[packed.token_row, packed.token_pred]
        (read * torch.linspace(-1, 1, read.numel()).view_as(read)).sum().backward()
        results.append((read.detach(), [p.grad.clone() for p in model.parameters()]))
    assert seen == [packed.input_ids.shape, (8,)]
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):  # equal up to float32 rounding (GEMMs of other shapes)
        assert (a - b).abs().max() <= 1e-5 * b.abs().max().clamp(min=1)
    layer = model.model.layers[-1]
    assert not layer.self_attn.o_proj._forward_hooks and not layer.self_attn.o_proj._forward_pre_hooks
    assert not layer.mlp._forward_pre_hooks and len(layer.mlp._forward_hooks) == 1  # only the test's own


@pytest.mark.parametrize(
    "variant",
    [
        dict(loss="sigmoid"),
        dict(loss="sigmoid", label_smoothing=0.1),
        dict(loss="ipo"),
        dict(loss="hinge"),
        dict(loss="robust", label_smoothing=0.1),
    ],
)
def test_every_loss_gives_a_gradient(variant):
    model, _ = build_tiny("tiny", seed=0)
    policy = CompletionLogProbs(model)
    groups = [Group([5, 6, 7, 8], [[9, 10, 11], [12, 13]]), Group([5, 6], [[14, 15, 16, 17], [18]])]
    cfg = DPOConfig(data="pairs.jsonl", **variant)
    ref = reference_logps(policy, groups, 0, True, 8, "cpu") + torch.tensor([0.5, -0.5, 0.2, 0.1])
    loss, stats = dpo_step(policy, groups, ref, make_loss_fn(cfg), cfg, 0, "cpu")
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad.abs().sum() > 0
    assert set(stats) >= {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    }


def test_rpo_adds_the_chosen_mean_token_nll_by_hand():
    model, _ = build_tiny("tiny", seed=0)
    policy = CompletionLogProbs(model)
    groups = [Group([5, 6, 7, 8], [[9, 10, 11], [12, 13]]), Group([5, 6], [[14, 15, 16, 17], [18]])]
    ref = torch.tensor([-20.0, -13.0, -25.0, -7.0])
    with torch.no_grad():
        logps = policy(collate_groups(groups, 0, True))  # chosen, rejected, chosen, rejected
        plain, _ = dpo_step(
            policy, groups, ref, make_loss_fn(DPOConfig(data="pairs.jsonl")), DPOConfig(data="pairs.jsonl"), 0, "cpu"
        )
        cfg = DPOConfig(data="pairs.jsonl", rpo_alpha=0.5)
        rpo, stats = dpo_step(policy, groups, ref, make_loss_fn(cfg), cfg, 0, "cpu")
    nll = -logps[0] / 3 - logps[2] / 4  # chosen completions of 3 and 4 tokens
    assert rpo.item() == pytest.approx(plain.item() + 0.5 * nll.item(), abs=1e-5)
    assert stats["nll_loss"] == pytest.approx(nll.item(), abs=1e-5)


def test_bf16_mixed_precision_then_float32_in_one_process(small_data, tmp_path):
    """bf16 autocast with float32 weights: the precomputed reference runs in the same precision (the
    first margins are exactly 0) and a float32 stage can follow in the same process (as in the demo)."""
    runs = {}
    for dtype in ("bf16-mixed", "float32"):
        path = run(_cfg(small_data, tmp_path / dtype, dtype=dtype, max_steps=2))
        runs[dtype] = [r for r in read_metrics(path) if "eval/rewards/margins" in r]
        assert runs[dtype][0]["eval/rewards/margins"] == 0.0
        assert next(iter(run_weights(path))).dtype == torch.float32
    # autocast really ran: the figures differ from float32's in the low digits, not more
    a, b = runs["bf16-mixed"][-1]["eval/loss"], runs["float32"][-1]["eval/loss"]
    assert a != b and a == pytest.approx(b, abs=1e-2)


def run_weights(path):
    from safetensors.torch import load_file

    return load_file(str(next((path / "final").glob("*.safetensors")))).values()


def test_label_smoothing_refused_where_unused():
    with pytest.raises(ValueError, match="label_smoothing"):
        make_loss_fn(DPOConfig(data="pairs.jsonl", loss="hinge", label_smoothing=0.1))


def test_lora_off_needs_lora(small_data, tmp_path):
    with pytest.raises(ValueError, match="needs --lora"):
        run(_cfg(small_data, tmp_path / "x", max_steps=1, reference="lora-off"))


def test_resume_equals_uninterrupted(small_data, tmp_path):
    import shutil

    from safetensors.torch import load_file

    full = tmp_path / "full"
    run(_cfg(small_data, full, max_steps=4, lr=1e-3))
    part = tmp_path / "part"
    run(_cfg(small_data, part, max_steps=4, lr=1e-3, save_every=2, keep_checkpoints=5))
    # Pretend it was interrupted after step 2: drop what came later, then run the same command again.
    shutil.rmtree(part / "final")
    shutil.rmtree(part / "checkpoints" / "step-4")
    (part / "card.json").unlink()
    run(_cfg(small_data, part, max_steps=4, lr=1e-3, save_every=2, keep_checkpoints=5))
    a, b = load_file(str(full / "final" / "model.safetensors")), load_file(str(part / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_the_cpu_piece_shrinks_with_the_activations_a_model_keeps():
    """Pieces of 8 examples while their activations (ACTIVATION_BYTES per token per unit of hidden size x layers,
    at the 90th-percentile length) fit the budget; halved until they do; never below one example. A model
    without hidden_size / num_hidden_layers keeps 8."""
    from types import SimpleNamespace

    from rlhfkit.train.batching import ACTIVATION_BUDGET, ACTIVATION_BYTES, cpu_micro_batch

    def model(hidden, layers):
        return SimpleNamespace(config=SimpleNamespace(hidden_size=hidden, num_hidden_layers=layers))

    smollm2, tiny_4m = model(576, 30), model(256, 4)
    assert cpu_micro_batch(tiny_4m, [149] * 16) == 8
    assert cpu_micro_batch(smollm2, [243] * 16) == 4  # 8 x 243 tokens x 17280 x 110 B = 3.7 GB > 2 GiB
    assert cpu_micro_batch(smollm2, [60] * 16) == 8
    assert cpu_micro_batch(smollm2, [1024] * 16) == 1
    assert cpu_micro_batch(smollm2, [4096] * 16) == 1  # over budget even alone: one example per piece
    # the 90th-percentile length decides, not the longest outlier
    assert cpu_micro_batch(smollm2, [60] * 95 + [4096] * 5) == 8
    # the boundary: exactly at the budget fits
    per_example = ACTIVATION_BUDGET // (8 * 576 * 30 * ACTIVATION_BYTES)
    assert cpu_micro_batch(smollm2, [per_example]) == 8 and cpu_micro_batch(smollm2, [per_example + 1]) == 4
    assert cpu_micro_batch(SimpleNamespace(), [243]) == 8 and cpu_micro_batch(smollm2, []) == 8


def test_micro_batches_by_default_on_the_cpu_equal_one_batch(small_data, tmp_path):
    """grad_accum unset cuts a batch of 16 into micro-batches of 8 on the CPU; each micro-batch's summed loss is
    divided by the whole batch's 16 pairs, so the gradient (its norm is logged before clipping), the logged
    loss and the weights equal those of one forward over the 16 pairs, to float rounding."""
    from accelerate import Accelerator

    from rlhfkit.train.batching import split_micro

    assert split_micro(list(range(16)), Accelerator(cpu=True), None) == [list(range(0, 16, 2)), list(range(1, 16, 2))]
    settings = dict(max_steps=2, lr=1e-3, batch_size=16)
    paths = {g: run(_cfg(small_data, tmp_path / str(g), grad_accum=g, **settings)) for g in (None, 1)}
    logged = {g: [r for r in read_metrics(p) if "train/loss" in r] for g, p in paths.items()}
    for key in ("train/loss", "train/grad_norm", "rewards/margins"):
        for a, b in zip(logged[None], logged[1], strict=True):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(run_weights(paths[None]), run_weights(paths[1]), strict=True):
        # Adam turns rounding in near-zero gradients into steps of up to ~1e-5 on a few weights (2e-5 seen, on
        # 0.02% of them); a wrong scale or a lost micro-batch would move nearly all of them (the multi-process
        # tests' rule, tests/test_multiprocess.py)
        gap = (a - b).abs()
        assert gap.max() < 1e-4 and (gap > 1e-6).float().mean() <= 1e-3


def test_dpo_command(small_data, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "dpo",
            "--data",
            str(small_data / "train.jsonl"),
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--output-dir",
            str(out),
            "--no-progress",
            "--report-to",
            "[jsonl]",
            "--loss",
            "ipo",
            "--beta",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "final" / "config.json").exists()
    bad = CliRunner().invoke(app, ["dpo", "--los", "ipo"])
    assert bad.exit_code == 2 and "did you mean 'loss'" in bad.output
