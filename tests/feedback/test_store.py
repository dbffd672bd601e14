"""The queue (overlap, leases, gold items, strategies), the schema, and the dashboard figures."""

from __future__ import annotations

import random

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from rlhfkit.feedback.dashboard import stats
from rlhfkit.feedback.db import migrate
from rlhfkit.feedback.models import Base
from rlhfkit.feedback.store import QueueSettings, next_task
from rlhfkit.registry.tables import metadata as production_metadata
from tests.feedback.helpers import label, new_store, project_id, serve, tasks, users

PAIR = {"prompt": "p", "responses": ["a", "b"]}


def test_models_match_the_migrations(tmp_path):
    store = new_store(tmp_path)
    migrate(store)  # a second run is a no-op
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), [Base.metadata, production_metadata])
    assert diff == []


def test_overlap_caps_labels_per_item(tmp_path):
    store = new_store(tmp_path)
    [task] = tasks(store, [PAIR])
    a, b, c = users(store, "a", "b", "c")
    for user in (a, b):
        assert serve(store, user, overlap=2) == task
        label(store, user, task, {"choice": 0})
    assert serve(store, c, overlap=2) is None
    assert serve(store, c, overlap=3) == task


def test_a_lease_keeps_others_off_an_item_until_it_expires(tmp_path):
    store = new_store(tmp_path)
    first, second = tasks(store, [PAIR, PAIR])
    a, b = users(store, "a", "b")
    assert serve(store, a, overlap=1) == first
    assert serve(store, a, overlap=1) == first  # asking again returns the same item
    assert serve(store, b, overlap=1) == second
    assert serve(store, users(store, "c")[0], overlap=1) is None  # both leased
    assert serve(store, a, overlap=1, lease_seconds=-1) == first  # renewing: still a's
    assert serve(store, users(store, "d")[0], overlap=1) == first  # a's lease has now lapsed


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_gold_items_are_mixed_in_at_the_set_rate(tmp_path, rate):
    """Each call draws once from the rng; a draw below the rate serves a gold item. A replica of the
    rng says exactly how many gold items 30 calls must serve."""
    store = new_store(tmp_path)
    ids = tasks(store, [PAIR] * 30 + [{**PAIR, "gold": {"choice": 0}, "id": f"g{i}"} for i in range(30)])
    gold = set(ids[30:])
    [user] = users(store, "a")
    rng, replica = random.Random(7), random.Random(7)
    n_gold = 0
    for _ in range(30):  # each item is labelled, so the next call moves on
        with store.write() as db:
            task = next_task(db, user, project_id(store), QueueSettings(gold_rate=rate), rng)
        n_gold += task.id in gold
        label(store, user, task.id, {"choice": 0})
    assert n_gold == sum(replica.random() < rate for _ in range(30))
    assert n_gold == {0.0: 0, 1.0: 30}.get(rate, n_gold) and (rate in (0, 1) or 0 < n_gold < 30)


def test_round_robin_gives_every_item_a_label_before_any_gets_two(tmp_path):
    store = new_store(tmp_path)
    ids = tasks(store, [PAIR] * 4)
    served = []
    for user in users(store, "a", "b", "c", "d", "e", "f"):
        task = serve(store, user, overlap=3, strategy="round-robin")
        served.append(task)
        label(store, user, task, {"choice": 0})
    assert served == ids + ids[:2]


def toy_scorer(prompt, responses):
    """Two ensemble members; 'unsure' items score close together, 'split' items make them disagree."""
    if prompt == "sure":
        return [[5.0, -5.0], [5.1, -4.9]]
    if prompt == "unsure":
        return [[0.1, 0.0], [0.0, 0.1]]
    return [[3.0, -3.0], [-3.0, 3.0]]  # 'split': the members disagree, their mean is unsure too


@pytest.mark.parametrize(
    "strategy, expected", [("uncertainty", ["split", "unsure", "sure"]), ("disagreement", ["split", "unsure", "sure"])]
)
def test_model_based_strategies_put_labels_where_the_model_is_unsure(tmp_path, strategy, expected):
    store = new_store(tmp_path)
    ids = tasks(store, [{**PAIR, "prompt": p} for p in ("sure", "unsure", "split")], scorer=toy_scorer)
    prompt_of = dict(zip(ids, ("sure", "unsure", "split")))
    order = []
    [user] = users(store, "a")
    for _ in range(3):
        task = serve(store, user, strategy=strategy)
        order.append(prompt_of[task])
        label(store, user, task, {"choice": 0})
    if strategy == "uncertainty":
        # split and unsure both have a mean score gap of ~0: tied at the top, sure comes last.
        assert set(order[:2]) == {"split", "unsure"} and order[2] == "sure"
    else:
        assert order == expected


