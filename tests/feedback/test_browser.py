"""The labelling page in headless Chromium (Debian's package, driven by Playwright): log in, label with
the mouse and with the keyboard, check the labels landed; hostile model text shows as text.

Set RLHFKIT_SCREENSHOT=docs/annotate-page.png to refresh the screenshot in the docs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.feedback.conftest import Server, bootstrap

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium: run scripts/install-system-deps.sh"
)
ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
TASKS = [
    {
        "prompt": "How do I reverse a list in **Python**? " + XSS,
        "responses": [
            "Use slicing:\n\n```python\nitems[::-1]\n```\n\nor call `items.reverse()` to do it in place.",
            "Call `reversed(items)` which returns an iterator. " + XSS,
        ],
        "kind": "pairwise",
    },
    {"prompt": "Rank these answers to 2 + 2.", "responses": ["4", "22", "five"], "kind": "ranking"},
    {"prompt": "Rate each greeting.", "responses": ["Hello! How can I help?", "what"], "kind": "rating", "scale": 5},
    {
        "prompt": "Are these summaries faithful?",
        "responses": ["Yes, it says so.", "It says the opposite."],
        "kind": "thumbs",
    },
]


@pytest.fixture
def app_server(tmp_path_factory):
    # A fresh database per test: with round-robin the first item is the one with fewest labels, so
    # earlier tests' labels would change which item a new annotator sees first.
    tmp = tmp_path_factory.mktemp("browser")
    bootstrap(str(tmp / "labels.db"))
    srv = Server(str(tmp / "labels.db"), tmp, "--overlap", "100").start()
    srv.ids = srv.load(TASKS)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(app_server, browser, width=1280, height=900):
    name, _ = app_server.new_user()
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app_server.url + "/")
    assert page.url.endswith("/login")
    page.fill("#username", name)
    page.fill("#password", "a-good-password")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("body[data-ready='1']")
    page.errors = errors
    return name, page


def labels_of(app_server, name):
    return {lab["task_id"]: lab for lab in app_server.admin.get("/api/labels", params={"annotator": name}).json()}


def shown_order(page):
    return [int(x) for x in page.eval_on_selector_all(".response", "els => els.map(e => e.dataset.index)")]


def wait_for_task(page, task_id):
    page.wait_for_selector(f"body[data-task='{task_id}']", state="attached")


def test_label_every_type_with_the_mouse(app_server, browser):
    name, page = open_page(app_server, browser)
    wait_for_task(page, app_server.ids[0])
    pair_order = shown_order(page)
    page.click("button[data-choice]:has-text('B is better')")
    page.click(f".response[data-index='{pair_order[0]}'] button[data-flag='untrue']")
    page.fill("#reason", "B is shorter but wrong about in-place")
    page.click("#submit")

    wait_for_task(page, app_server.ids[1])
    order = shown_order(page)
    last = page.locator(".response").nth(2)
    last.locator("button[aria-label='Move up']").click()  # third -> second
    page.locator(".response").nth(1).drag_to(page.locator(".response").nth(0))  # and to the top by dragging
    ranked = shown_order(page)
    assert ranked[0] == order[2], "dragging to the top card should make it first"
    page.click("#submit")

    wait_for_task(page, app_server.ids[2])
    rate_order = shown_order(page)
    page.click(f".response[data-index='{rate_order[0]}'] button[data-rating='4']")
    page.click(f".response[data-index='{rate_order[1]}'] button[data-rating='2']")
    page.click("#submit")

    wait_for_task(page, app_server.ids[3])
    thumb_order = shown_order(page)
    page.click(f".response[data-index='{thumb_order[0]}'] button[data-thumb='up']")
    page.click(f".response[data-index='{thumb_order[1]}'] button[data-thumb='down']")
    page.click("#submit")
    wait_for_task(page, "none")

    got = labels_of(app_server, name)
    pair, rank, rate, thumbs = (got[i] for i in app_server.ids)
    assert pair["answer"] == {"choice": pair_order[1]} and pair["flags"] == {str(pair_order[0]): ["untrue"]}
    assert pair["reason"] == "B is shorter but wrong about in-place"
    assert rank["answer"]["ranking"] == ranked
    assert page.errors == []
    # Ratings and thumbs are stored by response index, whatever order they were shown in.
    assert rate["answer"]["ratings"] == [{rate_order[0]: 4, rate_order[1]: 2}[i] for i in (0, 1)]
    assert thumbs["answer"]["thumbs"] == [{thumb_order[0]: True, thumb_order[1]: False}[i] for i in (0, 1)]


def test_pairwise_choice_maps_to_the_response_shown(app_server, browser):
    name, page = open_page(app_server, browser)
    order = shown_order(page)
    page.click("button[data-choice]:has-text('A is better')")
    page.click(f".response[data-index='{order[1]}'] button[data-flag='harmful']")
    page.click("#submit")
    wait_for_task(page, app_server.ids[1])
    label = labels_of(app_server, name)[app_server.ids[0]]
    assert label["answer"] == {"choice": order[0]} and label["flags"] == {str(order[1]): ["harmful"]}


def test_label_every_type_with_the_keyboard(app_server, browser):
    name, page = open_page(app_server, browser)
    order = shown_order(page)
    page.keyboard.press("2")  # B is better
    page.keyboard.press("h")  # flag the focused response (A) as harmful
    page.keyboard.press("r")  # write a reason
    page.keyboard.type("keyboard only")
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")

    wait_for_task(page, app_server.ids[1])
    order_rank = shown_order(page)
    page.keyboard.press("Shift+ArrowDown")  # move the focused (first) response down one
    page.keyboard.press("j")  # focus follows it; go to the next one
    page.keyboard.press("3")  # put that one at rank 3
    expected = shown_order(page)
    assert expected != order_rank
    page.keyboard.press("Enter")

    wait_for_task(page, app_server.ids[2])
    order_rate = shown_order(page)
    page.keyboard.press("5")
    page.keyboard.press("1")
    page.keyboard.press("Enter")

    wait_for_task(page, app_server.ids[3])
    order_thumbs = shown_order(page)
    page.keyboard.press("y")
    page.keyboard.press("n")
    page.keyboard.press("Enter")
    wait_for_task(page, "none")

    got = labels_of(app_server, name)
    pair, rank, rate, thumbs = (got[i] for i in app_server.ids)
    assert pair["answer"] == {"choice": order[1]} and pair["flags"] == {str(order[0]): ["harmful"]}
    assert pair["reason"] == "keyboard only"
    assert rank["answer"]["ranking"] == expected
    ratings = {order_rate[0]: 5, order_rate[1]: 1}
    assert rate["answer"]["ratings"] == [ratings[0], ratings[1]]
    ups = {order_thumbs[0]: True, order_thumbs[1]: False}
    assert thumbs["answer"]["thumbs"] == [ups[0], ups[1]]
    assert page.errors == []


def test_model_text_is_shown_as_text_never_run(app_server, browser):
    name, page = open_page(app_server, browser)
    assert page.evaluate("window.__xss") is None
    assert page.locator("#prompt img, #prompt script, .response img, .response script").count() == 0
    assert XSS in page.inner_text("#prompt")
    assert page.locator("#prompt strong").inner_text() == "Python"  # markdown still rendered
    assert page.locator(".response pre code").inner_text().strip() == "items[::-1]"
    page.keyboard.press("d")  # word diff of the two responses, also built from text
    assert page.locator(".response del").count() > 0 and page.locator(".response ins").count() > 0
    assert page.evaluate("window.__xss") is None and page.locator(".response img").count() == 0


def test_usable_at_phone_width(app_server, browser):
    name, page = open_page(app_server, browser, width=390, height=844)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    boxes = [page.locator(".response").nth(i).bounding_box() for i in range(2)]
    assert boxes[1]["y"] > boxes[0]["y"] + boxes[0]["height"] - 1, "responses should stack on a phone"
    page.click("button[data-choice='tie']")
    page.click("#submit")
    wait_for_task(page, app_server.ids[1])
    assert labels_of(app_server, name)[app_server.ids[0]]["answer"] == {"choice": "tie"}


SHOWCASE = [
    {
        "prompt": "How do I reverse a list in Python without changing the original?",
        "responses": [
            "Use slicing, which returns a **new** list:\n\n```python\nitems = [1, 2, 3]\nbackwards = items[::-1]\n```\n\n"
            "- `items[::-1]` copies, so `items` is unchanged\n- `items.reverse()` reverses *in place* instead",
            "Call `items.reverse()` and then use `items`. This returns a new list:\n\n```python\nitems.reverse()\n```\n\n"
            "- `reversed(items)` is the same thing",
        ],
        "kind": "pairwise",
    }
] + TASKS[1:]


def test_screenshot_of_the_labelling_page(browser, tmp_path):
    bootstrap(str(tmp_path / "labels.db"))
    srv = Server(str(tmp_path / "labels.db"), tmp_path).start()
    try:
        srv.ids = srv.load(SHOWCASE)
        name, page = open_page(srv, browser, width=1280, height=820)
        order = shown_order(page)
        correct = order.index(0)  # the response that really leaves the original alone
        page.click(f"button[data-choice='{order[correct]}']")
        page.click(".response[data-index='1'] button[data-flag='untrue']")
        page.fill("#reason", "Slicing copies; the other mutates the list and wrongly says it returns a new one.")
        page.keyboard.press("Escape")
        page.keyboard.press("d")
        page.keyboard.press("d")
        path = tmp_path / "annotate-page.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000 and page.errors == []
        if os.environ.get("RLHFKIT_SCREENSHOT"):
            shutil.copy(path, os.environ["RLHFKIT_SCREENSHOT"])
    finally:
        srv.stop()


def test_a_changed_answer_after_lost_replies_is_not_shown_as_saved(app_server, browser):
    """Every reply to a submission is lost, though the server stored it ("Not saved"); the annotator changes the
    answer and submits again. Sent under the same key, the server replayed the stored answer and the page said
    "Saved" and moved on, the change lost. Now the changed answer goes under a new key, and the server's refusal
    (this item is labelled already) is shown."""
    name, page = open_page(app_server, browser)
    wait_for_task(page, app_server.ids[0])
    lost = []

    def lose_the_reply(route):
        if route.request.method == "POST" and len(lost) < 6:  # the page's six tries at the first submission
            lost.append(route.fetch().status)  # the server answers; the page never hears it
            route.abort()
        else:
            route.continue_()

    page.route("**/api/labels", lose_the_reply)
    order = shown_order(page)
    page.click("button[data-choice]:has-text('A is better')")
    page.click("#submit")
    page.wait_for_selector(".toast.show:has-text('Not saved')", timeout=30_000)
    assert lost[0] == 201 and set(lost[1:]) == {200}  # stored once, then replayed
    page.click("button[data-choice]:has-text('B is better')")
    page.click("#submit")
    page.wait_for_selector(".toast.show:has-text('Not saved')", timeout=30_000)
    wait_for_task(page, app_server.ids[0])  # still on the item, not moved on as if the change were saved
    assert labels_of(app_server, name)[app_server.ids[0]]["answer"] == {"choice": order[0]}
    assert page.errors == []
