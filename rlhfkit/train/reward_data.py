"""What a reward model trains on, as groups of token ids: comparisons (ties, margins, soft labels), rankings, and
ratings (Likert or thumbs) read three ways, each group knowing its annotator.

Ratings (``rm train --data-kind rating``), by ``rating_loss``:
- ``ordinal``: the ordered logit on the rating itself (one scale for the whole file; thumbs are a scale of 2);
- ``regression``: squared error against (rating - 1) / (scale - 1), so scales may be mixed;
- ``pairs``: pairs by ``rlhfkit.data.convert.ratings_to_comparisons`` (within one prompt and one annotator; equal
  ratings dropped, or ties with ``rating_ties tie``), then trained as comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhfkit.config.stages import RewardConfig
from rlhfkit.data.convert import rating_points, ratings_to_comparisons
from rlhfkit.data.pairs import Group, tokenize_comparison, tokenize_group, tokenize_ranking
from rlhfkit.data.records import Comparison, Ranking, Rating, flat_text


@dataclass
class RewardData:
    """The records as the trainer sees them: ``kind`` is what the loss reads (ratings as pairs are comparisons)."""

    kind: str  # comparison | ranking | rating
    train: list
    held_out: list
    annotators: list[str] = field(default_factory=list)  # the conditioned head's annotators, in index order
    rating: dict | None = None  # {"loss": "ordinal" | "regression", "levels": K} for ratings trained as ratings
    dropped_ties: int = 0  # ties left out of a model that has no place for them (mean-variance)
    held_out_pairs: list = field(default_factory=list)  # ratings: held-out comparisons by the pairs rule, for accuracy
    train_pairs: list = field(default_factory=list)  # ratings: the training ones, for annotators' agreement

    def labelled(self) -> tuple[list, list]:
        """(held-out records, all records) that state preferences (ratings: as pairs), for accuracy and agreement."""
        if self.kind == "rating":
            return self.held_out_pairs, self.train_pairs + self.held_out_pairs
        return self.held_out, self.train + self.held_out


def prepare(cfg: RewardConfig, train_records: list, eval_records: list, source: str) -> RewardData:
    """Records -> what the loss reads, with the checks that need the whole file (one scale for the ordered logit,
    annotators present for a conditioned model). ``source`` names the data in error messages."""
    kind, rating, held_out_pairs, train_pairs, dropped = cfg.data_kind, None, [], [], 0
    if kind == "rating":
        if cfg.rating_loss == "pairs":
            train_records = ratings_to_comparisons(train_records, ties=cfg.rating_ties)
            eval_records = ratings_to_comparisons(eval_records, ties=cfg.rating_ties)
            kind = "comparison"
            if not train_records:
                raise ValueError(f"{source}: no two ratings of one prompt by one annotator differ, so no pairs")
        else:
            scales = sorted({rating_points(r)[1] for r in train_records + eval_records})
            if cfg.rating_loss == "ordinal" and len(scales) > 1:
                raise ValueError(
                    f"{source}: the ordered logit needs one rating scale, the data has {scales} (thumbs count as a "
                    "scale of 2); use --rating-loss regression, or split the file"
                )
            if cfg.rating_loss == "ordinal":
                for r in train_records + eval_records:
                    value = rating_points(r)[0]
                    if value != int(value):
                        raise ValueError(
                            f"{source}: a rating of {value} (prompt {flat_text(r.prompt)[:40]!r}): the ordered logit "
                            "takes whole levels 1..scale; use --rating-loss regression for ratings between levels"
                        )
            rating = {"loss": cfg.rating_loss, "levels": scales[-1]}
            held_out_pairs = ratings_to_comparisons(eval_records, ties="drop")
            train_pairs = ratings_to_comparisons(train_records, ties="drop")
    if cfg.head == "mean-variance":
        before = len(train_records) + len(eval_records)
        train_records = [r for r in train_records if not r.tie]
        eval_records = [r for r in eval_records if not r.tie]
        dropped = before - len(train_records) - len(eval_records)
    annotators = []
    if cfg.annotator_conditioned:
        annotators = sorted({r.annotator for r in train_records if r.annotator is not None})
        if not annotators:
            raise ValueError(
                f"{source}: --annotator-conditioned needs an 'annotator' field in the training data; none of its "
                "records has one"
            )
    return RewardData(kind, train_records, eval_records, annotators, rating, dropped, held_out_pairs, train_pairs)


def tokenize_record(rm, record, max_length: int, annotator: int = -1) -> Group:
    """One record's group (see ``Group``): causal trunks tokenise the prompt and completions apart (the prompt can
    be shared); encoders read one [CLS] prompt [SEP] completion [SEP] sequence per completion, prompt_ids empty."""
    if rm.kind == "encoder":
        from rlhfkit.models.reward_scoring import encode

        if isinstance(record, Comparison):
            completions = [record.chosen, record.rejected]
            extra = dict(tie=record.tie, margin=record.margin, chosen_prob=record.chosen_prob)
        elif isinstance(record, Ranking):
            completions, extra = list(record.completions), dict(ranking=list(record.ranking))
        else:
            completions, extra = [record.completion], _rating_fields(record)
        ids = [encode(rm, record.prompt, c, max_length) for c in completions]
        return Group([], ids, annotator=annotator, **extra)
    if isinstance(record, Comparison):
        group = tokenize_comparison(rm.tokenizer, record, max_length)
    elif isinstance(record, Ranking):
        group = tokenize_ranking(rm.tokenizer, record, max_length)
    else:
        group = tokenize_group(rm.tokenizer, record.prompt, [record.completion], max_length, **_rating_fields(record))
    group.annotator = annotator
    return group


def _rating_fields(record: Rating) -> dict:
    points, scale = rating_points(record)
    return dict(rating=float(points), scale=scale, label=record.label)


def tokenize_all(rm, records: list, max_length: int, annotators: list[str] | None = None) -> list[Group]:
    """Groups of every record; with ``annotators`` each group carries its annotator's index (-1: not among them)."""
    index = {name: i for i, name in enumerate(annotators or [])}
    return [tokenize_record(rm, r, max_length, index.get(getattr(r, "annotator", None), -1)) for r in records]


def labelled_pairs(records: list) -> list[tuple[str | None, object, object, object]]:
    """(annotator, prompt, better, worse) for every decided pair the records state: a non-tie comparison (its soft
    label's likelier side as the better), every ordered pair of a ranking. For per-annotator accuracy."""
    out = []
    for r in records:
        if isinstance(r, Comparison):
            if r.tie or r.chosen_prob == 0.5:
                continue
            better, worse = (
                (r.rejected, r.chosen)
                if (r.chosen_prob is not None and r.chosen_prob < 0.5)
                else (
                    r.chosen,
                    r.rejected,
                )
            )
            out.append((r.annotator, r.prompt, better, worse))
        elif isinstance(r, Ranking):
            order = list(r.ranking)
            for i in range(len(order)):
                for j in range(i + 1, len(order)):
                    out.append((r.annotator, r.prompt, r.completions[order[i]], r.completions[order[j]]))
    return out
