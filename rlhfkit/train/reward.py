"""Reward-model training on comparisons (ties, soft labels), rankings or ratings; annotator-conditioned and
distributional heads; ensembles; normalisation; scoring.

    rlhfkit rm train --model tiny --data toy --max-steps 200            # causal trunk, CPU, seconds
    rlhfkit rm train --model minilm --data pairs.jsonl --lr 3e-5         # the MiniLM encoder trunk
    rlhfkit rm train --data rankings.jsonl --data-kind ranking --ensemble 4 --bootstrap
    rlhfkit rm train --data ratings.jsonl --data-kind rating --rating-loss ordinal     # or regression, pairs
    rlhfkit rm train --data pairs.jsonl --annotator-conditioned --per-annotator-report
    rlhfkit rm train --data pairs.jsonl --head mean-variance          # + the hidden-context statistic
    rlhfkit rm score --reward runs/rm-... --data rows.jsonl --output scores.jsonl

Python: ``rlhfkit.train.reward.run(RewardConfig(...))`` returns the run folder.

Models of preference (``rlhfkit.losses``): Bradley-Terry (optionally with a per-pair margin, or against a soft
label ``chosen_prob``) when the data has no ties; Davidson's model of ties (1970) for every pair when it does
(``tie_nu`` its nu); Plackett-Luce for rankings; for ratings the ordered logit (thresholds learnt with the head) or
squared error on the rating mapped onto [0, 1] (``rlhfkit.train.reward_data``). A mean-variance head (Siththaranjan
et al. 2023) gives each response a reward distribution and trains on P(chosen > rejected) = Phi(dmu / sqrt(sum of
variances)) (ties are dropped: the model has no place for them). An annotator-conditioned head scores annotator a
as (w + delta_a) . h; a share ``annotator_dropout`` of labels trains w alone, so w is the pooled model that unknown
annotators get. Each member of an ensemble is a full model trained from its own seed (and, with ``bootstrap``, its
own resample of the data); the ensemble scores by the mean of its members and gives their std as disagreement.
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
from rlhfkit.config.stages import RewardConfig
from rlhfkit.data.io import DataError, load_train_eval, read_jsonl
from rlhfkit.data.pairs import Group, model_mask, pack_groups, pad_right
from rlhfkit.data.records import from_json
from rlhfkit.models.catalog import ENCODER_MODELS
from rlhfkit.models.reward import RewardEnsemble, RewardModel, build_reward_model, load_reward_model, save_reward_model
from rlhfkit.models.reward_scoring import score_raw
from rlhfkit.runs import Progress, RunFolder, parent_of
from rlhfkit.specs import parse_model_spec
from rlhfkit.train import batching, common
from rlhfkit.train.reward_data import RewardData, prepare, tokenize_all
from rlhfkit.train.reward_report import ensemble_figures, hidden_context, per_annotator_report, print_per_annotator
from rlhfkit.train.token_cache import cached_tokens

REWARD_SOURCES = ("rlhfkit.train.reward_data",)  # where the reward model's records become ids (the cache key)

# --------------------------------------------------------------------------------------------------
# Scoring groups and their losses
# --------------------------------------------------------------------------------------------------


def score_groups(
    model, groups: list[Group], pad_id: int, shared_prompt: bool, device, annotators: bool = True, with_log_var=False
):
    """(N,) raw scores of every completion of ``groups``, group by group: each group's annotator's own score for an
    annotator-conditioned model (``annotators=False``: the pooled score); with ``with_log_var`` also (N,) log-variances."""
    ids = None
    if annotators and common_unwrap(model).annotators:
        ids = torch.tensor([g.annotator for g in groups for _ in g.completion_ids], device=device)  # (N,)
    if shared_prompt:
        packed = pack_groups(groups, pad_id).to(device)
        packed.attention_mask = model_mask(common_unwrap(model).trunk, packed.attention_mask, torch.float32)
        return model(packed=packed, annotators=ids, with_log_var=with_log_var)
    rows = [g.prompt_ids + c for g in groups for c in g.completion_ids]
    input_ids = pad_right(rows, pad_id).to(device)
    mask = pad_right([[1] * len(r) for r in rows], 0).to(device)
    return model(input_ids, mask, annotators=ids, with_log_var=with_log_var)


def common_unwrap(model):
    return getattr(model, "module", model)


def _per_group(groups: list[Group], name: str, default, like: torch.Tensor) -> torch.Tensor:
    values = [getattr(g, name) for g in groups]
    return torch.tensor([default if v is None else v for v in values], device=like.device, dtype=like.dtype)


def group_loss(
    out, groups: list[Group], cfg: RewardConfig, with_ties: bool, kind: str | None = None, thresholds=None
) -> torch.Tensor:
    """(B,) per-group losses from the (N,) completion scores (a mean-variance head: (scores, log-variances)).
    ``kind`` is what the groups hold (default ``cfg.data_kind``); ``thresholds`` the ordered logit's."""
    kind = kind or cfg.data_kind
    if kind == "rating":
        ratings = _per_group(groups, "rating", None, out)  # (B,), one completion per group
        if cfg.rating_loss == "ordinal":
            return losses.ordinal_logit_loss(out, ratings, thresholds)
        targets = losses.ratings_to_unit_interval(ratings, _per_group(groups, "scale", None, out))
        return losses.rating_regression_loss(out, targets)
    if kind == "ranking":
        return _ranking_loss(out, groups)
    prob = None
    if any(g.chosen_prob is not None for g in groups):  # soft labels; a hard label is probability 1
        prob = _per_group(groups, "chosen_prob", 1.0, out[0] if isinstance(out, tuple) else out)
    if cfg.head == "mean-variance":
        scores, log_var = (x.view(-1, 2) for x in out)  # (N,) -> (B, 2): chosen, rejected
        args = (scores[:, 0], log_var[:, 0], scores[:, 1], log_var[:, 1])
        loss = losses.mean_variance_preference_loss(*args)
        if prob is not None:
            flipped = losses.mean_variance_preference_loss(scores[:, 1], log_var[:, 1], scores[:, 0], log_var[:, 0])
            loss = prob * loss + (1 - prob) * flipped
        chosen, rejected = scores[:, 0], scores[:, 1]
    else:
        pairs = out.view(-1, 2)  # (N,) -> (B, 2): chosen, rejected
        chosen, rejected = pairs[:, 0], pairs[:, 1]
        if with_ties:
            tie = torch.tensor([g.tie for g in groups], device=out.device)
            if prob is None:
                loss = losses.preference_loss_with_ties(chosen, rejected, tie, cfg.tie_nu)
            else:
                loss = losses.davidson_soft_loss(chosen, rejected, tie, prob, cfg.tie_nu)
        else:
            margin = None
            if cfg.use_margin and any(g.margin is not None for g in groups):
                margin = _per_group(groups, "margin", 0.0, out)
            if prob is None:
                loss = losses.bradley_terry_loss(chosen, rejected, margin)
            else:  # records give a margin or a soft label, never both, so a soft row has margin 0
                loss = losses.bradley_terry_soft_loss(chosen - (margin if margin is not None else 0), rejected, prob)
    if cfg.center_rewards_coefficient:
        loss = loss + cfg.center_rewards_coefficient * (chosen + rejected) ** 2
    return loss