def test_random_strategy_serves_only_eligible_items(tmp_path):
    store = new_store(tmp_path)
    ids = tasks(store, [PAIR] * 5)
    [user] = users(store, "a")
    seen = []
    for _ in range(5):
        task = serve(store, user, strategy="random")
        seen.append(task)
        label(store, user, task, {"choice": 0})
    assert sorted(seen) == ids and serve(store, user, strategy="random") is None


def test_dashboard_reports_gold_accuracy_agreement_and_throughput(tmp_path):
    """Six items; a always says 0, b says 1 on the first and 0 on the rest.

    Cohen: p_o = 5/6, p_e = (6 * 5) / 36 = 5/6, kappa = 0. Fleiss: mean P_i = 5/6, p = (11/12, 1/12),
    P_e = 122/144, kappa = (120 - 122) / (144 - 122) = -1/11. Krippendorff: o_00 = 10, o_01 = o_10 = 1,
    n_0 = 11, n_1 = 1, n = 12, alpha = 1 - 11 * 2 / (2 * 11 * 1) = 0.
    """
    store = new_store(tmp_path)
    ids = tasks(store, [PAIR] * 6 + [{**PAIR, "gold": {"choice": 1}, "id": "gold"}])
    a, b = users(store, "a", "b")
    for t in ids[:6]:
        label(store, a, t, {"choice": 0}, duration_ms=3000)
        label(store, b, t, {"choice": 0 if t != ids[0] else 1}, duration_ms=5000)
    label(store, a, ids[6], {"choice": 1})
    label(store, b, ids[6], {"choice": 0})
    with store.read() as db:
        s = stats(db, project_id(store), overlap=2)
    assert s["totals"] == {"tasks": 6, "gold_tasks": 1, "labels": 14, "complete_tasks": 6, "overlap": 2, "users": 2}
    by_user = {u["user"]: u for u in s["annotators"]}
    assert by_user["a"]["gold_accuracy"] == 1.0 and by_user["b"]["gold_accuracy"] == 0.0
    assert by_user["a"]["median_seconds"] == 3.0 and by_user["a"]["labels"] == 7
    agreement = s["agreement"]["pairwise"]
    assert agreement["units"] == 6 and agreement["labels"] == 12
    assert agreement["cohen_kappa_mean"] == pytest.approx(0.0, abs=1e-12)
    assert agreement["fleiss_kappa"] == pytest.approx(-1 / 11, abs=1e-12)
    assert agreement["krippendorff_alpha"] == pytest.approx(0.0, abs=1e-12)


def test_group_commit_stores_each_label_once_and_isolates_a_failing_one(tmp_path, monkeypatch):
    """Submissions that arrive together share one transaction (Store.transact on SQLite): a retry of
    a key inside the same batch is answered with the label being stored, a bad answer fails alone,
    and the item counters match the labels."""
    import asyncio

    from sqlalchemy import func, select

    from rlhfkit.feedback.models import Assignment, Label, Task, utcnow
    from rlhfkit.feedback.routes_label import _submit
    from rlhfkit.feedback.schemas import LabelIn
    from rlhfkit.feedback.store import LabelConflict

    store = new_store(tmp_path)
    ids = tasks(store, [PAIR] * 4)
    annotators = users(store, "a", "b", "c")
    with store.write() as db:  # each annotator was served the first three items
        db.add_all(
            [
                Assignment(task_id=task, user_id=user.id, expires_at=utcnow(), skipped=False)
                for user in annotators
                for task in ids[:3]
            ]
        )
        db.commit()
    body = lambda task, answer: LabelIn(task_id=task, answer=answer)  # noqa: E731
    batches = []
    run_batch = store._run_batch
    monkeypatch.setattr(store, "_run_batch", lambda jobs: batches.append(len(jobs)) or run_batch(jobs))

    async def submit_all():
        jobs = [
            store.transact(_submit, user.id, f"{user.id}-{task}", body(task, {"choice": 1}))
            for user in annotators
            for task in ids[:3]
        ]
        jobs.append(
            store.transact(_submit, annotators[0].id, f"{annotators[0].id}-{ids[0]}", body(ids[0], {"choice": 1}))
        )  # a retry, in the same batch
        jobs.append(store.transact(_submit, annotators[1].id, "bad", body(ids[3], {"choice": 7})))  # not served
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(submit_all())
    assert sum(batches) == 11 and len(batches) < 11  # they did share transactions
    stored = results[:9]
    assert all(not replayed for _, replayed in stored)
    retry_label, replayed = results[9]
    assert replayed and retry_label["id"] == stored[0][0]["id"]
    assert isinstance(results[10], LabelConflict) and results[10].status == 403
    with store.read() as db:
        assert db.scalar(select(func.count()).select_from(Label)) == 9
        assert db.scalar(select(func.sum(Task.n_labels))) == 9
        assert sorted(db.scalars(select(Label.id))) == sorted(label["id"] for label, _ in stored)


