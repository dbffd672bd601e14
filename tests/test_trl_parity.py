"""Parity with TRL (a test-only dependency): DPO sigmoid loss and gradients vs DPOTrainer, reward-model loss
and gradients vs RewardTrainer, KTO loss and gradients vs KTOTrainer, to 1e-5, on the same tiny Llama, examples
and seed.

Tokenisation, and how it is aligned:
- rlhfkit (``rlhfkit.data.chat.tokenize_prompt_completion``): prompt and completion tokenised apart
  (``add_special_tokens=False``); for plain-text pairs the completion is ``chosen + EOS`` (EOS = the
  tokenizer's eos_token, ``<|im_end|>`` for the tiny model); a BOS is put before the prompt only if the
  tokenizer adds one (the tiny tokenizer does not, so no BOS).
- TRL DPOTrainer 1.16: appends EOS to chosen/rejected, tokenises ``prompt`` and ``prompt + chosen`` and
  splits where they diverge; no BOS for this tokenizer either. The test checks that TRL's own tokenisation
  of the texts gives exactly rlhfkit's ids, then feeds TRL's collator those ids.
- TRL RewardTrainer 1.16: tokenises ``prompt + chosen + EOS`` as one string; rlhfkit reads the same
  sequence as prompt ids + completion ids (checked equal here) and scores it at its last token, as
  LlamaForSequenceClassification does (last non-pad token).
rlhfkit runs its default fast path here (chosen and rejected packed in one row per pair with the prompt
computed once, log-probs only at completion tokens); TRL runs its padded two-rows-per-pair batch with
its fused LM head. Both in float32.
"""

import copy

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from rlhfkit import losses as L  # noqa: E402
from rlhfkit.data.pairs import tokenize_comparison  # noqa: E402
from rlhfkit.data.records import Comparison  # noqa: E402
from rlhfkit.losses import masked_sum, selective_log_softmax  # noqa: E402
from rlhfkit.models.reward import RewardModel  # noqa: E402
from rlhfkit.models.tiny import build_tiny  # noqa: E402
from rlhfkit.toy.data import rule_comparisons  # noqa: E402
from rlhfkit.train.dpo import CompletionLogProbs, DPOConfig, dpo_step, make_loss_fn, reference_logps  # noqa: E402
from rlhfkit.train.reward import RewardConfig, group_loss, score_groups  # noqa: E402

TOL = 1e-5


def _rows(n=6):
    rows = rule_comparisons(n, seed=3)
    rows[1]["rejected"] = rows[1]["rejected"] + " two three"  # uneven lengths, so padding is exercised
    return rows


def _trl_args(cls, tmp_path, **kw):
    return cls(
        output_dir=str(tmp_path),
        per_device_train_batch_size=len(_rows()),
        bf16=False,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        use_cpu=True,
        **kw,
    )


def _max_grad_diff(a_params, b_params):
    worst = 0.0
    for (name, a), b in zip(a_params, b_params):
        assert a.grad is not None and b.grad is not None, name
        worst = max(worst, (a.grad - b.grad).abs().max().item())
    return worst


