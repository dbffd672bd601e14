"""Exports read back through rlhfkit.data.read_records, with each aggregation option."""

from __future__ import annotations

import pytest

from rlhfkit.data import read_records
from rlhfkit.feedback.export import build_records, label_rows, write_records
from tests.feedback.helpers import label, new_store, project_id, tasks, users


@pytest.fixture
def labelled(tmp_path):
    store = new_store(tmp_path)
    pair, tie, bad, rank, rate, thumbs, gold = tasks(
        store,
        [
            {"prompt": "pair", "responses": ["good", "bad"]},
            {"prompt": "tie", "responses": ["x", "y"]},
            {"prompt": "both bad", "responses": ["u", "v"]},
            {"prompt": "rank", "responses": ["r0", "r1", "r2"], "kind": "ranking"},
            {"prompt": "rate", "responses": ["l0", "l1"], "kind": "rating", "scale": 7},
            {"prompt": "thumbs", "responses": ["t0", "t1"], "kind": "thumbs"},
            {"prompt": "gold", "responses": ["g0", "g1"], "gold": {"choice": 0}, "id": "gold-1"},
        ],
    )
    a, b, c = users(store, "ann", "bob", "cat")
    for user, choice in ((a, 0), (b, 0), (c, 1)):
        label(store, user, pair, {"choice": choice}, flags={"1": ["untrue"]} if user is a else None)
    for user, choice in ((a, "tie"), (b, "tie"), (c, 0)):
        label(store, user, tie, {"choice": choice})
    label(store, a, bad, {"choice": "both_bad"})
    for user, ranking in ((a, [2, 0, 1]), (b, [2, 1, 0]), (c, [0, 2, 1])):
        label(store, user, rank, {"ranking": ranking})
    for user, ratings in ((a, [6, 2]), (b, [7, 2]), (c, [6, 3])):
        label(store, user, rate, {"ratings": ratings})
    for user, thumbs_ in ((a, [True, False]), (b, [True, True])):
        label(store, user, thumbs, {"thumbs": thumbs_})
    label(store, a, gold, {"choice": 0}, reason="known answer")
    with store.read() as db:
        yield store, label_rows(db, project_id(store)), label_rows(db, project_id(store), include_gold=True)


def roundtrip(tmp_path, kind, records, fmt="jsonl"):
    out = tmp_path / (f"{kind}.jsonl" if fmt == "jsonl" else f"{kind}-ds")
    write_records(records, out, fmt)
    return read_records(out, kind)[0]


def test_comparisons_per_annotator(labelled, tmp_path):
    _, rows, _ = labelled
    records = roundtrip(tmp_path, "comparison", build_records("comparison", rows))
    pair = [r for r in records if r.prompt == "pair"]
    assert [(r.chosen, r.rejected, r.annotator) for r in pair] == [
        ("good", "bad", "ann"),
        ("good", "bad", "bob"),
        ("bad", "good", "cat"),
    ]
    ties = [r for r in records if r.tie]
    assert len(ties) == 2 and {r.annotator for r in ties} == {"ann", "bob"}
    assert not any(r.prompt in ("both bad", "gold") for r in records)
    # A ranking of 3 gives its 3 ordered pairs: ann's [2, 0, 1] -> r2>r0, r2>r1, r0>r1.
    ann_rank = [(r.chosen, r.rejected) for r in records if r.prompt == "rank" and r.annotator == "ann"]
    assert ann_rank == [("r2", "r0"), ("r2", "r1"), ("r0", "r1")]
    raw = build_records("comparison", rows)[0]
    assert raw["created_at"].endswith("Z") and raw["id"].startswith("label-") and raw["rejected_flags"] == ["untrue"]


def test_drop_ties_and_majority_vote(labelled, tmp_path):
    _, rows, _ = labelled
    assert not any(r["tie"] for r in build_records("comparison", rows, drop_ties=True))
    majority = build_records("comparison", rows, aggregate="majority")
    pair = [r for r in majority if r["prompt"] == "pair"]
    assert len(pair) == 1 and pair[0]["chosen"] == "good" and pair[0]["annotators"] == ["ann", "bob", "cat"]
    tie = [r for r in majority if r["prompt"] == "tie"]
    assert len(tie) == 1 and tie[0]["tie"] is True  # 2 of 3 said tie
    assert not [r for r in build_records("comparison", rows, "majority", drop_ties=True) if r["prompt"] == "tie"]
    # Borda: r0 gets 2+1+3 = 6, r1 1+2+1 = 4, r2 3+3+2 = 8 -> [2, 0, 1]; its pairs follow.
    rank_pairs = [(r["chosen"], r["rejected"]) for r in majority if r["prompt"] == "rank"]
    assert rank_pairs == [("r2", "r0"), ("r2", "r1"), ("r0", "r1")]
    roundtrip(tmp_path, "comparison", majority)


