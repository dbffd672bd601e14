"""Reward-model training on comparisons (with ties) or rankings; ensembles; normalisation; scoring.

    rlhfkit rm train --model tiny --data toy --max-steps 200            # causal trunk, CPU, seconds
    rlhfkit rm train --model minilm --data pairs.jsonl --lr 3e-5         # the MiniLM encoder trunk
    rlhfkit rm train --data rankings.jsonl --data-kind ranking --ensemble 4 --bootstrap
    rlhfkit rm score --model runs/rm-... --data rows.jsonl --output scores.jsonl

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
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from rlhfkit import losses
from rlhfkit.config import DataPart, ModelPart, OptimPart, RunPart, StageConfig
from rlhfkit.data.io import DataError, load_train_eval
from rlhfkit.data.pairs import Group, model_mask, pack_groups, pad_right, tokenize_comparison, tokenize_ranking
from rlhfkit.models.reward import (
    ENCODER_SPECS,
    RewardEnsemble,
    RewardModel,
    build_reward_model,
    encode,
    load_reward_model,
    save_reward_model,
    score_ensemble,
    score_raw,
)
from rlhfkit.runs import RunFolder
from rlhfkit.train import common


class RewardConfig(ModelPart, DataPart, OptimPart, RunPart):
    """Settings of `rlhfkit rm train`."""

    data_kind: Literal["comparison", "ranking"] = Field(
        "comparison", description="prompt/chosen/rejected rows (ties allowed) or prompt/completions/ranking rows"
    )
    encoder: bool = Field(
        False, description="the model is a bidirectional encoder (implied by --model minilm); score from mean pooling"
    )
    ensemble: int = Field(1, gt=0, description="members in the ensemble (each its own seed)")
    bootstrap: bool = Field(
        False, description="each ensemble member trains on its own resample (with replacement) of the data"
    )
    tie_nu: float = Field(
        1.0, gt=0, description="Davidson's nu for data with ties (larger = ties likelier at equal rewards)"
    )
    use_margin: bool = Field(True, description="use a comparison's 'margin' field in the Bradley-Terry loss (Llama 2)")
    center_rewards_coefficient: float | None = Field(
        None, description="add c * mean((r_chosen + r_rejected)^2) to keep rewards centred (TRL's option)"
    )
    normalize: bool = Field(
        True, description="fit gain/bias so reference-set scores have mean 0 and std 1; stored with the model"
    )
    normalize_on: str | None = Field(
        None,
        description="reference set for normalisation: a JSONL of prompt/response rows or comparisons; default: the training pairs' responses",
    )
    normalize_max: int = Field(1024, gt=0, description="at most this many reference responses")
    shared_prompt: bool = Field(
        True, description="one row per group with the prompt computed once (exact; causal trunks only)"
    )


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
    """Held-out loss, accuracy, margin, ECE, and the raw scores of every completion (on this process's share)."""
    model.eval()
    mine = groups[accelerator.process_index :: accelerator.num_processes]
    all_scores, total = [], torch.zeros((), device=accelerator.device)
    for s in range(0, len(mine), cfg.batch_size):
        chunk = mine[s : s + cfg.batch_size]
        scores = score_groups(model, chunk, pad_id, shared, accelerator.device).float()
        total += group_loss(scores, chunk, cfg, with_ties).sum()
        all_scores.append(scores)
    model.train()
    scores = torch.cat(all_scores) if all_scores else torch.zeros(0, device=accelerator.device)
    total = accelerator.reduce(total, "sum")
    metrics = {f"{prefix}/loss": total.item() / max(len(groups), 1)}
    better, worse = ordered_pairs(scores, mine)
    if accelerator.num_processes > 1 and better.numel():
        better, worse = accelerator.gather_for_metrics(better), accelerator.gather_for_metrics(worse)
    metrics.update(preference_metrics(better, worse, prefix))
    return metrics, scores


# --------------------------------------------------------------------------------------------------
# Normalisation reference set
# --------------------------------------------------------------------------------------------------


def reference_texts(cfg: RewardConfig, train_records) -> tuple[list, list]:
    """(prompts, responses) of the normalisation reference set."""
    prompts, responses = [], []
    if cfg.normalize_on:
        path = Path(cfg.normalize_on)
        if not path.exists():
            raise DataError(f"{path}: no such file (normalize_on)")
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "prompt" not in row:
                raise DataError(f"{path}:{lineno}: field 'prompt': missing")
            for key in ("response", "completion", "chosen", "rejected"):
                if key in row:
                    prompts.append(row["prompt"])
                    responses.append(row[key])
    else:
        for r in train_records:
            comps = [r.chosen, r.rejected] if hasattr(r, "chosen") else list(r.completions)
            for c in comps:
                prompts.append(r.prompt)
                responses.append(c)
    as_plain = lambda x: x if isinstance(x, str) else [m if isinstance(m, dict) else m.model_dump() for m in x]  # noqa: E731
    from rlhfkit.data.records import Message

    to_msgs = lambda x: x if isinstance(x, str) else [Message(**m) for m in as_plain(x)]  # noqa: E731
    prompts, responses = [to_msgs(p) for p in prompts], [to_msgs(r) for r in responses]
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
    encoder = cfg.encoder or cfg.model in ENCODER_SPECS
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

    n_steps = common.total_steps(cfg, len(train), accelerator.num_processes)
    optimizer = common.make_optimizer(rm, cfg)
    scheduler = common.make_scheduler(optimizer, cfg, n_steps)
    model, optimizer, scheduler = accelerator.prepare(rm, optimizer, scheduler)
    state = common.resume(member_dir, accelerator, cfg.resume, common.TrainerState())
    batches = common.global_batches(
        [len(g) for g in train], cfg.batch_size * accelerator.num_processes, seed, start=state.step
    )
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
                pairs = max(window["pairs"], 1)
                metrics = {
                    "train/loss": window["loss"] / max(window["n"], 1),
                    "train/accuracy": window["correct"] / pairs,
                    "train/margin": window["margin"] / pairs,
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/groups_per_s": window["n"] * accelerator.num_processes / elapsed,
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
    run_dir, logger = common.open_run("rm", cfg, accelerator)
    if cfg.data == "toy" and cfg.data_kind != "comparison":
        raise ValueError("the toy world has built-in comparisons only; give --data for rankings")
    train_records, eval_records, invalid = load_train_eval(
        cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.data_kind, skip_invalid=cfg.skip_invalid, seed=cfg.seed
    )
    if accelerator.is_main_process:
        run_dir.write_invalid_rows(invalid)
    members, figures = [], {}
    try:
        for i in range(cfg.ensemble):
            member_dir = run_dir if cfg.ensemble == 1 else RunFolder(run_dir.path / f"member-{i}")
            done = member_dir.path / "done"
            if (done / "reward.json").exists():  # finished before an interruption: keep it
                members.append(load_reward_model(done))
                continue
            rm, figs = train_member(cfg, i, run_dir, member_dir, logger, accelerator, train_records, eval_records)
            if accelerator.is_main_process and cfg.ensemble > 1:
                save_reward_model(rm, done)
            members.append(rm)
            figures.update({(f"member{i}/" if cfg.ensemble > 1 else "") + k: v for k, v in figs.items()})
    except KeyboardInterrupt:
        logger.close()
        raise
    model = members[0] if cfg.ensemble == 1 else RewardEnsemble(members)
    if cfg.ensemble > 1 and eval_records:
        ens_figs = ensemble_figures(model, eval_records, cfg)
        logger.log(figures.get("member0/steps", 0), ens_figs)
        figures.update(ens_figs)
    logger.close()
    if accelerator.is_main_process:
        save_reward_model(model, run_dir.final)
        if cfg.ensemble > 1:
            import shutil

            for i in range(cfg.ensemble):
                shutil.rmtree(run_dir.path / f"member-{i}" / "done", ignore_errors=True)
        run_dir.write_card(
            "rm",
            parents=[cfg.model],
            data={"train": cfg.data, "eval": cfg.eval_data, "normalize_on": cfg.normalize_on},
            figures=figures,
        )
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


class ScoreConfig(StageConfig):
    """Settings of `rlhfkit rm score`."""

    model: str = Field(..., description="a reward model: the run folder of `rlhfkit rm train` or its final/")
    data: str = Field(..., description="JSONL of rows with 'prompt' and 'response' (or 'completion')")
    output: str | None = Field(
        None,
        description="where to write the rows with 'score' (and 'score_std' for an ensemble); default <data>.scores.jsonl",
    )
    batch_size: int = Field(32, gt=0)
    max_length: int = Field(512, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def score_file(cfg: ScoreConfig) -> Path:
    """Score every row of ``cfg.data``; each output row is the input row plus 'score' (normalised)."""
    from rlhfkit.data.records import Message

    path = Path(cfg.data)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    rows, prompts, responses = [], [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        key = "completion" if "completion" in row and "response" not in row else "response"
        for field in ("prompt", key):
            if not isinstance(row.get(field), (str, list)):
                raise DataError(f"{path}:{lineno}: field '{field}': missing (rows need 'prompt' and 'response')")
        as_msgs = lambda x: x if isinstance(x, str) else [Message(**m) for m in x]  # noqa: E731
        rows.append(row)
        prompts.append(as_msgs(row["prompt"]))
        responses.append(as_msgs(row[key]))
    rm = load_reward_model(cfg.model, cfg.dtype)
    if torch.cuda.is_available():
        rm.cuda()
    mean, std = score_ensemble(rm, prompts, responses, cfg.batch_size, cfg.max_length)
    out = Path(cfg.output) if cfg.output else path.with_suffix(".scores.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row, m, s in zip(rows, mean.tolist(), std.tolist()):
            row = {**row, "score": m}
            if isinstance(rm, RewardEnsemble):
                row["score_std"] = s
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out