def test_dpo_sigmoid_loss_and_gradients_match_trl(tmp_path):
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    torch.manual_seed(0)
    base, tok = build_tiny("tiny", seed=0)
    ours = copy.deepcopy(base)
    rows = _rows()
    ds = datasets.Dataset.from_list(rows)
    trainer = DPOTrainer(
        model=copy.deepcopy(base),
        ref_model=copy.deepcopy(base),
        processing_class=tok,
        train_dataset=ds,
        args=_trl_args(TRLDPOConfig, tmp_path, beta=0.1),
    )
    # One step of training on the policy first, so policy != reference and the gradients are not trivial.
    with torch.no_grad():
        for p_trl, p_ours in zip(trainer.model.parameters(), ours.parameters()):
            noise = torch.randn_like(p_trl) * 0.02
            p_trl.add_(noise)
            p_ours.add_(noise)

    groups = [tokenize_comparison(tok, Comparison.model_validate(r), 10_000) for r in rows]
    for g, ex in zip(groups, trainer.train_dataset):  # TRL's tokenisation == ours
        assert ex["prompt_ids"] == g.prompt_ids
        assert ex["chosen_ids"] == g.completion_ids[0] and ex["rejected_ids"] == g.completion_ids[1]

    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(
        [
            {"prompt_ids": g.prompt_ids, "chosen_ids": g.completion_ids[0], "rejected_ids": g.completion_ids[1]}
            for g in groups
        ]
    )
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()

    cfg = DPOConfig(data="pairs.jsonl", beta=0.1, loss="sigmoid")
    ref = reference_logps(CompletionLogProbs(base), groups, tok.pad_token_id, True, 8, "cpu")
    loss_sum, _ = dpo_step(CompletionLogProbs(ours), groups, ref, make_loss_fn(cfg), cfg, tok.pad_token_id, "cpu")
    our_loss = loss_sum / len(groups)
    our_loss.backward()

    loss_diff = abs(our_loss.item() - trl_loss.item())
    grad_diff = _max_grad_diff(list(trainer.model.named_parameters()), list(ours.parameters()))
    print(
        f"DPO parity: loss {our_loss.item():.8f} vs TRL {trl_loss.item():.8f} (diff {loss_diff:.2e}); "
        f"largest gradient difference {grad_diff:.2e}"
    )
    assert loss_diff < TOL
    assert grad_diff < TOL


def test_reward_loss_and_gradients_match_trl(tmp_path):
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    lm, tok = build_tiny("tiny", seed=0)
    config = copy.deepcopy(lm.config)
    config.num_labels = 1
    torch.manual_seed(0)
    seqcls = LlamaForSequenceClassification(config)
    seqcls.model.load_state_dict(lm.model.state_dict())
    torch.nn.init.normal_(seqcls.score.weight, std=0.1)
    ours = RewardModel(copy.deepcopy(seqcls.model), tok, "causal", head=copy.deepcopy(seqcls.score))

    rows = _rows()
    rows[2]["margin"] = 0.0
    for r in rows:
        r["margin"] = float(len(r["chosen"]) % 3) * 0.5  # TRL's margin column, and ours
    ds = datasets.Dataset.from_list(rows)
    trainer = RewardTrainer(
        model=seqcls, processing_class=tok, train_dataset=ds, args=_trl_args(TRLRewardConfig, tmp_path)
    )
    groups = [tokenize_comparison(tok, Comparison.model_validate(r), 10_000) for r in rows]
    for g, ex in zip(groups, trainer.train_dataset):  # TRL's full sequences == our prompt + completion ids
        assert ex["chosen_ids"] == g.prompt_ids + g.completion_ids[0]
        assert ex["rejected_ids"] == g.prompt_ids + g.completion_ids[1]
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(
        [
            {"chosen_ids": ex["chosen_ids"], "rejected_ids": ex["rejected_ids"], "margin": ex["margin"]}
            for ex in trainer.train_dataset
        ]
    )
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()

    scores = score_groups(ours, groups, tok.pad_token_id, True, "cpu")
    our_loss = group_loss(scores, groups, RewardConfig(data="pairs.jsonl"), with_ties=False).mean()
    our_loss.backward()

    loss_diff = abs(our_loss.item() - trl_loss.item())
    trl_params = [(n, p) for n, p in trainer.model.named_parameters()]
    our_params = list(ours.trunk.parameters()) + list(ours.head.parameters())
    grad_diff = _max_grad_diff(trl_params, our_params)
    print(
        f"RM parity: loss {our_loss.item():.8f} vs TRL {trl_loss.item():.8f} (diff {loss_diff:.2e}); "
        f"largest gradient difference {grad_diff:.2e}"
    )
    assert loss_diff < TOL
    assert grad_diff < TOL


