"""Direct preference optimisation (Rafailov et al. 2023) and its variants, from comparisons.

    rlhfkit dpo --model runs/sft-... --data toy --max-steps 200                     # sigmoid DPO
    rlhfkit dpo --model tiny --data pairs.jsonl --loss ipo --beta 0.5
    rlhfkit dpo --model tiny --loss sigmoid --label-smoothing 0.1                  # conservative DPO
    rlhfkit dpo --model smollm2-135m-instruct --lora --reference lora-off         # no second copy
    rlhfkit dpo --model runs/sft-... --rpo-alpha 1.0                               # + NLL on chosen (RPO)

Python: ``rlhfkit.train.dpo.run(DPOConfig(...))`` returns the run folder.

The loss is one of ``rlhfkit.losses.DPO_LOSSES`` (sigmoid, ipo, hinge, robust; sigmoid with
label_smoothing > 0 is cDPO), plus, with ``rpo_alpha`` > 0, ``rpo_alpha`` times the chosen completion's
mean per-token negative log-likelihood (RPO, Pang et al. 2024; TRL's ``rpo_alpha``, which averages over all
chosen tokens of the batch instead of per pair). Pairs marked ``tie`` are never trained as a preference: with
``ties davidson`` or ``rao-kupper`` (Chen et al. 2024) every pair is scored by that model of ties on the implicit
rewards (a tie pulls the two rewards together), with ``ties drop`` they are left out. A pair's soft label
``chosen_prob`` = p trains the sigmoid loss against p (per-pair cDPO, ``rlhfkit.losses.dpo_soft_label_loss``;
pairs without one keep 1 - label_smoothing). The reference pi_ref is the starting model, either
- ``precomputed`` (default): its log-probs of every pair computed once before training (by the model
  itself, before any update: no copy), cached in the run folder (``ref_logps.safetensors``); no reference
  model in memory during training;
- ``copy``: a frozen copy in memory, run on every batch;
- ``lora-off``: the policy itself with its LoRA adapters switched off (needs ``lora``).
With ``ref_model`` the reference is that model instead of the starting one (precomputed or copy): iterative DPO
("RLHF Workflow", Dong et al. 2024) starts each round from the last round's policy and keeps the SFT model as
the reference.

How a batch is computed: chosen and rejected go through one forward, in one row per pair with the prompt
computed once (``rlhfkit.data.pairs``; on CPU this beat plain rows and position_ids packing, see
docs/performance.md); the last layer's MLP and output projection run only at the positions that predict a
completion token, and the LM head and log-softmax only there (no (B, T, V) log-softmax); no gradient
checkpointing; the reference pass runs under ``torch.inference_mode``. Metric names are TRL's
(rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen, logps/rejected).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from torch import nn

from rlhfkit import losses
from rlhfkit.config.stages import DPOConfig
from rlhfkit.data.io import DataError, load_train_eval
from rlhfkit.data.pairs import (
    Group,
    PackedGroups,
    collate_groups,
    last_layer_only_at,
    model_mask,
    positions_to_keep,
    tokenize_comparison,
)
from rlhfkit.data.prompts import read_prompts
from rlhfkit.models.load import add_lora, base_causal_lm, load_causal_lm, output_head
from rlhfkit.runs import Progress, file_hash, parent_of
from rlhfkit.train import batching, common
from rlhfkit.train.monitoring import PolicyMonitor, check_sampling
from rlhfkit.train.token_cache import cached_tokens


class CompletionLogProbs(nn.Module):
    """Wraps a causal LM: ``forward(packed) -> (N,)`` summed log-probs of every completion in the batch.

    The body runs once over the batch (its last layer's MLP only at the positions read, see
    ``last_layer_only_at``); the LM head and the log-softmax are applied only at the M positions that predict
    a completion token: (B, L, H) -> (M, H) -> (M, V) -> (M,) -> (N,)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def _no_split_modules(self) -> list[str]:
        """The decoder-layer classes FSDP's transformer wrap policy shards one by one."""
        return list(getattr(base_causal_lm(self.model), "_no_split_modules", None) or [])

    def parts(self):
        lm = base_causal_lm(self.model)
        return lm.base_model, output_head(lm)

    def forward(self, packed: PackedGroups) -> torch.Tensor:
        body, head = self.parts()
        mask = packed.attention_mask
        if mask.dim() == 4:
            mask = model_mask(body, mask, next(body.parameters()).dtype)
        keep = positions_to_keep(packed.token_row, packed.token_pred, packed.input_ids.shape)
        with last_layer_only_at(body, *keep):
            hidden = body(
                input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids, use_cache=False
            ).last_hidden_state  # (B, L, H), right only at `keep`
        logits = head(hidden[packed.token_row, packed.token_pred]).float()  # (M, V)
        token_logps = logits.gather(-1, packed.token_target.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (M,)
        return torch.zeros(packed.n_completions, device=logits.device).index_add(0, packed.token_seq, token_logps)


def tokenize_all(tokenizer, records, max_length: int) -> list[Group]:
    return [
        g
        for g in (tokenize_comparison(tokenizer, r, max_length) for r in records)
        if all(len(c) > 0 for c in g.completion_ids)
    ]


def completion_lengths(groups: list[Group], device) -> torch.Tensor:
    return torch.tensor([len(c) for g in groups for c in g.completion_ids], device=device, dtype=torch.float32)


def make_loss_fn(cfg: DPOConfig, with_ties: bool = False):
    """The variant's loss with its settings bound: (pc, pr, rc, rr, groups) -> (losses, chosen_rewards,
    rejected_rewards). ``groups`` (the batch's) give the tie marks and soft labels; without them the plain loss."""
    if with_ties:
        tie_fn = losses.DPO_TIE_LOSSES[cfg.ties.replace("-", "_")]
        extra = {"nu": cfg.tie_nu} if cfg.ties == "davidson" else {"theta": cfg.tie_theta}

        def tie_loss(pc, pr, rc, rr, groups):
            tie = torch.tensor([g.tie for g in groups], device=pc.device)
            prob = soft_labels(groups, pc, 1.0)
            kwargs = {**extra, **({"chosen_prob": prob} if prob is not None else {})}
            return tie_fn(pc, pr, rc, rr, cfg.beta, tie=tie, **kwargs)

        return tie_loss
    fn = losses._pick(losses.DPO_LOSSES, cfg.loss, "DPO loss")
    kwargs = {"beta": cfg.beta}
    if "label_smoothing" in inspect.signature(fn).parameters:
        kwargs["label_smoothing"] = cfg.label_smoothing
    elif cfg.label_smoothing:
        raise ValueError(f"label_smoothing is used by the sigmoid (cDPO) and robust losses, not by {cfg.loss!r}")
    plain = partial(fn, **kwargs)

    def loss(pc, pr, rc, rr, groups=None):
        prob = soft_labels(groups, pc, 1.0 - cfg.label_smoothing) if groups else None
        if prob is None:
            return plain(pc, pr, rc, rr)
        return losses.dpo_soft_label_loss(pc, pr, rc, rr, cfg.beta, chosen_prob=prob)

    return loss


def soft_labels(groups: list[Group], like: torch.Tensor, hard: float) -> torch.Tensor | None:
    """(B,) each pair's chosen_prob, ``hard`` where it has none; None when no pair of the batch has one."""
    if all(g.chosen_prob is None for g in groups):
        return None
    return torch.tensor([hard if g.chosen_prob is None else g.chosen_prob for g in groups], device=like.device)


def check_pairs(cfg: DPOConfig, records: list, source: str) -> list:
    """The pairs DPO trains on: ties dropped with ``ties drop``; combinations no loss defines are refused."""
    if cfg.ties == "drop":
        records = [r for r in records if not r.tie]
    ties = any(r.tie for r in records)
    soft = any(r.chosen_prob is not None for r in records)
    if ties and cfg.loss != "sigmoid":
        raise ValueError(
            f"{source}: has ties; the tie models (--ties {cfg.ties}) are built on the sigmoid loss, not "
            f"{cfg.loss!r}: use --loss sigmoid, or --ties drop"
        )
    if ties and cfg.label_smoothing:
        raise ValueError(f"{source}: has ties; label_smoothing does not combine with --ties {cfg.ties}: give "
                         "per-pair chosen_prob, or --ties drop")  # fmt: skip
    if soft and (cfg.loss != "sigmoid" or (ties and cfg.ties == "rao-kupper")):
        raise ValueError(
            f"{source}: has soft labels (chosen_prob); they train the sigmoid loss (and Davidson's ties), not "
            f"--loss {cfg.loss}" + (" with --ties rao-kupper" if ties and cfg.loss == "sigmoid" else "")
        )
    return records


def dpo_step(policy, groups: list[Group], ref_logps: torch.Tensor, loss_fn, cfg: DPOConfig, pad_id: int, device):
    """Summed per-pair loss of a micro-batch and its metrics. ref_logps (N,): the reference's summed log-probs,
    in the batch's completion order (chosen, rejected, chosen, ...)."""
    packed = collate_groups(groups, pad_id, cfg.shared_prompt).to(device)
    policy_logps = policy(packed)  # (N,)
    pol, ref = policy_logps, ref_logps
    lengths = completion_lengths(groups, device) if cfg.loss == "ipo" or cfg.rpo_alpha else None  # (N,)
    if cfg.loss == "ipo":  # per-token averages, as TRL, so beta does not depend on the length
        pol, ref = pol / lengths, ref / lengths
    pol, ref = pol.view(-1, 2), ref.view(-1, 2)  # (N,) -> (B, 2): chosen, rejected
    per_pair, chosen_rewards, rejected_rewards = loss_fn(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], groups)
    if cfg.loss == "ipo":  # report rewards from summed log-probs, as TRL does
        both = cfg.beta * (policy_logps.detach() - ref_logps).view(-1, 2)
        chosen_rewards, rejected_rewards = both[:, 0], both[:, 1]
    extra = {}
    if cfg.rpo_alpha:  # DPO alone can lower the chosen log-prob too, as long as the rejected one falls faster
        nll = -policy_logps.view(-1, 2)[:, 0] / lengths.view(-1, 2)[:, 0]  # (B,)
        per_pair = per_pair + cfg.rpo_alpha * nll
        extra["nll_loss"] = nll.detach().sum().item()
    logps = policy_logps.detach().view(-1, 2)
    tie = torch.tensor([g.tie for g in groups], device=chosen_rewards.device)
    margins = chosen_rewards - rejected_rewards
    stats = {
        **extra,
        "rewards/chosen": chosen_rewards.sum().item(),
        "rewards/rejected": rejected_rewards.sum().item(),
        "rewards/margins": margins.sum().item(),
        "rewards/accuracies": ((margins > 0) & ~tie).float().sum().item(),  # over decided pairs (see `average`)
        "logps/chosen": logps[:, 0].sum().item(),
        "logps/rejected": logps[:, 1].sum().item(),
        "pairs/decided": (~tie).sum().item(),
    }
    if tie.any():  # a tie trains its two implicit rewards toward each other
        stats["rewards/tie_gaps"] = margins[tie].abs().sum().item()
        stats["pairs/ties"] = tie.sum().item()
    return per_pair.sum(), stats


