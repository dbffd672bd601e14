"""Reward-model training on comparisons (with ties) or rankings; ensembles; normalisation; scoring.

    rlhfkit rm train --model tiny --data toy --max-steps 200            # causal trunk, CPU, seconds
    rlhfkit rm train --model minilm --data pairs.jsonl --lr 3e-5         # the MiniLM encoder trunk
    rlhfkit rm train --data rankings.jsonl --data-kind ranking --ensemble 4 --bootstrap
    rlhfkit rm score --reward runs/rm-... --data rows.jsonl --output scores.jsonl

Python: ``rlhfkit.train.reward.run(RewardConfig(...))`` returns the run folder.

Models of preference (``rlhfkit.losses``): Bradley-Terry (optionally with a per-pair margin) when the data
has no ties; Davidson's model of ties (1970) for every pair when it does (``tie_nu`` its nu);
Plackett-Luce for rankings. Each member of an ensemble is a full model trained from its own seed
(and, with ``bootstrap``, its own resample of the data); the ensemble scores by the mean of its members
and gives their std as disagreement.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from rlhfkit import losses
from rlhfkit.config.stages import RewardConfig, ScoreConfig
from rlhfkit.data.io import DataError, load_train_eval, read_jsonl, read_records, write_jsonl
from rlhfkit.data.pairs import Group, model_mask, pack_groups, pad_right, tokenize_comparison, tokenize_ranking
from rlhfkit.data.records import from_json
from rlhfkit.models.catalog import ENCODER_MODELS
from rlhfkit.models.reward import (
    RewardEnsemble,
    RewardModel,
    build_reward_model,
    encode,
    load_reward_model,
    save_reward_model,
    score_ensemble,
    score_raw,
)
from rlhfkit.runs import RunFolder, parent_of
from rlhfkit.specs import parse_model_spec
from rlhfkit.train import common

# --------------------------------------------------------------------------------------------------
# Tokenisation and scoring of groups
# --------------------------------------------------------------------------------------------------


def tokenize_all(rm: RewardModel, records, kind: str, max_length: int) -> list[Group]:
    """Groups of token ids. Causal trunks: prompt and completions apart (the prompt can be shared);
    encoders: one [CLS] prompt [SEP] completion [SEP] sequence per completion, prompt_ids empty."""
    out = []
    for r in records:
        if rm.kind == "encoder":
            comps = [r.chosen, r.rejected] if kind == "comparison" else list(r.completions)
            extra = dict(tie=r.tie, margin=r.margin) if kind == "comparison" else dict(ranking=list(r.ranking))
            out.append(Group([], [encode(rm, r.prompt, c, max_length) for c in comps], **extra))
        else:
            tok = tokenize_comparison if kind == "comparison" else tokenize_ranking
            out.append(tok(rm.tokenizer, r, max_length))
    return out


def score_groups(model, groups: list[Group], pad_id: int, shared_prompt: bool, device) -> torch.Tensor:
    """(N,) raw scores of every completion of ``groups``, group by group."""
    if shared_prompt:
        packed = pack_groups(groups, pad_id).to(device)
        packed.attention_mask = model_mask(common_unwrap(model).trunk, packed.attention_mask, torch.float32)
        return model(packed=packed)
    rows = [g.prompt_ids + c for g in groups for c in g.completion_ids]
    input_ids = pad_right(rows, pad_id).to(device)
    mask = pad_right([[1] * len(r) for r in rows], 0).to(device)
    return model(input_ids, mask)


def common_unwrap(model):
    return getattr(model, "module", model)


def group_loss(scores: torch.Tensor, groups: list[Group], cfg: RewardConfig, with_ties: bool) -> torch.Tensor:
    """(B,) per-group losses from the (N,) completion scores."""
    if cfg.data_kind == "comparison":
        pairs = scores.view(-1, 2)  # (N,) -> (B, 2): chosen, rejected
        chosen, rejected = pairs[:, 0], pairs[:, 1]
        if with_ties:
            tie = torch.tensor([g.tie for g in groups], device=scores.device)
            loss = losses.preference_loss_with_ties(chosen, rejected, tie, cfg.tie_nu)
        else:
            margin = None
            if cfg.use_margin and any(g.margin is not None for g in groups):
                margin = torch.tensor([g.margin or 0.0 for g in groups], device=scores.device, dtype=scores.dtype)
            loss = losses.bradley_terry_loss(chosen, rejected, margin)
        if cfg.center_rewards_coefficient:
            loss = loss + cfg.center_rewards_coefficient * (chosen + rejected) ** 2
        return loss
    K = max(len(g.completion_ids) for g in groups)
    rewards = torch.zeros(len(groups), K, device=scores.device, dtype=scores.dtype)
    ranking = torch.full((len(groups), K), -1, device=scores.device, dtype=torch.long)
    offset = 0
    for b, g in enumerate(groups):
        k = len(g.completion_ids)
        rewards[b, :k] = scores[offset : offset + k]
        ranking[b, :k] = torch.tensor(g.ranking, device=scores.device)
        offset += k
    return losses.plackett_luce_loss(rewards, ranking)


def ordered_pairs(scores: torch.Tensor, groups: list[Group]) -> tuple[torch.Tensor, torch.Tensor]:
    """(better, worse) scores of every pair a group orders: chosen/rejected of non-tie comparisons, all
    K(K-1)/2 pairs of a ranking."""
    better, worse, offset = [], [], 0
    for g in groups:
        k = len(g.completion_ids)
        s = scores[offset : offset + k]
        order = g.ranking if g.ranking is not None else ([] if g.tie else [0, 1])
        for i in range(len(order)):
            for j in range(i + 1, len(order)):
                better.append(s[order[i]])
                worse.append(s[order[j]])
        offset += k
    if not better:
        return torch.zeros(0), torch.zeros(0)
    return torch.stack(better), torch.stack(worse)


def preference_metrics(better: torch.Tensor, worse: torch.Tensor, prefix: str) -> dict[str, float]:
    """accuracy, mean margin and ECE of sigmoid(r_a - r_b); for ECE every other pair is presented swapped,
    so both labels occur."""
    if better.numel() == 0:
        return {}
    diff = (better - worse).float()
    flip = torch.arange(diff.numel(), device=diff.device) % 2 == 1
    probs = torch.sigmoid(torch.where(flip, -diff, diff))
    labels = (~flip).float()
    return {
        f"{prefix}/accuracy": (diff > 0).float().mean().item(),
        f"{prefix}/margin": diff.mean().item(),
        f"{prefix}/ece": losses.expected_calibration_error(probs, labels).item(),
    }


@torch.no_grad()
def evaluate(
    model,
    groups: list[Group],
    cfg: RewardConfig,
    pad_id: int,
    shared: bool,
    with_ties: bool,
    accelerator,
    prefix: str = "eval",
) -> tuple[dict[str, float], torch.Tensor]:
    """Held-out loss, accuracy, margin, ECE, and the raw scores of every completion, in the groups' order. Each
    process scores a strided share; the scores are gathered back into the groups' order, so that the figures
    (ECE presents every other pair swapped) are those of one process."""
    model.eval()
    mine = list(range(accelerator.process_index, len(groups), accelerator.num_processes))
    per_group, total = [], torch.zeros((), device=accelerator.device)
    for s in range(0, len(mine), cfg.batch_size):
        chunk = [groups[i] for i in mine[s : s + cfg.batch_size]]
        scores = score_groups(model, chunk, pad_id, shared, accelerator.device).float()
        total += group_loss(scores, chunk, cfg, with_ties).sum()
        per_group += [t.tolist() for t in scores.cpu().split([len(g.completion_ids) for g in chunk])]
    model.train()
    total = accelerator.reduce(total, "sum")
    ordered = sorted(common.gather_objects(accelerator, list(zip(mine, per_group))))  # [(group index, its scores)]
    flat = [x for _, group_scores in ordered for x in group_scores]
    scores = torch.tensor(flat, dtype=torch.float32, device=accelerator.device)
    metrics = {f"{prefix}/loss": total.item() / max(len(groups), 1)}
    better, worse = ordered_pairs(scores, groups)
    metrics.update(preference_metrics(better, worse, prefix))
    return metrics, scores


# --------------------------------------------------------------------------------------------------
# Normalisation reference set
# --------------------------------------------------------------------------------------------------


def reference_texts(cfg: RewardConfig, train_records) -> tuple[list, list]:
    """(prompts, responses) of the normalisation reference set: ``normalize_on``'s rows (a response each, or
    both sides of a comparison), else every response of the training data."""
    prompts, responses = [], []
    if cfg.normalize_on:
        for lineno, row in enumerate(read_jsonl(cfg.normalize_on), start=1):
            if "prompt" not in row:
                raise DataError(f"{cfg.normalize_on}:{lineno}: field 'prompt': missing (normalize_on)")
            for key in ("response", "completion", "chosen", "rejected"):
                if key in row:
                    prompts.append(from_json(row["prompt"]))
                    responses.append(from_json(row[key]))
    else:
        for r in train_records:
            for c in [r.chosen, r.rejected] if hasattr(r, "chosen") else list(r.completions):
                prompts.append(r.prompt)
                responses.append(c)
    return prompts[: cfg.normalize_max], responses[: cfg.normalize_max]


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def train_member(
    cfg: RewardConfig,
    index: int,
    run_dir: RunFolder,
    member_dir: RunFolder,
    logger,
    accelerator,
    train_records,
    eval_records,
) -> tuple[RewardModel, dict]:
    """One reward model, from its seed (and bootstrap resample), with checkpoints in ``member_dir``."""
    seed = cfg.seed + index
    encoder = cfg.encoder or cfg.model in ENCODER_MODELS
    rm = build_reward_model(cfg.model, common.training_dtype(cfg), cfg.chat_template, seed=seed, encoder=encoder)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        rm.trunk = get_peft_model(
            rm.trunk,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=cfg.lora_target_modules,
            ),
        )
    shared = cfg.shared_prompt and rm.kind == "causal"
    pad_id = rm.tokenizer.pad_token_id if rm.tokenizer.pad_token_id is not None else 0
    train = tokenize_all(rm, train_records, cfg.data_kind, cfg.max_length)
    held_out = tokenize_all(rm, eval_records, cfg.data_kind, cfg.max_length)
    if cfg.bootstrap:
        rng = random.Random(seed)
        train = [train[rng.randrange(len(train))] for _ in range(len(train))]
    with_ties = cfg.data_kind == "comparison" and any(g.tie for g in train + held_out)
    tag = f"member{index}/" if cfg.ensemble > 1 else ""

    common.check_global_batch(accelerator, cfg.batch_size, cfg.grad_accum)
    n_steps = common.total_steps(cfg, len(train))
    optimizer = common.make_optimizer(rm, cfg)
    scheduler = common.make_scheduler(optimizer, cfg, n_steps)
    model, optimizer, scheduler = accelerator.prepare(rm, optimizer, scheduler)
    state = common.resume(member_dir, accelerator, cfg.resume, common.TrainerState())
    batches = common.global_batches([len(g) for g in train], cfg.batch_size, seed, start=state.step)
    name = "rm" if cfg.ensemble == 1 else f"rm member {index + 1}/{cfg.ensemble}"
    progress = common.Progress(n_steps, name, cfg.progress and accelerator.is_main_process, completed=state.step)
    model.train()
    window = {"loss": 0.0, "n": 0, "correct": 0.0, "pairs": 0, "margin": 0.0, "start": time.perf_counter()}
    with common.checkpoint_on_interrupt(member_dir, accelerator, state, cfg.keep_checkpoints, progress):
        while state.step < n_steps:
            global_batch = next(batches)
            micro = [[train[i] for i in m] for m in common.split_micro(global_batch, accelerator, cfg.grad_accum)]
            for i, groups in enumerate(micro):
                sync = i == len(micro) - 1
                with accelerator.no_sync(model) if not sync else nullcontext():
                    with accelerator.autocast():
                        scores = score_groups(model, groups, pad_id, shared, accelerator.device)
                        loss_sum = group_loss(scores.float(), groups, cfg, with_ties).sum()
                    # Mean over the global batch: equal for any split into micro-batches and processes.
                    accelerator.backward(loss_sum * accelerator.num_processes / len(global_batch))
                better, worse = ordered_pairs(scores.detach().float(), groups)
                window["loss"] += loss_sum.item()
                window["n"] += len(groups)
                window["correct"] += (better > worse).float().sum().item()
                window["margin"] += (better - worse).sum().item()
                window["pairs"] += better.numel()
            grad_norm = common.optimizer_step(accelerator, model, optimizer, scheduler, cfg.max_grad_norm)
            state.step += 1
            progress.update(info=f"loss {window['loss'] / max(window['n'], 1):.3f}")
            if state.step % cfg.log_every == 0 or state.step == n_steps:
                elapsed = time.perf_counter() - window["start"]
                totals = common.global_sums(accelerator, {k: v for k, v in window.items() if k != "start"})
                pairs = max(totals["pairs"], 1)
                metrics = {
                    "train/loss": totals["loss"] / max(totals["n"], 1),
                    "train/accuracy": totals["correct"] / pairs,
                    "train/margin": totals["margin"] / pairs,
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/groups_per_s": totals["n"] / elapsed,
                }
                if grad_norm is not None:
                    metrics["train/grad_norm"] = grad_norm
                logger.log(state.step, {tag + k: v for k, v in metrics.items()})
                window = {"loss": 0.0, "n": 0, "correct": 0.0, "pairs": 0, "margin": 0.0, "start": time.perf_counter()}
            if cfg.eval_every and state.step % cfg.eval_every == 0 and held_out:
                m, _ = evaluate(model, held_out, cfg, pad_id, shared, with_ties, accelerator)
                logger.log(state.step, {tag + k: v for k, v in m.items()})
            if cfg.save_every and state.step % cfg.save_every == 0:
                common.save_checkpoint(member_dir, accelerator, state, cfg.keep_checkpoints)
    progress.close()
    figures = {}
    if held_out:
        figures, _ = evaluate(model, held_out, cfg, pad_id, shared, with_ties, accelerator)
        logger.log(state.step, {tag + k: v for k, v in figures.items()})
    rm = accelerator.unwrap_model(model)
    if cfg.lora:
        rm.trunk = rm.trunk.merge_and_unload()
    if cfg.normalize:
        prompts, responses = reference_texts(cfg, train_records)
        rm.set_normalisation(score_raw(rm, prompts, responses, cfg.batch_size, cfg.max_length))
    accelerator.free_memory()  # forget this member's prepared objects before the next member is prepared
    return rm, {**figures, "steps": state.step}


def run(cfg: RewardConfig) -> Path:
    accelerator = common.make_accelerator(cfg)
    common.refuse_sharding(accelerator, "rm train")
    run_dir = common.open_run(cfg, accelerator)
    train_records, eval_records, invalid = load_train_eval(
        cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.data_kind, skip_invalid=cfg.skip_invalid, seed=cfg.seed
    )
    parse_model_spec(cfg.model)  # a bad model setting fails here, before the run folder is made
    data = {"train": cfg.data, "eval": cfg.eval_data, "normalize_on": cfg.normalize_on}
    logger = common.start_run(run_dir, cfg, accelerator, [parent_of("model", cfg.model)], data)
    run_dir.write_invalid_rows(invalid)
    members, member_figures = [], []
    try:
        for i in range(cfg.ensemble):
            member_dir = run_dir if cfg.ensemble == 1 else RunFolder(run_dir.path / f"member-{i}")
            saved = member_dir.path / "done"  # a member trained before an interruption is kept, not retrained
            if (saved / "reward.json").exists():
                members.append(load_reward_model(saved))
                member_figures.append(json.loads((saved / "figures.json").read_text()))
                continue
            rm, figs = train_member(cfg, i, run_dir, member_dir, logger, accelerator, train_records, eval_records)
            if accelerator.is_main_process and cfg.ensemble > 1:
                save_reward_model(rm, saved)
                (saved / "figures.json").write_text(json.dumps(figs))
            members.append(rm)
            member_figures.append(figs)
    except KeyboardInterrupt:
        logger.close()
        raise
    model = members[0] if cfg.ensemble == 1 else RewardEnsemble(members)
    figures = {
        "steps": member_figures[0]["steps"],
        **{k.replace("eval/", "eval_"): v for k, v in member_figures[0].items() if k.startswith("eval/")},
    }
    if cfg.ensemble > 1:
        figures = {"steps": figures["steps"], "members": member_figures}
        if eval_records:
            ensemble = ensemble_figures(model, eval_records, cfg)
            logger.log(figures["steps"], ensemble)
            figures.update({k.removeprefix("eval/"): v for k, v in ensemble.items()})
    logger.close()
    if accelerator.is_main_process:
        save_reward_model(model, run_dir.final)
        for i in range(cfg.ensemble if cfg.ensemble > 1 else 0):
            shutil.rmtree(run_dir.path / f"member-{i}" / "done", ignore_errors=True)
    run_dir.finish(figures)
    accelerator.wait_for_everyone()
    return run_dir.path


def ensemble_figures(ens: RewardEnsemble, records, cfg: RewardConfig) -> dict[str, float]:
    """Held-out accuracy of the ensemble mean and the mean disagreement (std across members)."""
    if cfg.data_kind != "comparison":
        return {}
    pairs = [r for r in records if not r.tie]
    if not pairs:
        return {}
    prompts = [r.prompt for r in pairs] * 2
    responses = [r.chosen for r in pairs] + [r.rejected for r in pairs]
    mean, std = score_ensemble(ens, prompts, responses, cfg.batch_size, cfg.max_length)
    n = len(pairs)
    return {
        "eval/ensemble_accuracy": (mean[:n] > mean[n:]).float().mean().item(),
        "eval/disagreement": std.mean().item(),
    }


# --------------------------------------------------------------------------------------------------
# rlhfkit rm score
# --------------------------------------------------------------------------------------------------


def score_file(cfg: ScoreConfig) -> Path:
    """Score every row of ``cfg.data`` with any reward; each output row is the input row plus 'score' (the
    ensemble's mean) and, for an ensemble, 'score_std' (the spread of its members)."""
    from rlhfkit.rewards import load_reward

    records = read_records(cfg.data, "response")[0]
    rows = read_jsonl(cfg.data)  # the same rows as they were written, to be echoed back with their scores
    reward = load_reward(cfg.reward, cfg.batch_size, "cuda" if torch.cuda.is_available() else None)
    members = reward.members([r.prompt for r in records], [r.response for r in records])  # (E, N)
    out = Path(cfg.output) if cfg.output else Path(cfg.data).with_suffix(".scores.jsonl")
    scored = []
    for row, mean, std in zip(rows, members.mean(0).tolist(), members.std(0, unbiased=False).tolist()):
        scored.append({**row, "score": mean, **({"score_std": std} if members.size(0) > 1 else {})})
    write_jsonl(out, scored)
    return out
