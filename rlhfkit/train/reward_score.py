"""``rlhfkit rm score``: every row of a file scored by any reward (a run folder, an ensemble, a function, an
HTTP endpoint), written back with its score and, where the reward has a spread, its standard deviation."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit import losses
from rlhfkit.config.stages import ScoreConfig
from rlhfkit.data.io import read_jsonl, read_records, write_jsonl
from rlhfkit.runs import Progress


def score_file(cfg: ScoreConfig) -> Path:
    """Score every row of ``cfg.data`` with any reward; each output row is the input row plus 'score' (the
    ensemble's mean, or the ``reward_transform`` asked for) and, for an ensemble or a mean-variance model,
    'score_std' (the spread of its members, and each member's own spread: the mixture's std)."""
    from rlhfkit.rewards import load_reward

    records = read_records(cfg.data, "response")[0]
    rows = read_jsonl(cfg.data)  # the same rows as they were written, to be echoed back with their scores
    device = "cuda" if torch.cuda.is_available() else None
    reward = load_reward(cfg.reward, cfg.batch_size, device, transform=cfg.reward_transform)
    prompts, responses = [r.prompt for r in records], [r.response for r in records]
    piece = cfg.batch_size * 8  # rows between progress updates
    progress = Progress(len(rows), "rm score", cfg.progress)
    means, variances = [], []
    for s in range(0, len(rows), piece):
        m, v = reward.distribution(prompts[s : s + piece], responses[s : s + piece])  # (E, n) each
        means.append(m)
        variances.append(v)
        progress.update(m.size(1))
    progress.close()
    means, variances = torch.cat(means, dim=1), torch.cat(variances, dim=1)  # (E, N)
    spread = means.size(0) > 1 or bool((variances > 0).any())
    scores = reward.combine(means, variances)  # the transform on the members already scored, not a second pass
    std = losses.mixture_moments(means, variances)[1].sqrt()
    out = Path(cfg.output) if cfg.output else Path(cfg.data).with_suffix(".scores.jsonl")
    scored = []
    for row, score, sd in zip(rows, scores.tolist(), std.tolist()):
        scored.append({**row, "score": score, **({"score_std": sd} if spread else {})})
    write_jsonl(out, scored)
    print(
        f"scored {len(scored)} rows with {cfg.reward}: mean {scores.mean().item():.4g}, sd "
        f"{scores.std().item() if len(scored) > 1 else 0.0:.4g}, min {scores.min().item():.4g}, max "
        f"{scores.max().item():.4g}" + (f"; mean member spread {std.mean().item():.4g}" if spread else ""),
        flush=True,
    )
    return out