def test_rankings_and_ratings(labelled, tmp_path):
    _, rows, _ = labelled
    rankings = roundtrip(tmp_path, "ranking", build_records("ranking", rows))
    assert [(r.annotator, r.ranking) for r in rankings] == [("ann", [2, 0, 1]), ("bob", [2, 1, 0]), ("cat", [0, 2, 1])]
    agg = build_records("ranking", rows, aggregate="majority")
    assert [r["ranking"] for r in agg] == [[2, 0, 1]]
    ratings = roundtrip(tmp_path, "rating", build_records("rating", rows))
    likert = [(r.completion, r.rating, r.scale) for r in ratings if r.rating is not None]
    assert likert[:2] == [("l0", 6, 7), ("l1", 2, 7)] and len(likert) == 6
    thumbs = [(r.completion, r.label, r.annotator) for r in ratings if r.label is not None]
    assert thumbs == [("t0", True, "ann"), ("t1", False, "ann"), ("t0", True, "bob"), ("t1", True, "bob")]
    majority = build_records("rating", rows, aggregate="majority")
    # Modal ratings: l0 -> 6 (6, 7, 6); l1 -> 2. Thumbs: t0 up 2-0; t1 split 1-1 -> no row.
    assert [(r["completion"], r["rating"], r["label"]) for r in majority] == [
        ("l0", 6, None),
        ("l1", 2, None),
        ("t0", None, True),
    ]


def test_gold_only_when_asked_and_datasets_folder(labelled, tmp_path):
    _, rows, with_gold = labelled
    assert not any(r["prompt"] == "gold" for r in build_records("comparison", rows))
    records = roundtrip(tmp_path, "comparison", build_records("comparison", with_gold), fmt="datasets")
    assert any(r.prompt == "gold" and r.chosen == "g0" for r in records)
    assert len(records) == len(build_records("comparison", with_gold))


def test_rejected_labels_are_not_exported(labelled):
    store, rows, _ = labelled
    from rlhfkit.feedback.models import Label

    cat_pair = next(r["label_id"] for r in rows if r["prompt"] == "pair" and r["annotator"] == "cat")
    with store.write() as db:
        db.get(Label, cat_pair).review_status = "rejected"
        db.commit()
    with store.read() as db:
        records = build_records("comparison", label_rows(db, project_id(store)))
    assert [r["annotator"] for r in records if r["prompt"] == "pair"] == ["ann", "bob"]


def test_unknown_options_and_empty_exports_are_refused(labelled, tmp_path):
    _, rows, _ = labelled
    with pytest.raises(ValueError, match="kind 'pairs'"):
        build_records("pairs", rows)
    with pytest.raises(ValueError, match="aggregate 'mean'"):
        build_records("rating", rows, aggregate="mean")
    with pytest.raises(ValueError, match="nothing to export"):
        write_records([], tmp_path / "x.jsonl")


def test_rows_keep_task_ids_metadata_and_models(tmp_path):
    store = new_store(tmp_path)
    pair, rank, rate = tasks(
        store,
        [
            {
                "id": "q1",
                "prompt": "p",
                "responses": [{"text": "x", "model": "m-a"}, {"text": "y", "model": "m-b"}],
                "meta": {"source": "s1", "nested": {"k": [1, 2]}},
            },
            {"id": "q2", "prompt": "r", "responses": ["r0", "r1", "r2"], "models": ["m-a", "m-b", None]},
            {"prompt": "t", "responses": ["l0", "l1"], "kind": "rating", "models": ["m-a", "m-b"]},
        ],
    )
    [a] = users(store, "a")
    label(store, a, pair, {"choice": 1})
    label(store, a, rank, {"ranking": [2, 0, 1]})
    label(store, a, rate, {"ratings": [4, 2]})
    with store.read() as db:
        rows = label_rows(db, project_id(store))
    [c] = build_records("comparison", rows)[:1]
    assert (c["chosen"], c["chosen_model"], c["rejected_model"]) == ("y", "m-b", "m-a")
    assert (c["task_external_id"], c["project"], c["meta"]) == (
        "q1",
        "default",
        {"source": "s1", "nested": {"k": [1, 2]}},
    )
    [r] = build_records("ranking", rows)
    assert r["models"] == ["m-a", "m-b", None] and r["task_external_id"] == "q2"
    assert [x["model"] for x in build_records("rating", rows)] == ["m-a", "m-b"]
    records = roundtrip(tmp_path, "comparison", build_records("comparison", rows), fmt="datasets")
    assert len(records) == 4  # 1 pair + 3 from the ranking; meta travels as JSON text in Arrow