def test_annotators_asking_at_once_on_postgresql_get_different_items(postgres):
    """Two requests lease at once on PostgreSQL: the second waits for the first's lease to commit and gets the
    other item, never the same one past the overlap (at READ COMMITTED each missed the other's lease)."""
    import threading

    from rlhfkit.feedback.db import Store
    from rlhfkit.feedback.store import lease_next

    store = Store(postgres())
    migrate(store)
    first, second = tasks(store, [PAIR, PAIR])
    a, b = users(store, "a", "b")
    pid, settings = project_id(store), QueueSettings(overlap=1)
    leased, a_holds, got = threading.Event(), threading.Event(), {}

    def lease(user, hold: bool) -> None:
        with store.engine.connect() as conn:
            got[user.username] = lease_next(conn, user.id, pid, settings).id
            if hold:  # a's lease is written but not committed while b asks
                leased.set()
                a_holds.wait(5)
            conn.commit()

    holder = threading.Thread(target=lease, args=(a, True))
    holder.start()
    assert leased.wait(5)
    asker = threading.Thread(target=lease, args=(b, False))
    asker.start()
    asker.join(0.5)
    assert "b" not in got  # b waits for a's transaction
    a_holds.set()
    holder.join(5)
    asker.join(5)
    assert got == {"a": first, "b": second}


def test_two_admins_creating_one_username_at_once_on_postgresql_get_a_clear_refusal(postgres):
    """The second of two concurrent creations of one username waits for the first and is refused as taken (it
    passed the check before the first committed, and its insert then failed on the unique index: a 500)."""
    import threading

    from rlhfkit.feedback.auth import AuthError, create_user
    from rlhfkit.feedback.db import Store

    store = Store(postgres())
    migrate(store)
    created, first_holds, outcome = threading.Event(), threading.Event(), {}

    def create(hold: bool) -> None:
        with store.write() as db:
            try:
                create_user(db, "twin", "annotator")
            except AuthError as e:
                outcome["second"] = str(e)
                return
            if hold:
                created.set()
                first_holds.wait(5)
            db.commit()

    first = threading.Thread(target=create, args=(True,))
    first.start()
    assert created.wait(5)
    second = threading.Thread(target=create, args=(False,))
    second.start()
    second.join(0.5)
    first_holds.set()
    first.join(5)
    second.join(5)
    assert outcome == {"second": "username: already taken"}
    assert len(users_named(store, "twin")) == 1


def users_named(store, name: str) -> list:
    from sqlalchemy import select

    from rlhfkit.feedback.models import User

    with store.read() as db:
        return db.scalars(select(User).where(User.username == name)).all()


def test_two_admins_demoting_each_other_at_once_on_postgresql_leave_one(postgres):
    """Admins a and b demote each other at once: the second waits for the first and is refused as the last admin
    (each counted the other still an admin before either committed, and the service was left with none)."""
    import threading

    from rlhfkit.feedback.db import Store
    from rlhfkit.feedback.users import UserError, change_user

    store = Store(postgres())
    migrate(store)
    users(store, "a", "b", role="admin")
    changed, first_holds, outcome = threading.Event(), threading.Event(), {}

    def demote(name: str, hold: bool) -> None:
        with store.write() as db:
            try:
                change_user(db, name, role="annotator")
            except UserError as e:
                outcome[name] = str(e)
                return
            if hold:
                changed.set()
                first_holds.wait(5)
            db.commit()

    first = threading.Thread(target=demote, args=("a", True))
    first.start()
    assert changed.wait(5)
    second = threading.Thread(target=demote, args=("b", False))
    second.start()
    second.join(0.5)
    first_holds.set()
    first.join(5)
    second.join(5)
    assert list(outcome) == ["b"] and "last active admin" in outcome["b"]
    assert [u.role for u in users_named(store, "b")] == ["admin"]


def test_working_time_adds_the_earliest_labels_duration_whatever_the_order_given():
    """Labels at t0 + 10 s (5 s spent) and t0 (20 s spent), given in that order: 20 s for the first item plus the
    10 s gap, not the 5 s of the label listed first."""
    from datetime import datetime, timedelta

    from rlhfkit.feedback.dashboard import active_hours

    t0 = datetime(2026, 12, 3, 12, 0, 0)
    assert active_hours([t0 + timedelta(seconds=10), t0], [5000, 20000]) * 3600 == pytest.approx(30.0)