def _ranking_loss(scores: torch.Tensor, groups: list[Group]) -> torch.Tensor:
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
    """(better, worse) scores of every pair a group orders: chosen/rejected of non-tie comparisons (a soft label's
    likelier side first; 0.5 orders nothing), all K(K-1)/2 pairs of a ranking; ratings order nothing on their own."""
    better, worse, offset = [], [], 0
    for g in groups:
        k = len(g.completion_ids)
        s = scores[offset : offset + k]
        if g.ranking is not None:
            order = g.ranking
        elif k != 2 or g.tie or g.chosen_prob == 0.5:
            order = []
        else:
            order = [1, 0] if g.chosen_prob is not None and g.chosen_prob < 0.5 else [0, 1]
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


def _pairs_by_group(scores: torch.Tensor, groups: list[Group], indices: list[int]) -> list[tuple[int, list]]:
    """[(index, [(better, worse), ...])] for each group of a scored batch: pairs kept with their group's index, so
    shares scored on several processes can be put back in the groups' order."""
    out, offset = [], 0
    for index, g in zip(indices, groups):
        k = len(g.completion_ids)
        better, worse = ordered_pairs(scores[offset : offset + k].cpu(), [g])
        out.append((index, list(zip(better.tolist(), worse.tolist()))))
        offset += k
    return out