def test_ties_are_ties_and_not_always_the_first_response(tmp_path):
    """A tie is tie: true; which response sits in 'chosen' is fixed per task by a hash, so over many
    tied items about half put the second response there (a reader ignoring 'tie' learns no position)."""
    store = new_store(tmp_path)
    ids = tasks(store, [{"prompt": f"t{i}", "responses": ["first", "second"]} for i in range(40)])
    [a] = users(store, "a")
    for t in ids:
        label(store, a, t, {"choice": "tie"})
    with store.read() as db:
        records = build_records("comparison", label_rows(db, project_id(store)))
    assert len(records) == 40 and all(r["tie"] is True for r in records)
    second_first = sum(r["chosen"] == "second" for r in records)
    assert 10 <= second_first <= 30, second_first
    majority = build_records("comparison", label_rows(db, project_id(store)), aggregate="majority")
    assert [r["chosen"] for r in majority] == [r["chosen"] for r in records]  # the same order per task


def test_conversations_export_in_trls_conversational_form(tmp_path):
    store = new_store(tmp_path)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    ids = tasks(store, [{"prompt": chat, "responses": ["4", "5"]}, {"prompt": "plain", "responses": ["u", "v"]}])
    [a] = users(store, "a")
    for t in ids:
        label(store, a, t, {"choice": 0})
    with store.read() as db:
        rows = label_rows(db, project_id(store))
    first, second = build_records("comparison", rows)
    assert first["prompt"] == chat and first["chosen"] == [{"role": "assistant", "content": "4"}]
    # One conversation makes every row conversational, so no column mixes text and lists.
    assert second["prompt"] == [{"role": "user", "content": "plain"}]
    records = roundtrip(tmp_path, "comparison", [first, second])
    assert records[0].prompt[0].role == "system" and records[0].chosen[0].content == "4"
    roundtrip(tmp_path, "comparison", [first, second], fmt="datasets")


def test_a_split_ranking_vote_is_a_tie_not_an_order_by_index(tmp_path):
    """Two annotators rank [0, 1, 2] and [1, 0, 2]: responses 0 and 1 have equal Borda counts. The majority export
    made that r0 over r1 (ordered by index); it is a tie in the comparisons (left out with drop_ties), and the item
    has no single order, so no ranking row, as an even pairwise split gives no row."""
    store = new_store(tmp_path)
    [rank] = tasks(store, [{"prompt": "rank", "responses": ["r0", "r1", "r2"], "kind": "ranking"}])
    a, b = users(store, "ann", "bob")
    label(store, a, rank, {"ranking": [0, 1, 2]})
    label(store, b, rank, {"ranking": [1, 0, 2]})
    with store.read() as db:
        rows = label_rows(db, project_id(store))
    pairs = {(r["chosen"], r["rejected"]): r["tie"] for r in build_records("comparison", rows, "majority")}
    assert pairs in ({("r0", "r1"): True, ("r0", "r2"): False, ("r1", "r2"): False},
                     {("r1", "r0"): True, ("r0", "r2"): False, ("r1", "r2"): False})  # fmt: skip
    kept = build_records("comparison", rows, "majority", drop_ties=True)
    assert {(r["chosen"], r["rejected"]) for r in kept} == {("r0", "r2"), ("r1", "r2")}
    assert build_records("ranking", rows, "majority") == []


def test_the_modal_rating_breaks_a_tie_by_the_true_median():
    """[1, 1, 3, 5, 5, 6]: 1 and 5 twice each; the median is 4 (the middle two's mean), so 5, not 1 (the lower
    middle value, 3, put 1 and 5 at the same distance and the tie went to the lower)."""
    from rlhfkit.feedback.export import _modal_rating

    assert _modal_rating([1, 1, 3, 5, 5, 6]) == 5 and _modal_rating([1, 1, 2, 5, 5, 6]) == 5
    assert _modal_rating([2, 2, 4, 4]) == 2  # the median 3 is as near both: the lower, as before


def test_the_dataset_card_counts_the_people_behind_majority_rows(labelled):
    """Majority rows carry annotator "majority" and the people in "annotators": the card said 1 annotator."""
    from rlhfkit.feedback.publish import _size_category, dataset_card

    _, rows, _ = labelled
    card = dataset_card("comparison", build_records("comparison", rows, "majority"), "default", "majority")
    assert "- annotators: 3" in card
    assert [_size_category(n) for n in (999, 2_000_000, 5 * 10**12)] == ["n<1K", "1M<n<10M", "n>1T"]