def _completion_logps(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int):
    """Sum of log p(completion token | prefix) per row, from one padded forward pass: (B,)."""
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])  # (B, T), right-padded
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    completion_mask = torch.tensor(
        [[0] * len(p) + [1] * len(c) + [0] * (width - len(p) - len(c)) for p, c in zip(prompt_ids, completion_ids)]
    )
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]  # (B, T-1, V) predicts 1..T-1
    token_logps = selective_log_softmax(logits, input_ids[:, 1:])  # (B, T-1)
    return masked_sum(token_logps, completion_mask[:, 1:], dim=-1)


def test_kto_loss_and_gradients_match_trl(tmp_path):
    """KTO on unpaired thumbs (prompt, completion, label): TRL's KTOTrainer.compute_loss vs rlhfkit's
    kto_batch_kl + kto_loss on log-probs from plain forward passes over TRL's own token ids, so this compares
    the losses (and the mismatched-pair KL estimate), not tokenisation. Weights 1.0 / 1.5 so they matter."""
    from trl import KTOConfig, KTOTrainer
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    torch.manual_seed(0)
    base, tok = build_tiny("tiny", seed=0)
    ours = copy.deepcopy(base)
    rows = []
    for i, r in enumerate(_rows()):
        good = i % 3 != 1  # 4 thumbs up, 2 thumbs down, each prompt once
        rows.append({"prompt": r["prompt"], "completion": r["chosen"] if good else r["rejected"], "label": good})
    trainer = KTOTrainer(
        model=copy.deepcopy(base),
        ref_model=copy.deepcopy(base),
        processing_class=tok,
        train_dataset=datasets.Dataset.from_list(rows),
        args=_trl_args(KTOConfig, tmp_path, beta=0.1, desirable_weight=1.0, undesirable_weight=1.5),
    )
    with torch.no_grad():  # policy != reference, so the log-ratios and the KL estimate are not zero
        for p_trl, p_ours in zip(trainer.model.parameters(), ours.parameters()):
            noise = torch.randn_like(p_trl) * 0.02
            p_trl.add_(noise)
            p_ours.add_(noise)

    examples = list(trainer.train_dataset)
    prompts = [ex["prompt_ids"] for ex in examples]
    completions = [ex["completion_ids"] for ex in examples]
    mismatched = [completions[j] for j in L.kto_mismatched_indices(len(examples)).tolist()]
    assert [ex["KL_completion_ids"] for ex in examples] == mismatched  # TRL pairs prompts as we do
    desirable = torch.tensor([ex["label"] for ex in examples])

    batch = DataCollatorForUnpairedPreference(pad_token_id=tok.pad_token_id)(
        [{k: ex[k] for k in ("prompt_ids", "completion_ids", "KL_completion_ids", "label")} for ex in examples]
    )
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()

    pad = tok.pad_token_id
    policy_logps = _completion_logps(ours, prompts, completions, pad)
    policy_kl_logps = _completion_logps(ours, prompts, mismatched, pad)
    with torch.no_grad():
        ref_logps = _completion_logps(base, prompts, completions, pad)
        ref_kl_logps = _completion_logps(base, prompts, mismatched, pad)
    kl = L.kto_batch_kl(policy_kl_logps, ref_kl_logps)
    losses, _ = L.kto_loss(policy_logps, ref_logps, desirable, kl, 0.1, desirable_weight=1.0, undesirable_weight=1.5)
    our_loss = losses.mean()
    our_loss.backward()

    loss_diff = abs(our_loss.item() - trl_loss.item())
    grad_diff = _max_grad_diff(list(trainer.model.named_parameters()), list(ours.parameters()))
    print(
        f"KTO parity: loss {our_loss.item():.8f} vs TRL {trl_loss.item():.8f} (diff {loss_diff:.2e}); "
        f"KL estimate z0 {kl.item():.6f}; largest gradient difference {grad_diff:.2e}"
    )
    assert kl.item() > 0  # the reference point is in play, not clamped away
    assert loss_diff < TOL
    assert grad_diff < TOL
