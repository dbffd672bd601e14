"""The pages added for teams, in headless Chromium: review queue, leaderboard, guidelines, own-label
history and editing, suggestions kept or changed, rankings that need a move, conversations as chats,
user management, and post-login redirects that stay on the site.

Set RLHFKIT_SCREENSHOTS=docs to refresh docs/review-queue.png and docs/leaderboard.png.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote, urlsplit

import pytest

from tests.feedback.conftest import ADMIN_PASSWORD, Server, bootstrap
from tests.feedback.test_attacks import OFF_SITE
from tests.feedback.test_browser import ARGS, CHROMIUM

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium")
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


@pytest.fixture
def srv(tmp_path):
    bootstrap(str(tmp_path / "labels.db"))
    server = Server(str(tmp_path / "labels.db"), tmp_path, "--overlap", "3").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def log_in(srv, browser, username, password, path="/", width=1280, height=900):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(srv.url + "/login?next=" + quote(path))
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("body[data-ready='1']")
    return page


def annotator(srv, browser, path="/"):
    name, client = srv.new_user()
    return name, client, log_in(srv, browser, name, "a-good-password", path)


def labelled_by_api(srv, client, task_id, answer, **extra):
    from tests.feedback.conftest import serve_until
    from tests.feedback.test_api import submit

    serve_until(client, task_id)
    r = submit(client, task_id, answer, **extra)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_until(page, script: str, timeout: float = 15.0) -> None:
    """Poll a JavaScript expression from here: Playwright's wait_for_function evaluates strings inside
    the page, which the Content-Security-Policy (no unsafe-eval) forbids, as it should."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        page.wait_for_timeout(50)


