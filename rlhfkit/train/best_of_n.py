"""Best-of-N sampling with a reward: N samples per prompt, keep the one the reward likes best.

    rlhfkit bon --model runs/sft-1 --data prompts.jsonl --reward runs/rm-1 --n-max 16 --max-prompts 64
    rlhfkit bon --model tiny --data toy --reward rlhfkit.toy.rewards:count_the --n-max 8

Writes into the run folder: ``samples.jsonl`` (every prompt's n_max responses, their scores and whether each
ended, appended batch by batch: an interrupted run resumes after its last finished batch and ends with the files
an uninterrupted run writes), ``chosen.jsonl`` (prompt, best of n_max response, its score: ready as SFT
demonstrations), ``curve.json`` / ``curve.csv`` / ``curve.png``: for N = 1, 2, 4, ..., n_max the expected
reward of the best of N (mean over prompts) against the analytic KL of best-of-N to the sampling policy,
log N - (N - 1) / N (Stiennon et al. 2020, appendix; Gao et al. 2022, "Scaling laws for reward model
overoptimization").

The curve uses all n_max samples per prompt: the expected maximum over a random N-subset of them
(an unbiased estimator, as in Nakano et al. 2021, WebGPT) instead of the first N only, so it is smooth.

With several processes each samples and scores a contiguous share of the prompts; sample j of prompt i draws
the noise of row i * n + j whichever process it falls on, so the files are those of one process.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch

from rlhfkit.config.stages import BestOfNConfig
from rlhfkit.data.io import DataError, read_resume_rows, resume_writer, write_jsonl
from rlhfkit.data.prompts import load_prompts
from rlhfkit.data.records import to_json
from rlhfkit.evaluate.monitor import Check, is_degenerate
from rlhfkit.losses import best_of_n_kl, ensemble_spread
from rlhfkit.models.load import load_causal_lm
from rlhfkit.rewards import load_reward
from rlhfkit.rollout import RowSeeds
from rlhfkit.runs import Progress, parent_of
from rlhfkit.samplers import make_sampler
from rlhfkit.train import batching, common
from rlhfkit.train.monitoring import PolicyMonitor


def expected_best_of_n(scores: torch.Tensor, n: int, values: torch.Tensor | None = None) -> torch.Tensor:
    """E[max of a uniformly random n-subset] of each row of ``scores`` (P, M), without replacement:
    with the row sorted ascending, sum_i C(i - 1, n - 1) / C(M, n) * s_(i), i = 1..M. -> (P,).
    With ``values`` (P, M): the expected value of the sample that the best of n picks (the same weights on the
    values in the order of the scores), e.g. a second reward model's score of best-of-n's choice."""
    M = scores.size(-1)
    if not 1 <= n <= M:
        raise ValueError(f"best of {n} needs 1 <= n <= {M} samples")
    order = scores.argsort(dim=-1, stable=True)
    ranked = (scores if values is None else values).gather(-1, order)
    weights = torch.tensor(
        [math.comb(i - 1, n - 1) / math.comb(M, n) for i in range(1, M + 1)], dtype=ranked.dtype, device=ranked.device
    )
    return ranked @ weights


def sample_and_score(
    sampler,
    reward_fn,
    prompts: list,
    n: int,
    batch_size: int,
    seed: int,
    missing_eos_penalty: float | None = None,
    accelerator=None,
    first: int = 0,
):
    """``n`` samples of every prompt -> (texts [P][n], scores (P, n), ended (P, n)), on every process. With an
    ``accelerator`` each process samples and scores a contiguous share of the prompts, gathered back in order.
    ``prompts`` are the data's from index ``first`` on: prompt i's samples draw the noise of rows (first + i) * n..,
    so a run sampled in pieces draws what one pass would."""
    share = batching.shard_range(len(prompts), accelerator) if accelerator is not None else range(len(prompts))
    texts, scores, ended = [], [torch.zeros(0, n)], [torch.zeros(0, n, dtype=torch.bool)]
    for s in range(share.start, share.stop, batch_size):
        chunk = prompts[s : min(s + batch_size, share.stop)]
        rollout = sampler.generate(chunk, n=n, rows=RowSeeds(seed, first_row=(first + s) * n))
        batch_scores = reward_fn(rollout.prompts, rollout.texts).float().cpu()
        done = rollout.ended.cpu()
        if missing_eos_penalty is not None:
            batch_scores = torch.where(done, batch_scores, torch.full_like(batch_scores, missing_eos_penalty))
        texts += [rollout.texts[i : i + n] for i in range(0, len(rollout.texts), n)]
        scores.append(batch_scores.view(-1, n))
        ended.append(done.view(-1, n))
    scores, ended = torch.cat(scores), torch.cat(ended)
    if accelerator is not None and accelerator.num_processes > 1:
        texts = common.gather_objects(accelerator, texts)
        scores = common.gather_rows(accelerator, scores.to(accelerator.device)).cpu()
        ended = common.gather_rows(accelerator, ended.long().to(accelerator.device)).cpu().bool()
    return texts, scores, ended


SAMPLES_FIELDS = ("i", "responses", "scores", "ended")


def read_samples(path: Path, n: int, n_prompts: int) -> list[dict]:
    """The rows of ``samples.jsonl`` an interrupted run finished: prompt 0, 1, ... with ``n`` samples each."""
    rows = read_resume_rows(path, SAMPLES_FIELDS)
    if len(rows) > n_prompts:
        raise DataError(f"{path}: {len(rows)} rows for {n_prompts} prompts; move the file aside to sample again")
    for k, row in enumerate(rows):
        if row["i"] != k or any(not isinstance(row[f], list) or len(row[f]) != n for f in SAMPLES_FIELDS[1:]):
            raise DataError(f"{path}: row {k + 1} is not prompt {k}'s {n} samples; move the file aside to sample again")
    return rows


def sample_to_file(path: Path, prompts: list, n: int, piece: int, sample, accelerator, *, resume: bool, progress):
    """Every prompt's ``n`` samples, ``piece`` prompts at a time by ``sample(prompts, first) -> (texts, scores, ended)``
    (``sample_and_score`` of the prompts from index ``first`` on), each finished piece appended to ``path`` (one row
    per prompt: its responses, scores and ends); with ``resume`` the prompts the file already holds are not sampled
    again. ``progress``: the progress bar's title, None for no bar."""
    rows = read_samples(path, n, len(prompts)) if resume and path.exists() else []
    accelerator.wait_for_everyone()  # every process has read the file before the main one rewrites it
    bar = Progress(len(prompts), progress or "", bool(progress) and accelerator.is_main_process, completed=len(rows))
    out = resume_writer(path, rows) if accelerator.is_main_process else None
    for s in range(len(rows), len(prompts), piece):
        texts, scores, ended = sample(prompts[s : s + piece], s)
        new = [
            {"i": s + k, "responses": texts[k], "scores": scores[k].tolist(), "ended": ended[k].tolist()}
            for k in range(len(texts))
        ]
        if out is not None:
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in new)
            out.flush()
        rows += new
        bar.update(len(new))
    bar.close()
    if out is not None:
        out.close()
    scores = torch.tensor([r["scores"] for r in rows], dtype=torch.float32).view(-1, n)
    ended = torch.tensor([r["ended"] for r in rows], dtype=torch.bool).view(-1, n)
    return [r["responses"] for r in rows], scores, ended


