"""Reviews: rejection re-queues, edits go back to review, nobody reviews their own labels, the review
queue and the history are filtered and paged in SQL; suggestions are recorded as kept or changed."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from rlhfkit.feedback.export import build_records, label_rows
from rlhfkit.feedback.models import Label, Task
from rlhfkit.feedback.review import QueueFilter, history, review_queue
from rlhfkit.feedback.store import LabelConflict, set_review, update_label
from rlhfkit.feedback.tasks import suggest_answer
from tests.feedback.helpers import label, new_store, project_id, serve, tasks, users

PAIR = {"prompt": "p", "responses": ["a", "b"]}


def n_labels(store, task_id):
    with store.read() as db:
        return db.get(Task, task_id).n_labels


def review(store, reviewer, label_id, status):
    with store.write() as db:
        return set_review(db, reviewer, label_id, status).review_status


def test_a_rejected_label_re_queues_its_item(tmp_path):
    """Overlap 1: a's label fills the item; once rejected the item is served again, to b (a labelled
    it already), and the export has only b's label. Accepting a's label again restores the count."""
    store = new_store(tmp_path)
    [task] = tasks(store, [PAIR])
    a, b = users(store, "a", "b")
    [rev] = users(store, "rev", role="reviewer")
    assert serve(store, a, overlap=1) == task
    first = label(store, a, task, {"choice": 0})
    assert serve(store, b, overlap=1) is None and n_labels(store, task) == 1
    assert review(store, rev, first, "rejected") == "rejected"
    assert n_labels(store, task) == 0
    assert serve(store, a, overlap=1) is None  # not back to the one who was rejected
    assert serve(store, b, overlap=1) == task
    label(store, b, task, {"choice": 1})
    with store.read() as db:
        records = build_records("comparison", label_rows(db, project_id(store)))
    assert [r["annotator"] for r in records] == ["b"] and records[0]["chosen"] == "b"
    review(store, rev, first, "rejected")  # again: no double count
    assert n_labels(store, task) == 1
    review(store, rev, first, "accepted")
    assert n_labels(store, task) == 2


def test_an_edited_label_goes_back_to_review(tmp_path):
    store = new_store(tmp_path)
    ids = tasks(store, [PAIR, PAIR])
    [a] = users(store, "a")
    [rev] = users(store, "rev", role="reviewer")
    accepted, rejected = (label(store, a, t, {"choice": 0}) for t in ids)
    review(store, rev, accepted, "accepted")
    review(store, rev, rejected, "rejected")
    assert n_labels(store, ids[1]) == 0
    with store.write() as db:
        for label_id in (accepted, rejected):
            changed = update_label(db, a, label_id, {"choice": 1}, "second thoughts", None)
            assert changed.review_status is None and changed.reviewed_by is None
    assert n_labels(store, ids[1]) == 1  # a rejected label, once changed, counts again while it waits
    with store.read() as db:
        assert {lab.answer["choice"] for lab in db.scalars(select(Label))} == {1}


def test_nobody_reviews_their_own_labels(tmp_path):
    store = new_store(tmp_path)
    [task] = tasks(store, [PAIR])
    [rev] = users(store, "rev", role="reviewer")
    [other] = users(store, "other", role="admin")
    mine = label(store, rev, task, {"choice": 0}, flags={"1": ["harmful"]})
    with store.write() as db, pytest.raises(LabelConflict) as refused:
        set_review(db, rev, mine, "accepted")
    assert refused.value.status == 403
    with store.read_conn() as conn:
        assert review_queue(conn, project_id(store), rev.id, QueueFilter(), 10, 0)["total"] == 0
        assert review_queue(conn, project_id(store), other.id, QueueFilter(), 10, 0)["total"] == 1
    assert review(store, other, mine, "accepted") == "accepted"


@pytest.fixture
def queue_store(tmp_path):
    """Six pairwise items and one ranking. Items 0-2: a and b agree; 3-4: they disagree; 5: they agree
    but a flags response 1. The ranking: c alone. The reviewer is r."""
    store = new_store(tmp_path)
    ids = tasks(
        store, [{**PAIR, "prompt": f"item {i}"} for i in range(6)] + [{"prompt": "r", "responses": ["x", "y", "z"]}]
    )
    a, b, c = users(store, "a", "b", "c")
    [r] = users(store, "r", role="reviewer")
    labels = {}
    for i, t in enumerate(ids[:6]):
        labels[("a", i)] = label(store, a, t, {"choice": 0}, flags={"1": ["untrue"]} if i == 5 else None)
        labels[("b", i)] = label(store, b, t, {"choice": 1 if i in (3, 4) else 0}, reason=f"b on {i}")
    labels[("c", 6)] = label(store, c, ids[6], {"ranking": [2, 0, 1]})
    return store, ids, r, labels


def page(store, r, limit=50, offset=0, **where):
    with store.read_conn() as conn:
        return review_queue(conn, project_id(store), r.id, QueueFilter(**where), limit, offset)


def test_queue_filters_by_focus_status_kind_and_annotator(queue_store):
    store, ids, r, labels = queue_store
    ids_of = lambda p: [i["label"]["id"] for i in p["items"]]  # noqa: E731
    attention = page(store, r)
    assert attention["total"] == 5  # items 3 and 4 (both labels each) and a's flagged label on item 5
    assert ids_of(attention) == [labels[(n, i)] for i in (3, 4) for n in "ab"] + [labels[("a", 5)]]
    assert ids_of(page(store, r, focus="flagged")) == [labels[("a", 5)]]
    assert page(store, r, focus="disagree")["total"] == 4
    assert page(store, r, focus="all")["total"] == 13
    assert page(store, r, focus="all", kind="ranking")["total"] == 1
    assert ids_of(page(store, r, focus="disagree", annotator="b")) == [labels[("b", 3)], labels[("b", 4)]]
    review(store, r, labels[("b", 3)], "rejected")
    # With b's label rejected, item 3 no longer disagrees; the rejected label shows under its status.
    assert page(store, r, focus="disagree")["total"] == 2
    assert ids_of(page(store, r, status="rejected", focus="all")) == [labels[("b", 3)]]
    assert page(store, r, status="any", focus="all")["total"] == 13
    assert page(store, r, status="accepted", focus="all")["total"] == 0


def test_queue_items_carry_both_texts_the_answer_flags_reason_and_the_other_labels(queue_store):
    store, ids, r, labels = queue_store
    item = next(i for i in page(store, r)["items"] if i["label"]["id"] == labels[("b", 3)])
    assert item["task"]["responses"] == ["a", "b"] and item["task"]["prompt"] == "item 3"
    assert item["label"]["answer"] == {"choice": 1} and item["label"]["reason"] == "b on 3"
    assert item["annotator"] == "b" and [o["annotator"] for o in item["others"]] == ["a"]
    flagged = page(store, r, focus="flagged")["items"][0]
    assert flagged["label"]["flags"] == {"1": ["untrue"]}


def test_queue_pages_in_sql_reading_one_page_of_labels(queue_store):
    """The queue reads the page it shows (and the other labels of the page's items), not every label:
    counted here by wrapping the connection so every row fetched is seen."""
    store, ids, r, labels = queue_store

    class Counting:
        def __init__(self, conn):
            self.conn, self.rows = conn, 0

        def execute(self, *args, **kwargs):
            frozen = self.conn.execute(*args, **kwargs).freeze()
            self.rows += len(frozen.data)
            return frozen()

    seen = []
    for offset in range(0, 13, 4):
        with store.read_conn() as conn:
            counting = Counting(conn)
            p = review_queue(counting, project_id(store), r.id, QueueFilter(focus="all"), 4, offset)
        assert p["total"] == 13 and len(p["items"]) == min(4, 13 - offset)
        # 1 count row + <= 4 labels + the other labels of <= 4 items (2 labels per item here)
        assert counting.rows <= 1 + 4 + 2 * 4, counting.rows
        seen += [i["label"]["id"] for i in p["items"]]
    assert sorted(seen) == sorted(labels.values()) and len(set(seen)) == 13


def test_history_pages_an_annotators_own_labels_newest_first(queue_store):
    store, ids, r, labels = queue_store
    with store.read() as db:
        a = db.scalar(select(Label.annotator_id).where(Label.id == labels[("a", 0)]))
    with store.read_conn() as conn:
        first = history(conn, a, project_id(store), 4, 0)
        rest = history(conn, a, project_id(store), 4, 4)
    assert first["total"] == 6 and len(first["items"]) == 4 and len(rest["items"]) == 2
    got = [i["label"]["id"] for i in first["items"] + rest["items"]]
    assert got == sorted((labels[("a", i)] for i in range(6)), reverse=True)
    assert first["items"][0]["task"]["responses"] == ["a", "b"]


def test_suggestions_from_scores_by_hand():
    """Mean over members, then: pairwise the higher score; ranking by score; thumbs up above 0; rating
    z clipped to [-2, 2] -> round(mid + z (scale - 1) / 4): scale 5 (mid 3, 1 point per unit of z),
    z = (1, -0.4, 3) -> 4, round(2.6) = 3, 5; scale 7 (mid 4, 1.5 per unit), z = (0, -9) -> 4, 1."""
    assert suggest_answer("pairwise", [[1.0, 2.0], [0.0, 0.5]], 5) == {"choice": 1}
    assert suggest_answer("pairwise", [[1.0, 1.0]], 5) is None  # even: no suggestion
    assert suggest_answer("ranking", [[0.1, 0.9, 0.5]], 5) == {"ranking": [1, 2, 0]}
    assert suggest_answer("thumbs", [[0.3, -0.2]], 5) == {"thumbs": [True, False]}
    assert suggest_answer("rating", [[1.0, -0.4, 3.0]], 5) == {"ratings": [4, 3, 5]}
    assert suggest_answer("rating", [[0.0, -9.0]], 7) == {"ratings": [4, 1]}


def test_kept_and_changed_suggestions_are_recorded_and_exported(tmp_path):
    store = new_store(tmp_path)
    with store.write() as db:
        from rlhfkit.feedback.projects import update_project

        update_project(db, "default", suggestions=True)
        db.commit()
    ids = tasks(store, [PAIR, PAIR, {**PAIR, "suggestion": {"choice": 1}}], scorer=lambda p, r: [[2.0, 0.0]])
    [a] = users(store, "a")
    kept = label(store, a, ids[0], {"choice": 0})
    changed = label(store, a, ids[1], {"choice": "tie"})
    own = label(store, a, ids[2], {"choice": 1})  # the task file's own suggestion wins over the scores
    with store.read() as db:
        got = {lab.id: (lab.suggestion, lab.suggestion_accepted) for lab in db.scalars(select(Label))}
    assert got[kept] == ({"choice": 0}, True) and got[changed] == ({"choice": 0}, False)
    assert got[own] == ({"choice": 1}, True)
    with store.write() as db:
        assert update_label(db, a, changed, {"choice": 0}, None, None).suggestion_accepted is True
    with store.read() as db:
        records = build_records("comparison", label_rows(db, project_id(store)))
    assert {r["id"]: r["suggestion_accepted"] for r in records}[f"label-{kept}"] is True


def test_without_the_project_setting_no_suggestion_is_recorded(tmp_path):
    store = new_store(tmp_path)
    [task] = tasks(store, [PAIR], scorer=lambda p, r: [[2.0, 0.0]])
    [a] = users(store, "a")
    label_id = label(store, a, task, {"choice": 0})
    with store.read() as db:
        stored = db.get(Label, label_id)
        assert stored.suggestion is None and stored.suggestion_accepted is None
        assert db.get(Task, task).suggestion == {"choice": 0}  # kept with the task for when it is turned on