def shot(page, name):
    target = os.environ.get("RLHFKIT_SCREENSHOTS")
    if target:
        path = os.path.join(target, name)
        page.set_viewport_size({"width": 1280, "height": 200})  # full_page then takes the content's height
        page.screenshot(path=path, full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        assert os.path.getsize(path) < 400_000  # small enough for the docs


# ---------------------------------------------------------------- review queue


def test_review_queue_shows_texts_flags_reasons_and_re_queues_a_rejection(srv, browser):
    ids = srv.load(
        [
            {
                "prompt": "Which summary is faithful to the article?",
                "responses": [
                    "The council approved the budget on Tuesday after a long debate.",
                    "The council rejected the budget, citing costs.",
                ],
            },
            {"prompt": "Pick the kinder reply.", "responses": ["Thank you so much!", "Whatever."]},
        ]
    )
    a_name, a = srv.new_user()
    b_name, b = srv.new_user()
    a1 = labelled_by_api(srv, a, ids[0], {"choice": 0}, reason="Matches the article: it was approved.")
    labelled_by_api(srv, a, ids[1], {"choice": 0})
    b1 = labelled_by_api(srv, b, ids[0], {"choice": 1}, flags={"0": ["untrue"]}, reason="Says rejected")
    labelled_by_api(srv, b, ids[1], {"choice": 0})
    page = log_in(srv, browser, "admin", ADMIN_PASSWORD, "/review")
    items = page.locator(".queue-item")
    assert items.count() == 2  # the disagreeing item's two labels; the agreeing item needs no attention
    first = page.locator(f".queue-item[data-label='{a1}']")
    assert "approved the budget" in first.inner_text() and "rejected the budget" in first.inner_text()
    assert "Matches the article" in first.inner_text() and b_name in first.locator(".others").inner_text()
    assert first.locator(".review-response.chosen").get_attribute("data-index") == "0"
    second = page.locator(f".queue-item[data-label='{b1}']")
    assert second.locator(".review-response[data-index='0'] [data-flag='untrue']").count() == 1
    shot(page, "review-queue.png")

    loads = page.evaluate("document.body.dataset.loads")
    page.select_option("#f-focus", "flagged")
    wait_until(page, f"document.body.dataset.loads !== '{loads}'")
    assert [int(x) for x in page.eval_on_selector_all(".queue-item", "els => els.map(e => e.dataset.label)")] == [b1]

    loads = page.evaluate("document.body.dataset.loads")
    page.click(f".queue-item[data-label='{b1}'] button[data-review='rejected']")
    wait_until(page, f"document.body.dataset.loads !== '{loads}'")
    assert page.locator(".queue-item").count() == 0  # no longer waiting for review
    assert srv.sql("SELECT review_status, reviewed_by IS NOT NULL FROM labels WHERE id = :i", i=b1) == [
        ("rejected", True)
    ]
    assert srv.sql("SELECT n_labels FROM tasks WHERE id = :t", t=ids[0]) == [(1,)]  # back in the queue
    assert page.errors == []


def test_review_queue_hides_ones_own_labels(srv, browser):
    [task] = srv.load([{"prompt": "p", "responses": ["x", "y"]}])
    name, client = srv.new_user("reviewer")
    mine = labelled_by_api(srv, client, task, {"choice": 0}, flags={"1": ["harmful"]})
    page = log_in(srv, browser, name, "a-good-password", "/review")
    assert page.locator(".queue-item").count() == 0
    assert client.post(f"/api/review/labels/{mine}", json={"status": "accepted"}).status_code == 403


# ---------------------------------------------------------------- leaderboard


def test_leaderboard_ranks_models_from_the_votes(srv, browser):
    def task(i, a, b):
        return {
            "prompt": f"Question {i}",
            "responses": [{"text": f"{a} answer {i}", "model": a}, {"text": f"{b} answer {i}", "model": b}],
        }

    rows = [task(i, "llama-3-8b-dpo", "llama-3-8b-sft") for i in range(6)]
    rows += [task(i + 6, "llama-3-8b-sft", "tiny-baseline") for i in range(6)]
    rows += [task(i + 12, "llama-3-8b-dpo", "tiny-baseline") for i in range(4)]
    ids = srv.load(rows)
    votes = [0, 0, 0, 0, 1, "tie"] + [0, 0, 0, 0, 1, 0] + [0, 0, 0, "both_bad"]
    for _ in range(2):  # two voters
        _, client = srv.new_user()
        for t, v in zip(ids, votes):
            labelled_by_api(srv, client, t, {"choice": v})
    page = log_in(srv, browser, "admin", ADMIN_PASSWORD, "/leaderboard")
    models = page.eval_on_selector_all("tr[data-model]", "els => els.map(e => e.dataset.model)")
    assert models == ["llama-3-8b-dpo", "llama-3-8b-sft", "tiny-baseline"]
    assert page.locator(".ci-range").count() == 3 and page.locator(".ci-point").count() == 3
    assert "32 votes" in page.inner_text("#summary")
    shot(page, "leaderboard.png")
    name, _, ann_page = annotator(srv, browser)
    ann_page.goto(srv.url + "/leaderboard")
    assert "403" in ann_page.inner_text("body")  # annotators label blind to the models
    assert page.errors == []


# ---------------------------------------------------------------- guidelines, chats, history


def test_guidelines_render_as_markdown_and_never_run(srv, browser):
    text = "# How to judge\n\n- Prefer **faithful** summaries\n- Flag anything *untrue*\n\n" + XSS
    assert srv.admin.patch("/api/admin/projects/default", json={"guidelines": text}).status_code == 200
    name, _, page = annotator(srv, browser, "/guidelines")
    assert page.locator("#guidelines h3").inner_text() == "How to judge"
    assert page.locator("#guidelines li strong").inner_text() == "faithful"
    assert XSS in page.inner_text("#guidelines") and page.evaluate("window.__xss") is None
    assert page.locator("#guidelines img, #guidelines script").count() == 0


def test_a_conversation_is_shown_as_a_chat(srv, browser):
    chat = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is **2 + 2**?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And in words? " + XSS},
    ]
    [task] = srv.load([{"prompt": chat, "responses": ["Four.", "It is four, of course!"]}])
    name, _, page = annotator(srv, browser)
    page.wait_for_selector(f"body[data-task='{task}']", state="attached")
    roles = page.eval_on_selector_all("#prompt .bubble", "els => els.map(e => e.dataset.role)")
    assert roles == ["system", "user", "assistant", "user"]
    assert page.locator("#prompt .bubble.user strong").first.inner_text() == "2 + 2"
    assert XSS in page.locator("#prompt .bubble").nth(3).inner_text() and page.evaluate("window.__xss") is None
    page.click("button[data-choice='tie']")
    page.click("#submit")
    page.wait_for_selector("body[data-task='none']", state="attached")


