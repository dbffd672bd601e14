"""A reward model's report card from labelled data: pairwise accuracy, calibration (ECE and a reliability plot),
accuracy by length-difference bucket, and best-of-4 accuracy in RewardBench 2's format (one chosen response among
three rejected; chance 25%). The statistics are ``rlhfkit.evaluate.reward_model_metrics``'s; this module scores the
data with any reward and writes the plots.

    report, plots = reward_model_report(reward, "pairs.jsonl", "best_of_4.jsonl", plot_dir=Path("runs/eval-1"))

Comparisons are any comparison file (ties are left out: a tie says neither is better). A best-of-4 set is rows of
``prompt``, ``chosen`` (a response, or RewardBench 2's list holding one) and ``rejected`` (a list of the others),
or rankings (``completions`` and ``ranking``: the first ranked is the chosen one).
"""

from __future__ import annotations

from pathlib import Path

from rlhfkit.data.io import DataError, read_jsonl, read_records
from rlhfkit.data.records import flat_text, from_json
from rlhfkit.evaluate import reward_model_metrics as rmm
from rlhfkit.evaluate.schema import LengthRow, ReliabilityRow, RewardModelReport


def read_best_of_k(path: str | Path) -> list[tuple[object, object, list]]:
    """(prompt, chosen, [rejected, ...]) per row; every row needs the same number of rejected responses."""
    rows = read_jsonl(path)
    out = []
    for i, row in enumerate(rows, start=1):
        where = f"{path}:{i}"
        if not isinstance(row, dict) or "prompt" not in row:
            raise DataError(f"{where}: field 'prompt': missing")
        if "completions" in row and "ranking" in row:
            completions, ranking = row["completions"], row["ranking"]
            if not isinstance(completions, list) or not isinstance(ranking, list) or len(ranking) < 2:
                raise DataError(f"{where}: fields 'completions', 'ranking': two lists, the ranking of two or more")
            if any(not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(completions) for k in ranking):
                raise DataError(f"{where}: field 'ranking': indices of 'completions' (0 to {len(completions) - 1})")
            ranked = [completions[k] for k in ranking]
            chosen, rejected = ranked[0], ranked[1:]
        else:
            chosen, rejected = row.get("chosen"), row.get("rejected")
            if isinstance(chosen, list) and len(chosen) == 1 and not isinstance(chosen[0], dict):
                chosen = chosen[0]  # RewardBench 2 keeps the one chosen response in a list
            if chosen is None or not isinstance(rejected, list) or not rejected:
                raise DataError(
                    f"{where}: field 'rejected': a list of rejected responses beside one 'chosen' is needed"
                )
        texts = {"prompt": row["prompt"], "chosen": chosen, **{f"rejected.{k}": r for k, r in enumerate(rejected)}}
        for field, text in texts.items():
            if not (isinstance(text, str) or (isinstance(text, list) and all(isinstance(m, dict) for m in text))):
                raise DataError(f"{where}: field '{field}': must be a string or a list of {{role, content}} messages")
        out.append((from_json(row["prompt"]), from_json(chosen), [from_json(r) for r in rejected]))
    if not out:
        raise DataError(f"{path}: no rows")
    if len({len(r) for _, _, r in out}) > 1:
        raise DataError(f"{path}: every row needs the same number of rejected responses")
    return out


def reward_model_report(
    reward, comparisons: str | None, best_of_k: str | None = None, plot_dir: Path | None = None, tag: str = "rm"
) -> tuple[RewardModelReport, list[Path]]:
    """The report card of ``reward`` (anything with ``reward(prompts, responses) -> (N,)``) and its plot files."""
    spec = getattr(reward, "spec", "reward")
    spec = getattr(spec, "text", spec)
    out: dict = {"judge": str(spec), "pairs": 0}
    plots: list[Path] = []
    pairs = [r for r in read_records(comparisons, "comparison")[0] if not r.tie] if comparisons else []
    if pairs:  # every comparison a tie: nothing to be right or wrong about
        prompts = [r.prompt for r in pairs]
        both = reward(prompts + prompts, [r.chosen for r in pairs] + [r.rejected for r in pairs]).tolist()
        chosen, rejected = both[: len(pairs)], both[len(pairs) :]
        bins = rmm.reliability_bins(chosen, rejected)
        chosen_len = [len(flat_text(r.chosen)) for r in pairs]
        rejected_len = [len(flat_text(r.rejected)) for r in pairs]
        out |= {
            "pairs": len(pairs),
            "pairwise_accuracy": rmm.pairwise_accuracy(chosen, rejected),
            "ece": rmm.expected_calibration_error(chosen, rejected),
            "reliability": [ReliabilityRow(**vars(b)) for b in bins],
            "by_length": [
                LengthRow(**vars(b)) for b in rmm.accuracy_by_length(chosen, rejected, chosen_len, rejected_len)
            ],
        }
        if plot_dir is not None:
            plots.append(rmm.plot_reliability(bins, plot_dir / f"reliability_{tag}.png", f"calibration: {spec}"[:80]))
    if best_of_k:
        items = read_best_of_k(best_of_k)
        k = 1 + len(items[0][2])
        prompts = [p for p, _, rejected in items for _ in range(k)]
        texts = [t for _, chosen, rejected in items for t in [chosen, *rejected]]
        scores = reward(prompts, texts).view(len(items), k)  # (n, k): the chosen one first
        out |= {
            "best_of_4_accuracy": rmm.best_of_k_accuracy(scores[:, 0].tolist(), scores[:, 1:].tolist()),
            "best_of_4_items": len(items),
        }
    return RewardModelReport(**out), plots