def _scores(out):
    return out[0] if isinstance(out, tuple) else out


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
    kind: str | None = None,
    pair_groups: list[Group] | None = None,
    annotators: bool = True,
) -> dict[str, float]:
    """Held-out loss, and the accuracy, margin and ECE of the pairs the groups order (for ratings: of
    ``pair_groups``, the held-out ratings as pairs). Each process scores a strided share; the pairs are gathered
    back into the groups' order, so that the figures (ECE presents every other pair swapped) are those of one
    process."""
    model.eval()
    kind = kind or cfg.data_kind
    mv = cfg.head == "mean-variance"
    thresholds = common_unwrap(model).thresholds() if kind == "rating" and cfg.rating_loss == "ordinal" else None
    total = torch.zeros((), device=accelerator.device)
    mine = list(range(accelerator.process_index, len(groups), accelerator.num_processes))
    pairs_of = []  # [(group index, [(better, worse), ...])] of this process
    for s in range(0, len(mine), cfg.batch_size):
        chunk = [groups[i] for i in mine[s : s + cfg.batch_size]]
        out = score_groups(model, chunk, pad_id, shared, accelerator.device, annotators, with_log_var=mv)
        total += group_loss(out, chunk, cfg, with_ties, kind, thresholds).sum()
        if pair_groups is None:
            pairs_of += _pairs_by_group(_scores(out).float(), chunk, mine[s : s + cfg.batch_size])
    mine_pairs = list(range(accelerator.process_index, len(pair_groups or []), accelerator.num_processes))
    for s in range(0, len(mine_pairs), cfg.batch_size):  # ratings: accuracy on the held-out ratings as pairs
        chunk = [pair_groups[i] for i in mine_pairs[s : s + cfg.batch_size]]
        out = score_groups(model, chunk, pad_id, shared, accelerator.device, annotators)
        pairs_of += _pairs_by_group(_scores(out).float(), chunk, mine_pairs[s : s + cfg.batch_size])
    model.train()
    total = accelerator.reduce(total, "sum")
    ordered = [p for _, group_pairs in sorted(common.gather_objects(accelerator, pairs_of)) for p in group_pairs]
    better = torch.tensor([b for b, _ in ordered], dtype=torch.float32)
    worse = torch.tensor([w for _, w in ordered], dtype=torch.float32)
    metrics = {f"{prefix}/loss": total.item() / max(len(groups), 1)}
    metrics.update(preference_metrics(better, worse, prefix))
    return metrics


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
            for c in _responses(r):
                prompts.append(r.prompt)
                responses.append(c)
    return prompts[: cfg.normalize_max], responses[: cfg.normalize_max]