def monitor_best_of_n(
    monitor: PolicyMonitor, prompts: list, texts: list, scores: torch.Tensor, tokenizer
) -> tuple[int, torch.Tensor | None]:
    """The monitor's checks of best-of-N for N = 1 .. n_max, each the expectation over random N-subsets of the samples
    (smooth, as the curve): the training reward of the choice, a second reward's score of it, the ensemble's
    disagreement on it, its length, whether it loops, and KL = log N - (N - 1) / N. Returns the N to keep (n_max, or the best check's
    N when the monitor stops the run) and, when the alarm switches the reward (``monitor_switch_to``), every sample's
    score by the switched transform (P, M). Every sample is written to monitor/samples.jsonl with its score, so the
    choice at any N can be judged afterwards."""
    P, M = scores.shape
    flat_prompts = [p for p in prompts for _ in range(M)]
    flat_texts = [t for group in texts for t in group]
    second = monitor.second(flat_prompts, flat_texts).view(P, M) if monitor.second is not None else None
    training_members, training_variances = monitor.training_reward.distribution(flat_prompts, flat_texts)  # (E, P * M)
    members = monitor.ensemble.members(flat_prompts, flat_texts) if monitor.ensemble else training_members
    spread = ensemble_spread(members).view(P, M) if members.size(0) > 1 else None
    token_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in flat_texts]
    lengths = torch.tensor([len(ids) for ids in token_ids]).view(P, M)
    degenerate = torch.tensor([is_degenerate(ids) for ids in token_ids]).view(P, M)
    if monitor.is_main:
        monitor.folder.mkdir(parents=True, exist_ok=True)
        rows = [
            {"prompt": to_json(p), "sample": j, "response": texts[i][j], "score": scores[i, j].item()}
            for i, p in enumerate(prompts)
            for j in range(M)
        ]
        write_jsonl(monitor.folder / "samples.jsonl", rows)

    def pick(values, n: int) -> float | None:
        return None if values is None else expected_best_of_n(scores, n, values.float()).mean().item()

    for n in range(1, M + 1):
        check = Check(
            step=n,
            kl=best_of_n_kl(n),
            proxy_reward=pick(scores, n),
            second_rm_reward=pick(second, n),
            ensemble_std=pick(spread, n),
            mean_length=pick(lengths, n),
            degenerate_share=pick(degenerate, n),
        )
        status = monitor.check(check)
        if status.alarm and monitor.cfg.monitor_switch_to:
            monitor.switched_at = n
            monitor.training_reward.transform = monitor.cfg.monitor_switch_to  # combine refuses a reward without spread
            return M, monitor.training_reward.combine(training_members, training_variances).view(P, M)
        if monitor.stop:
            return monitor.monitor.best_step, None
    return M, None