def average(sums: dict[str, float], n_pairs: int, prefix: str = "") -> dict[str, float]:
    """Per-pair means of summed statistics: accuracies over decided pairs, tie gaps over ties, the rest over all."""
    sums = dict(sums)
    decided, ties = sums.pop("pairs/decided", n_pairs), sums.pop("pairs/ties", 0)
    per = {"rewards/accuracies": decided, "rewards/tie_gaps": ties}
    return {prefix + k: v / max(per.get(k, n_pairs), 1) for k, v in sums.items() if per.get(k, n_pairs)}


@torch.no_grad()
def reference_logps(
    ref, groups: list[Group], pad_id: int, shared_prompt: bool, batch_size: int, device
) -> torch.Tensor:
    """(2 * len(groups),) summed log-probs under the reference, chosen/rejected interleaved."""
    out = []
    for s in range(0, len(groups), batch_size):
        with torch.inference_mode():
            out.append(ref(collate_groups(groups[s : s + batch_size], pad_id, shared_prompt).to(device)).float())
    return torch.cat(out) if out else torch.zeros(0, device=device)  # cat outside inference mode: a plain tensor


def cached_reference_logps(
    run_dir, key: str, ref, train, held_out, pad_id, cfg, accelerator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs of the training and held-out pairs, computed once and cached in the run folder."""
    from safetensors.torch import load_file, save_file

    path = run_dir.path / "ref_logps.safetensors"
    if path.exists():
        from safetensors import SafetensorError, safe_open

        try:  # a cache: one that is cut short or does not fit these pairs is computed again, not an error
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    cached = load_file(str(path))
                    if cached["train"].shape == (2 * len(train),) and cached["eval"].shape == (2 * len(held_out),):
                        return cached["train"].to(accelerator.device), cached["eval"].to(accelerator.device)
        except (SafetensorError, OSError, KeyError):
            pass
    # Each process computes its share of the pairs once; every process then holds all of them, in order.
    train_ref, eval_ref = (
        common.gather_rows(
            accelerator,
            reference_logps(
                ref,
                [groups[i] for i in batching.shard_range(len(groups), accelerator)],
                pad_id,
                cfg.shared_prompt,
                cfg.batch_size,
                accelerator.device,
            ),
        )
        for groups in (train, held_out)
    )
    if accelerator.is_main_process:
        save_file(
            {"train": train_ref.cpu().contiguous(), "eval": eval_ref.cpu().contiguous()},
            str(path),
            metadata={"key": key},
        )
    return train_ref, eval_ref


class Reference:
    """pi_ref's summed log-probs of a batch of groups (two completions each), however ``cfg.reference`` obtains
    them: ``precomputed`` (computed here, by the model before any update, and cached in the run folder under a
    key of everything they depend on), ``copy`` (a frozen copy made here) or ``lora-off`` (the policy with its
    adapters off: set ``policy`` once it is prepared). ``reference(batch, indices, cache)`` -> (N,), where
    ``indices`` are the batch's positions in the split whose cache (``train_ref``, ``eval_ref``) is given."""

    def __init__(self, cfg, model, run_dir, train, held_out, pad_id, accelerator, key_extra: tuple = ()):
        self.cfg, self.pad_id, self.accelerator = cfg, pad_id, accelerator
        self.model = self.policy = None
        self.train_ref = self.eval_ref = None
        # A reference other than the starting model (DPOConfig.ref_model: iterative DPO starts from the last
        # round's policy and keeps SFT as the reference); 'lora-off' refuses one in the config.
        ref_model = getattr(cfg, "ref_model", None)

        def frozen():
            if ref_model is None:
                ref = copy.deepcopy(model)
            else:
                ref, _ = load_causal_lm(ref_model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)
            return CompletionLogProbs(ref).to(accelerator.device).eval().requires_grad_(False)

        if cfg.reference == "copy":
            self.model = frozen()
        if cfg.reference == "precomputed":  # the model before LoRA and before any update is the reference: no copy
            held_out_file = file_hash(cfg.eval_data) if cfg.eval_data else None  # its content, as the data's
            settings = (cfg.model, file_hash(cfg.data), held_out_file, cfg.eval_fraction, cfg.seed, cfg.max_length)
            settings += (cfg.shared_prompt, len(train), cfg.chat_template, cfg.dtype) + tuple(key_extra)
            settings += (ref_model,) if ref_model is not None else ()  # keys of runs without one are unchanged
            key = hashlib.sha256(repr(settings).encode()).hexdigest()[:16]
            was_training = model.training
            # The given reference is loaded for this pass only.
            ref = CompletionLogProbs(model.to(accelerator.device)).eval() if ref_model is None else frozen()
            with accelerator.autocast():  # the reference in the policy's precision: margins start at 0
                self.train_ref, self.eval_ref = cached_reference_logps(
                    run_dir, key, ref, train, held_out, pad_id, cfg, accelerator
                )
            model.train(was_training)

    def __call__(self, batch: list[Group], indices: list[int], cache: torch.Tensor | None) -> torch.Tensor:
        if cache is not None:
            return torch.stack([cache[2 * i : 2 * i + 2] for i in indices]).view(-1)
        packed = collate_groups(batch, self.pad_id, self.cfg.shared_prompt).to(self.accelerator.device)
        with torch.no_grad():
            if self.model is not None:
                return self.model(packed)
            policy = self.accelerator.unwrap_model(self.policy)
            with policy.model.disable_adapter():
                return policy(packed)


@torch.no_grad()
def evaluate(policy, ref_fn, groups, eval_ref, loss_fn, cfg, pad_id, accelerator) -> dict[str, float]:
    policy.eval()
    totals, loss_total = {}, 0.0
    for chunk in batching.eval_chunks(len(groups), accelerator, cfg.batch_size):
        indices = chunk or [0]  # an empty chunk only keeps this process in step with the others
        batch = [groups[i] for i in indices]
        with accelerator.autocast():
            ref = ref_fn(batch, indices, eval_ref)
            loss_sum, stats = dpo_step(policy, batch, ref, loss_fn, cfg, pad_id, accelerator.device)
        weight = 1.0 if chunk else 0.0
        loss_total += weight * loss_sum.item()
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + weight * v
    policy.train()
    # The same keys, in the same order, on every process (a process may see no tie).
    keys = ["loss"] + sorted(set(totals) | {"rewards/tie_gaps", "pairs/ties"})
    vec = accelerator.reduce(
        torch.tensor([loss_total] + [totals.get(k, 0.0) for k in keys[1:]], device=accelerator.device), "sum"
    )
    sums = dict(zip(keys, vec.tolist()))
    return average(sums, len(groups), "eval/")


def run(cfg: DPOConfig) -> Path:
    accelerator = common.make_accelerator(cfg)
    run_dir = common.open_run(cfg, accelerator)
    train_records, eval_records, invalid = load_train_eval(
        cfg.data, cfg.eval_data, cfg.eval_fraction, "comparison", skip_invalid=cfg.skip_invalid, seed=cfg.seed
    )
    train_records = check_pairs(cfg, train_records, cfg.data)
    eval_records = check_pairs(cfg, eval_records, cfg.eval_data or cfg.data)
    if not train_records:
        raise DataError(f"{cfg.data}: no pairs left once ties are dropped (--ties drop); train them as ties instead")
    model, tokenizer = load_causal_lm(cfg.model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)
    pad_id = tokenizer.pad_token_id
    tokenize = lambda records: tokenize_all(tokenizer, records, cfg.max_length)  # noqa: E731
    train = cached_tokens(tokenize, train_records, tokenizer, cfg.max_length, item_type=Group)
    held_out = cached_tokens(tokenize, eval_records, tokenizer, cfg.max_length, item_type=Group)
    loss_fn = make_loss_fn(cfg, with_ties=any(g.tie for g in train + held_out))
    monitor = monitor_ref = None
    if cfg.monitor:  # built before the folder exists: a bad monitor setting leaves nothing behind
        if cfg.monitor_data:
            check_prompts = read_prompts(cfg.monitor_data, cfg.skip_invalid)
        else:  # the held-out pairs' prompts, each once
            check_prompts = list({repr(r.prompt): r.prompt for r in eval_records}.values())
        monitor = PolicyMonitor(cfg, run_dir, None, check_prompts, device=accelerator.device)
        if cfg.reference == "precomputed":  # KL needs the start's log-probs of new samples: a frozen copy
            start = copy.deepcopy(model) if cfg.ref_model is None else load_causal_lm(
                cfg.ref_model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)[0]  # KL to pi_ref  # fmt: skip
            monitor_ref = start.to(accelerator.device).eval().requires_grad_(False)
    parents = [parent_of("model", cfg.model), parent_of("reference", cfg.ref_model or cfg.model)]
    logger = common.start_run(run_dir, cfg, accelerator, parents, {"train": cfg.data, "eval": cfg.eval_data})
    run_dir.write_invalid_rows(invalid)

    reference = Reference(cfg, model, run_dir, train, held_out, pad_id, accelerator)
    if cfg.lora:
        model = add_lora(model, cfg)
    policy = CompletionLogProbs(model)

    micro_batch = batching.cpu_micro_batch(model, [len(g) for g in train])
    batching.check_global_batch(accelerator, cfg.batch_size, cfg.grad_accum, micro_batch=micro_batch)
    n_steps = common.total_steps(cfg, len(train))
    optimizer = common.make_optimizer(policy, cfg)
    scheduler = common.make_scheduler(optimizer, cfg, n_steps)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    reference.policy = policy
    ref_fn, train_ref, eval_ref = reference, reference.train_ref, reference.eval_ref

    state = common.resume(run_dir, accelerator, cfg.resume, common.TrainerState())
    batches = batching.global_batches([len(g) for g in train], cfg.batch_size, cfg.seed, start=state.step)
    sampling = check_sampling(cfg)

    def monitor_check() -> None:
        """The monitor's check of the current policy: its samples, KL to the start, held-out accuracy. Collective:
        every process samples the same check prompts (a sharded policy gathered, as PPO's rollouts) and runs its
        share of the held-out evaluation, and all take part in saving; only the main process writes."""
        from rlhfkit.rollout_forward import response_forward

        owner = accelerator.unwrap_model(policy)
        lm = owner.model

        def reference_logprobs(rollout):
            if monitor_ref is not None:
                return response_forward(monitor_ref, rollout, sampling.temperature)["logprobs"]
            if reference.model is not None:  # reference "copy"
                return response_forward(reference.model.model, rollout, sampling.temperature)["logprobs"]
            with lm.disable_adapter():
                return response_forward(lm, rollout, sampling.temperature)["logprobs"]

        samples = monitor.sample(lm, tokenizer, sampling, reference_logprobs, seed=cfg.seed, weights_owner=owner)
        accuracy = None
        if held_out:
            scores = evaluate(policy, ref_fn, held_out, eval_ref, loss_fn, cfg, pad_id, accelerator)
            accuracy = scores.get("eval/rewards/accuracies")  # absent when every held-out pair is a tie
        save = lambda path: common.save_final_model(  # noqa: E731
            accelerator, lm, tokenizer, path, merge_lora=cfg.merge_lora
        )
        monitor.check(monitor.measure(samples, state.step, heldout_accuracy=accuracy), samples, save)

    if monitor is not None:
        monitor.logger = logger
        monitor.resume(state.step)
    if held_out and state.step == 0:
        logger.log(0, evaluate(policy, ref_fn, held_out, eval_ref, loss_fn, cfg, pad_id, accelerator))
    progress = Progress(n_steps, "dpo", cfg.progress and accelerator.is_main_process, completed=state.step)
    policy.train()
    window, n_pairs, start = {}, 0, time.perf_counter()
    with common.checkpoint_on_interrupt(run_dir, accelerator, state, cfg.keep_checkpoints, progress, logger) as stop:
        while state.step < n_steps:
            if monitor is not None and monitor.due(state.step):
                monitor_check()
                if monitor.stop:
                    break
            global_batch = next(batches)
            micro = batching.split_micro(global_batch, accelerator, cfg.grad_accum, micro_batch)
            for i, indices in enumerate(micro):
                groups = [train[j] for j in indices]
                with accelerator.no_sync(policy) if i < len(micro) - 1 else nullcontext():
                    with accelerator.autocast():
                        ref = ref_fn(groups, indices, train_ref)
                        loss_sum, stats = dpo_step(policy, groups, ref, loss_fn, cfg, pad_id, accelerator.device)
                    # Mean over the global batch, whatever the split into micro-batches and processes.
                    accelerator.backward(loss_sum * accelerator.num_processes / len(global_batch))
                stats["loss"] = loss_sum.item()
                for k, v in stats.items():
                    window[k] = window.get(k, 0.0) + v
                n_pairs += len(groups)
            grad_norm = common.optimizer_step(accelerator, policy, optimizer, scheduler, cfg.max_grad_norm)
            state.step += 1
            progress.update(info=f"loss {window['loss'] / max(n_pairs, 1):.3f}")
            if state.step % cfg.log_every == 0 or state.step == n_steps:
                # Sums over all processes, the same keys on each (a process may have seen no tie), divided once.
                totals = common.global_sums(
                    accelerator, {"rewards/tie_gaps": 0.0, "pairs/ties": 0.0, **window, "pairs": n_pairs}
                )
                pairs = int(totals.pop("pairs"))
                metrics = {("train/loss" if k == "loss" else k): v for k, v in average(totals, pairs).items()}
                metrics["train/lr"] = scheduler.get_last_lr()[0]
                metrics["train/pairs_per_s"] = pairs / (time.perf_counter() - start)
                if grad_norm is not None:
                    metrics["train/grad_norm"] = grad_norm
                logger.log(state.step, metrics)
                window, n_pairs, start = {}, 0, time.perf_counter()
            if cfg.eval_every and state.step % cfg.eval_every == 0 and held_out:
                logger.log(state.step, evaluate(policy, ref_fn, held_out, eval_ref, loss_fn, cfg, pad_id, accelerator))
            if cfg.save_every and state.step % cfg.save_every == 0:
                common.save_checkpoint(run_dir, accelerator, state, cfg.keep_checkpoints)
            stop.at_step_end()  # where a Ctrl-C stops: a checkpoint here resumes the same run
        if monitor is not None and not monitor.stop and monitor.due(state.step):
            monitor_check()  # the last step's policy
    progress.close()
    final_eval = evaluate(policy, ref_fn, held_out, eval_ref, loss_fn, cfg, pad_id, accelerator) if held_out else {}
    logger.log(state.step, final_eval)
    logger.close()
    common.save_final_model(
        accelerator, accelerator.unwrap_model(policy).model, tokenizer, run_dir.final, merge_lora=cfg.merge_lora
    )
    if monitor is not None:
        monitor.keep_best(run_dir.final)  # after a stop, the best check's policy is the run's model
    run_dir.finish(
        {
            "steps": state.step,
            "eval_loss": final_eval.get("eval/loss"),
            "eval_accuracy": final_eval.get("eval/rewards/accuracies"),
            "eval_margin": final_eval.get("eval/rewards/margins"),
            "eval_chosen_reward": final_eval.get("eval/rewards/chosen"),
            "eval_rejected_reward": final_eval.get("eval/rewards/rejected"),
            "monitor": monitor.figures() if monitor is not None else None,
        }
    )
    accelerator.wait_for_everyone()
    return run_dir.path
