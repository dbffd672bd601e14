"""Reports on a trained reward model, from its held-out data: each annotator's accuracy and agreement
(``rm train --per-annotator-report``), the hidden-context statistic of a mean-variance model, an ensemble's
accuracy and disagreement.

Per annotator (one row each, for every annotator with held-out labels):
- ``labels``: their decided held-out labels (non-tie comparisons, ordered pairs of rankings, ratings as pairs by
  ``rlhfkit.data.convert``'s rule);
- ``accuracy``: the share the reward model orders the same way, scored as that annotator (an annotator-conditioned
  model; ``conditioned`` says whether it knew them) or pooled;
- ``pooled_accuracy`` (conditioned models): the same labels scored by the pooled head, so the gain of conditioning
  is ``accuracy - pooled_accuracy``;
- ``agreement``: over every pair of the data (training and held-out) that they and someone else both labelled, the
  share of (their label, another's label) that match; ``agreement_pairs`` counts those; none without overlap.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from rlhfkit.data.records import Comparison, Ranking, Text
from rlhfkit.losses import hidden_context_r2
from rlhfkit.models.reward import RewardEnsemble, RewardModel
from rlhfkit.models.reward_scoring import score_distribution, score_ensemble, score_texts
from rlhfkit.train.reward_data import labelled_pairs


def _key(text: Text):
    return text if isinstance(text, str) else tuple((m.role, m.content) for m in text)


def annotator_agreement(records: list) -> dict[str, tuple[int, int]]:
    """{annotator: (matching, compared)}: each of their decided labels against every other annotator's decided
    label of the same pair (same prompt, same two responses, either order)."""
    labels: dict[tuple, list[tuple[str, object]]] = defaultdict(list)  # pair -> [(annotator, winner)]
    for annotator, prompt, better, worse in labelled_pairs(records):
        if annotator is not None:
            pair = (_key(prompt), frozenset((_key(better), _key(worse))))
            labels[pair].append((annotator, _key(better)))
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for votes in labels.values():
        for who, winner in votes:
            for other, other_winner in votes:
                if other != who:
                    counts[who][0] += winner == other_winner
                    counts[who][1] += 1
    return {who: (match, total) for who, (match, total) in counts.items()}


def _accuracy(model, prompts, better, worse, annotator, batch_size, max_length) -> float:
    scores = score_texts(model, prompts + prompts, better + worse, batch_size, max_length, annotator)
    n = len(prompts)
    return (scores[:n] > scores[n:]).float().mean().item()


@torch.no_grad()
def per_annotator_report(
    model: RewardModel | RewardEnsemble, held_out: list, everything: list, batch_size: int, max_length: int
) -> list[dict]:
    """One row per annotator with held-out labels (see the module docstring), sorted by name."""
    by_annotator: dict[str, list[tuple]] = defaultdict(list)
    for annotator, prompt, better, worse in labelled_pairs(held_out):
        if annotator is not None:
            by_annotator[annotator].append((prompt, better, worse))
    agreement = annotator_agreement(everything)
    conditioned = bool(model.annotators)
    rows = []
    for name in sorted(by_annotator):
        prompts, better, worse = (list(x) for x in zip(*by_annotator[name]))
        known = name in model.annotators
        row = {"annotator": name, "labels": len(prompts)}
        row["accuracy"] = _accuracy(model, prompts, better, worse, name if known else None, batch_size, max_length)
        if conditioned:
            row["conditioned"] = known
            row["pooled_accuracy"] = _accuracy(model, prompts, better, worse, None, batch_size, max_length)
        match, total = agreement.get(name, (0, 0))
        row["agreement"] = match / total if total else None
        row["agreement_pairs"] = total
        rows.append(row)
    return rows


def print_per_annotator(rows: list[dict], path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"per annotator, held-out ({path})", title_justify="left")
    conditioned = any("pooled_accuracy" in r for r in rows)
    columns = ["annotator", "labels", "accuracy"] + (["pooled head", "gain"] if conditioned else []) + ["agreement"]
    for col in columns:
        table.add_column(col, no_wrap=True)
    for r in rows:
        cells = [r["annotator"] + ("" if r.get("conditioned", True) else " (unknown: pooled)"), str(r["labels"])]
        cells.append(f"{r['accuracy']:.3f}")
        if conditioned:
            cells += [f"{r['pooled_accuracy']:.3f}", f"{100 * (r['accuracy'] - r['pooled_accuracy']):+.1f} pt"]
        agreement = r["agreement"]
        cells.append(f"{agreement:.3f} ({r['agreement_pairs']})" if agreement is not None else "- (no overlap)")
        table.add_row(*cells)
    Console().print(table)


@torch.no_grad()
def hidden_context(
    model: RewardModel | RewardEnsemble, records: list, batch_size: int, max_length: int
) -> float | None:
    """DPL's hidden-context statistic r^2 (``rlhfkit.losses.hidden_context_r2``) over the distinct responses of
    ``records`` (both sides of each comparison); for an ensemble the mean over its members. None without a
    variance head or responses."""
    if not model.variance:
        return None
    seen, prompts, responses = set(), [], []
    for r in records:
        for response in [r.chosen, r.rejected] if isinstance(r, Comparison) else []:
            key = (_key(r.prompt), _key(response))
            if key not in seen:
                seen.add(key)
                prompts.append(r.prompt)
                responses.append(response)
    if len(responses) < 2:
        return None
    members = model.members if isinstance(model, RewardEnsemble) else [model]
    values = []
    for member in members:
        mean, var = score_distribution(member, prompts, responses, batch_size, max_length)
        values.append(hidden_context_r2(mean, var).item())
    return sum(values) / len(values)


@torch.no_grad()
def ensemble_figures(ens: RewardEnsemble, records: list, batch_size: int, max_length: int) -> dict[str, float]:
    """Held-out accuracy of the ensemble mean and the mean disagreement (std across members)."""
    pairs = [(p, b, w) for _, p, b, w in labelled_pairs([r for r in records if not isinstance(r, Ranking)])]
    if not pairs:
        return {}
    prompts = [p for p, _, _ in pairs] * 2
    responses = [b for _, b, _ in pairs] + [w for _, _, w in pairs]
    mean, std = score_ensemble(ens, prompts, responses, batch_size, max_length)
    n = len(pairs)
    return {
        "eval/ensemble_accuracy": (mean[:n] > mean[n:]).float().mean().item(),
        "eval/disagreement": std.mean().item(),
    }