def plot_curve(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["kl_bound"] for r in rows], [r["reward"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(
            f"N={r['n']}", (r["kl_bound"], r["reward"]), textcoords="offset points", xytext=(4, -10), fontsize=7
        )
    ax.set_xlabel("KL(best-of-N || policy) = log N - (N-1)/N  [nats]")
    ax.set_ylabel("mean reward of the best of N")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: BestOfNConfig) -> Path:
    accelerator = common.make_accelerator(cfg)
    run_dir = common.open_run(cfg, accelerator)
    prompts = load_prompts(cfg.data, cfg.eval_data, 0.0, cfg.seed, cfg.skip_invalid)[0][: cfg.max_prompts]
    reward_fn = load_reward(cfg.reward, cfg.reward_batch_size, accelerator.device, transform=cfg.reward_transform)
    model, tokenizer = load_causal_lm(cfg.model, common.training_dtype(cfg), cfg.chat_template, seed=cfg.seed)
    model.to(accelerator.device).eval()
    monitor = PolicyMonitor(cfg, run_dir, None, prompts, training_reward=reward_fn) if cfg.monitor else None
    parents = [parent_of("model", cfg.model), parent_of("reward", cfg.reward)]
    logger = common.start_run(run_dir, cfg, accelerator, parents, {"prompts": cfg.data})
    sampler = make_sampler(model, tokenizer, cfg.sampling(), model_spec=cfg.model)

    def sample(chunk: list, first: int):  # prompts from index `first` on
        return sample_and_score(
            sampler, reward_fn, chunk, cfg.n_max, cfg.batch_size, cfg.seed, cfg.missing_eos_penalty, accelerator,
            first=first,
        )  # fmt: skip

    piece = cfg.batch_size * accelerator.num_processes  # a batch on every process: one resume point
    # scores (P, n_max), on every process
    texts, scores, ended = sample_to_file(
        run_dir.path / "samples.jsonl", prompts, cfg.n_max, piece, sample, accelerator, resume=cfg.resume,
        progress="bon" if cfg.progress else None,
    )  # fmt: skip
    kept_n = cfg.n_max
    if monitor is not None:  # every process holds all samples: each makes the same checks, the main one writes
        monitor.logger = logger
        kept_n, switched = monitor_best_of_n(monitor, prompts, texts, scores, tokenizer)
        if switched is not None:  # the alarm switched the choice to the penalised ensemble reward, over all samples
            penalty = cfg.missing_eos_penalty
            scores = switched if penalty is None else torch.where(ended, switched, torch.full_like(switched, penalty))

    rows = []
    # N = 1, 2, 4, ... and n_max itself, the N that chosen.jsonl holds (doubling alone missed an n_max of 12)
    ns = sorted({2**k for k in range(cfg.n_max.bit_length()) if 2**k <= cfg.n_max} | {cfg.n_max})
    for n in ns:
        rows.append({"n": n, "reward": expected_best_of_n(scores, n).mean().item(), "kl_bound": best_of_n_kl(n)})
        logger.log(n, {"bon/reward": rows[-1]["reward"], "bon/kl_bound": rows[-1]["kl_bound"]})
    best = scores[:, :kept_n].argmax(-1)  # (P,) the first kept_n samples: n_max unless the monitor stopped earlier
    chosen = [
        {
            "prompt": to_json(p),
            "completion": texts[i][best[i]],
            "score": scores[i, best[i]].item(),
            "n": kept_n,
            "ended": bool(ended[i, best[i]]),
        }
        for i, p in enumerate(prompts)
    ]
    if accelerator.is_main_process:
        write_jsonl(run_dir.path / "chosen.jsonl", chosen)
        (run_dir.path / "curve.json").write_text(json.dumps(rows, indent=2))
        with (run_dir.path / "curve.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["n", "reward", "kl_bound"])
            writer.writeheader()
            writer.writerows(rows)
        plot_curve(rows, run_dir.path / "curve.png", f"best-of-N, {len(prompts)} prompts")
    logger.close()
    run_dir.finish(
        {
            "prompts": len(prompts),
            "n_max": cfg.n_max,
            "best_reward": scores.max(-1).values.mean().item(),
            "mean_reward": scores.mean().item(),
            "kl_bound": best_of_n_kl(cfg.n_max),
            "curve": rows,
            "monitor": {**monitor.figures(), "kept_n": kept_n} if monitor is not None else None,
        }
    )
    accelerator.wait_for_everyone()
    return run_dir.path