def test_history_lists_my_labels_and_an_edit_goes_back_to_review(srv, browser):
    ids = srv.load([{"prompt": f"History item {i}", "responses": [f"a{i}", f"b{i}"]} for i in range(3)])
    name, client, page = annotator(srv, browser)
    labels = [labelled_by_api(srv, client, t, {"choice": 0}) for t in ids]
    srv.admin.post(f"/api/review/labels/{labels[1]}", json={"status": "accepted"})
    page.goto(srv.url + "/history")
    page.wait_for_selector("body[data-ready='1']")
    shown = [int(x) for x in page.eval_on_selector_all(".history-item", "els => els.map(e => e.dataset.label)")]
    assert shown == labels[::-1]  # newest first
    assert "accepted" in page.locator(f".history-item[data-label='{labels[1]}']").inner_text()
    page.click(f"a[data-edit='{labels[1]}']")
    page.wait_for_selector(f"body[data-task='{ids[1]}']", state="attached")
    assert "Changing your label" in page.inner_text("#edit-banner")
    order = [int(x) for x in page.eval_on_selector_all(".response", "els => els.map(e => e.dataset.index)")]
    assert page.locator(f"button[data-choice='{0}'].selected").count() == 1  # pre-filled with my answer
    page.click(f"button[data-choice='{1}']")
    page.fill("#reason", "on second thought")
    page.click("#submit")
    page.wait_for_url("**/history**")
    page.wait_for_selector("body[data-ready='1']")
    got = client.get(f"/api/labels/{labels[1]}").json()
    assert got["answer"] == {"choice": 1} and got["reason"] == "on second thought" and got["review_status"] is None
    assert "waiting for review" in page.locator(f".history-item[data-label='{labels[1]}']").inner_text()
    assert len(order) == 2 and page.errors == []


# ---------------------------------------------------------------- suggestions and rankings


def test_a_suggestion_is_pre_filled_and_recorded_as_kept_or_changed(srv, browser):
    srv.admin.patch("/api/admin/projects/default", json={"suggestions": True})
    ids = srv.load(
        [
            {"prompt": "Keep it", "responses": ["x", "y"], "suggestion": {"choice": 1}},
            {"prompt": "Change it", "responses": ["u", "v"], "suggestion": {"choice": 0}},
            {"prompt": "Rate", "responses": ["r", "s"], "kind": "rating", "suggestion": {"ratings": [5, 2]}},
        ]
    )
    name, client, page = annotator(srv, browser)
    page.wait_for_selector(f"body[data-task='{ids[0]}']", state="attached")
    assert "A model suggests" in page.inner_text("#suggestion-note")
    assert page.locator("button[data-choice='1'].selected.suggested").count() == 1
    assert not page.is_disabled("#submit")
    page.keyboard.press("Enter")  # keep it
    page.wait_for_selector(f"body[data-task='{ids[1]}']", state="attached")
    page.click("button[data-choice='tie']")  # change it
    assert page.locator("button[data-choice='0'].suggested:not(.selected)").count() == 1
    page.click("#submit")
    page.wait_for_selector(f"body[data-task='{ids[2]}']", state="attached")
    assert page.locator("button[data-rating='5'].selected").count() == 1
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-task='none']", state="attached")
    got = {lab["task_id"]: lab for lab in client.get("/api/labels").json()}
    assert got[ids[0]]["answer"] == {"choice": 1} and got[ids[0]]["suggestion_accepted"] is True
    assert got[ids[1]]["answer"] == {"choice": "tie"} and got[ids[1]]["suggestion_accepted"] is False
    assert got[ids[2]]["answer"] == {"ratings": [5, 2]} and got[ids[2]]["suggestion_accepted"] is True