def _responses(record) -> list:
    if hasattr(record, "chosen"):
        return [record.chosen, record.rejected]
    return list(record.completions) if hasattr(record, "completions") else [record.completion]


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
    data: RewardData,
) -> tuple[RewardModel, dict]:
    """One reward model, from its seed (and bootstrap resample), with checkpoints in ``member_dir``."""
    seed = cfg.seed + index
    encoder = cfg.encoder or cfg.model in ENCODER_MODELS
    rm = build_reward_model(
        cfg.model,
        common.training_dtype(cfg),
        cfg.chat_template,
        seed=seed,
        encoder=encoder,
        annotators=data.annotators,
        variance=cfg.head == "mean-variance",
        rating=data.rating,
    )
    rm.max_length = cfg.max_length  # saved with it: PPO, best-of-N and `rm score` read what it was trained on
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
    # The ids depend on the trunk's kind, the records' kind, max_length and the annotators' order (their index).
    tokenize = lambda records: tokenize_all(rm, records, cfg.max_length, data.annotators)  # noqa: E731
    settings = (rm.kind, data.kind, cfg.max_length, data.annotators)
    train = cached_tokens(tokenize, data.train, rm.tokenizer, *settings, item_type=Group, sources=REWARD_SOURCES)
    held_out = cached_tokens(tokenize, data.held_out, rm.tokenizer, *settings, item_type=Group, sources=REWARD_SOURCES)
    held_out_pairs = tokenize_all(rm, data.held_out_pairs, cfg.max_length, data.annotators) or None
    # from the data, before any resample: every member of an ensemble learns the same model of preference (a
    # bootstrap draw that happened to hold no tie trained that member with plain Bradley-Terry, the others Davidson)
    with_ties = data.kind == "comparison" and any(g.tie for g in train + held_out)
    if cfg.bootstrap:
        rng = random.Random(seed)
        train = [train[rng.randrange(len(train))] for _ in range(len(train))]
    mv = cfg.head == "mean-variance"
    ordinal = data.rating is not None and data.rating["loss"] == "ordinal"
    tag = f"member{index}/" if cfg.ensemble > 1 else ""

    def held_out_metrics(annotators: bool = True, prefix: str = "eval") -> dict[str, float]:
        return evaluate(
            model, held_out, cfg, pad_id, shared, with_ties, accelerator, prefix, data.kind, held_out_pairs, annotators
        )

    micro_batch = batching.cpu_micro_batch(rm.trunk, [len(g) for g in train])
    batching.check_global_batch(accelerator, cfg.batch_size, cfg.grad_accum, micro_batch=micro_batch)
    n_steps = common.total_steps(cfg, len(train))
    optimizer = common.make_optimizer(rm, cfg)
    scheduler = common.make_scheduler(optimizer, cfg, n_steps)
    model, optimizer, scheduler = accelerator.prepare(rm, optimizer, scheduler)
    state = common.resume(member_dir, accelerator, cfg.resume, common.TrainerState())
    batches = batching.global_batches([len(g) for g in train], cfg.batch_size, seed, start=state.step)
    name = "rm" if cfg.ensemble == 1 else f"rm member {index + 1}/{cfg.ensemble}"
    progress = Progress(n_steps, name, cfg.progress and accelerator.is_main_process, completed=state.step)
    model.train()
    window = {"loss": 0.0, "n": 0, "correct": 0.0, "pairs": 0, "margin": 0.0, "start": time.perf_counter()}
    with common.checkpoint_on_interrupt(member_dir, accelerator, state, cfg.keep_checkpoints, progress) as stop:
        while state.step < n_steps:
            global_batch = next(batches)
            dropped = set()
            if data.annotators and cfg.annotator_dropout:  # these labels train the pooled head
                # a function of (step, place in the global batch), so the same labels drop on any number of processes
                drop = random.Random(seed * 1_000_003 + state.step)
                dropped = {pos for pos in range(len(global_batch)) if drop.random() < cfg.annotator_dropout}
            place = {i: pos for pos, i in enumerate(global_batch)}
            micro = [
                [Group(**{**train[i].__dict__, "annotator": -1}) if place[i] in dropped else train[i] for i in m]
                for m in batching.split_micro(global_batch, accelerator, cfg.grad_accum, micro_batch)
            ]
            for i, groups in enumerate(micro):
                sync = i == len(micro) - 1
                with accelerator.no_sync(model) if not sync else nullcontext():
                    with accelerator.autocast():
                        out = score_groups(model, groups, pad_id, shared, accelerator.device, with_log_var=mv)
                        thresholds = common_unwrap(model).thresholds() if ordinal else None
                        loss_sum = group_loss(out, groups, cfg, with_ties, data.kind, thresholds).sum()
                    # Mean over the global batch: equal for any split into micro-batches and processes.
                    accelerator.backward(loss_sum * accelerator.num_processes / len(global_batch))
                better, worse = ordered_pairs(_scores(out).detach().float(), groups)
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
                metrics = {
                    "train/loss": totals["loss"] / max(totals["n"], 1),
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/groups_per_s": totals["n"] / elapsed,
                }
                if totals["pairs"]:  # ratings order no pairs within a group
                    metrics["train/accuracy"] = totals["correct"] / totals["pairs"]
                    metrics["train/margin"] = totals["margin"] / totals["pairs"]
                if grad_norm is not None:
                    metrics["train/grad_norm"] = grad_norm
                logger.log(state.step, {tag + k: v for k, v in metrics.items()})
                window = {"loss": 0.0, "n": 0, "correct": 0.0, "pairs": 0, "margin": 0.0, "start": time.perf_counter()}
            if cfg.eval_every and state.step % cfg.eval_every == 0 and held_out:
                logger.log(state.step, {tag + k: v for k, v in held_out_metrics().items()})
            if cfg.save_every and state.step % cfg.save_every == 0:
                common.save_checkpoint(member_dir, accelerator, state, cfg.keep_checkpoints)
            stop.at_step_end()  # where a Ctrl-C stops: a checkpoint here resumes the same run
    progress.close()
    figures = {}
    if held_out:
        figures = held_out_metrics()
        if data.annotators:  # the same held-out labels, scored by the pooled head
            pooled = held_out_metrics(annotators=False, prefix="pooled")
            figures["eval/pooled_accuracy"] = pooled.get("pooled/accuracy")
        logger.log(state.step, {tag + k: v for k, v in figures.items()})
    rm = accelerator.unwrap_model(model)
    if cfg.lora:
        rm.trunk = rm.trunk.merge_and_unload()
    if cfg.normalize:
        prompts, responses = reference_texts(cfg, data.train)
        rm.set_normalisation(score_raw(rm, prompts, responses, cfg.batch_size, cfg.max_length))
        for annotator in rm.annotators:  # each annotator's scores, mean 0 and std 1 on the same reference set
            raw = score_raw(rm, prompts, responses, cfg.batch_size, cfg.max_length, annotator)
            rm.set_normalisation(raw, annotator)
    return rm, {**figures, "steps": state.step}