def test_a_ranking_cannot_be_submitted_untouched(srv, browser):
    ids = srv.load([{"prompt": f"Rank {i}", "responses": ["one", "two", "three"]} for i in range(2)])
    name, client, page = annotator(srv, browser)
    page.wait_for_selector(f"body[data-task='{ids[0]}']", state="attached")
    assert page.is_disabled("#submit") and "confirm the order" in page.inner_text("#hint")
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    assert client.get("/api/labels").json() == []  # nothing was sent
    shown = [int(x) for x in page.eval_on_selector_all(".response", "els => els.map(e => e.dataset.index)")]
    page.click("#confirm-order")  # the shuffled order is right, on purpose
    assert not page.is_disabled("#submit")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"body[data-task='{ids[1]}']", state="attached")
    assert page.is_disabled("#submit")
    page.locator(".response").nth(2).locator("button[aria-label='Move up']").click()  # a move also counts
    moved = [int(x) for x in page.eval_on_selector_all(".response", "els => els.map(e => e.dataset.index)")]
    page.click("#submit")
    page.wait_for_selector("body[data-task='none']", state="attached")
    got = {lab["task_id"]: lab["answer"]["ranking"] for lab in client.get("/api/labels").json()}
    assert got == {ids[0]: shown, ids[1]: moved}


# ---------------------------------------------------------------- people


def test_admin_changes_roles_deactivates_and_ends_sessions(srv, browser):
    name, client = srv.new_user()
    other, other_client = srv.new_user()
    page = log_in(srv, browser, "admin", ADMIN_PASSWORD, "/admin")
    page.select_option(f"select[data-role-of='{name}']", "reviewer")
    wait_until(page, "document.getElementById('toast').textContent.includes('is now reviewer')")
    assert client.get("/api/review/queue").status_code == 200  # the role applies at once
    page.click(f"button[data-revoke='{other}']")
    page.wait_for_selector(f"td[data-sessions-of='{other}']:text-is('0')")
    assert other_client.get("/api/me").status_code == 401
    page.click(f"button[data-active-of='{name}']")
    page.wait_for_selector(f"tr.inactive[data-user='{name}']")
    assert client.get("/api/me").status_code == 401
    page.click(f"button[data-invite='{other}']")
    page.wait_for_selector("#invite-out:has-text('#invite=')")
    link = page.inner_text("#invite-out").split(": ", 1)[1]
    fresh = browser.new_page()
    fresh.goto(link)
    fresh.fill("#new-password", "brand-new-password")
    fresh.click("#invite-form button[type=submit]")
    fresh.wait_for_selector("body[data-ready='1']")
    assert urlsplit(fresh.url).path == "/"
    assert page.errors == []


@pytest.mark.parametrize("target", OFF_SITE[:7])
def test_logging_in_never_leaves_the_site(srv, browser, target):
    page = browser.new_page()
    page.goto(srv.url + "/login?next=" + quote(target, safe=""))
    page.fill("#username", "admin")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_load_state()
    page.wait_for_timeout(300)
    assert urlsplit(page.url).netloc == urlsplit(srv.url).netloc, page.url
    page.close()


def test_a_task_upload_names_the_line_of_its_error_in_the_file(srv, browser, tmp_path):
    """Blank lines are skipped before parsing: an error on the file's line 4 was reported as line 2, and the server's
    own errors named "request body item N", not the file."""
    page = log_in(srv, browser, "admin", ADMIN_PASSWORD, "/admin")
    good = json.dumps({"prompt": "p", "responses": ["a", "b"]})
    bad_json, bad_row = tmp_path / "bad-json.jsonl", tmp_path / "bad-row.jsonl"
    bad_json.write_text(f"{good}\n\n\n{{not json\n")
    bad_row.write_text(
        f"{good}\n\n" + json.dumps({"prompt": "p", "responses": ["only one"], "kind": "pairwise"}) + "\n"
    )
    page.set_input_files("#task-file", str(bad_json))
    page.wait_for_selector("#load-out:has-text('Not loaded')")
    assert "bad-json.jsonl:4: malformed JSON" in page.inner_text("#load-out")
    page.set_input_files("#task-file", str(bad_row))
    page.wait_for_selector("#load-out:has-text('bad-row.jsonl')")
    assert "bad-row.jsonl:3: field 'responses'" in page.inner_text("#load-out")
    assert page.errors == []