def run(cfg: RewardConfig) -> Path:
    accelerator = common.make_accelerator(cfg)
    common.refuse_sharding(accelerator, "rm train")
    run_dir = common.open_run(cfg, accelerator)
    record_kind = "rating" if cfg.data_kind == "rating" else cfg.data_kind
    train_records, eval_records, invalid = load_train_eval(
        cfg.data, cfg.eval_data, cfg.eval_fraction, record_kind, skip_invalid=cfg.skip_invalid, seed=cfg.seed
    )
    data = prepare(cfg, train_records, eval_records, cfg.data)
    parse_model_spec(cfg.model)  # a bad model setting fails here, before the run folder is made
    files = {"train": cfg.data, "eval": cfg.eval_data, "normalize_on": cfg.normalize_on}
    logger = common.start_run(run_dir, cfg, accelerator, [parent_of("model", cfg.model)], files)
    run_dir.write_invalid_rows(invalid)
    if data.dropped_ties:
        accelerator.print(f"mean-variance head: {data.dropped_ties} tie pairs left out (the model has no ties)")
    members, member_figures = [], []
    try:
        for i in range(cfg.ensemble):
            member_dir = run_dir if cfg.ensemble == 1 else RunFolder(run_dir.path / f"member-{i}")
            saved = member_dir.path / "done"  # a member trained before an interruption is kept, not retrained
            if (saved / "reward.json").exists():
                members.append(load_reward_model(saved))
                member_figures.append(json.loads((saved / "figures.json").read_text()))
                continue
            if i:  # forget the last member's prepared objects before this one is prepared; a run's end needs no
                accelerator.free_memory()  # such sweep (its gc.collect walks every object: ~0.5 s CPU)
            rm, figs = train_member(cfg, i, run_dir, member_dir, logger, accelerator, data)
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
    held_out_labels, all_labels = data.labelled()
    if cfg.ensemble > 1:
        figures = {"steps": figures["steps"], "members": member_figures}
        ensemble = ensemble_figures(model, held_out_labels, cfg.batch_size, cfg.max_length)
        if ensemble:
            logger.log(figures["steps"], ensemble)
            figures.update({k.removeprefix("eval/"): v for k, v in ensemble.items()})
    if cfg.head == "mean-variance":
        figures["hidden_context_r2"] = hidden_context(
            model, data.held_out or data.train, cfg.batch_size, cfg.max_length
        )
        logger.log(figures["steps"], {"eval/hidden_context_r2": figures["hidden_context_r2"]})
    if cfg.per_annotator_report:
        rows = per_annotator_report(model, held_out_labels, all_labels, cfg.batch_size, cfg.max_length)
        figures["per_annotator"] = rows
        if accelerator.is_main_process:
            (run_dir.path / "per_annotator.json").write_text(json.dumps(rows, indent=2))
            print_per_annotator(rows, run_dir.path / "per_annotator.json")
    logger.close()
    if accelerator.is_main_process:
        save_reward_model(model, run_dir.final)
        for i in range(cfg.ensemble if cfg.ensemble > 1 else 0):
            shutil.rmtree(run_dir.path / f"member-{i}" / "done", ignore_errors=True)
    run_dir.finish(figures)
    accelerator.wait_for_everyone()
    return run_dir.path
