"""The chat page in headless Chromium (Debian's package, driven by Playwright) against a real ``rlhfkit serve``: ask,
watch the answer stream in, thumbs, rate, flag, regenerate and prefer; the feedback lands in the database with the
right response ids; the user's own markup shows as text.

Set RLHFKIT_SCREENSHOT=docs/chat-page.png to refresh the screenshot in the docs (RLHFKIT_SCREENSHOT_MODEL: a
finished policy run to answer with, such as a demo's dpo/ folder, so the picture shows real answers).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlhfkit.registry.store import Registry
from rlhfkit.registry.tables import feedback, responses
from tests.feedback.test_browser import ARGS, CHROMIUM
from tests.production.conftest import ServeServer, tiny_policy
from tests.production.test_serve import rows

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium: run scripts/install-system-deps.sh"
)
XSS = '<img src=x onerror="window.__xss=1">'


@pytest.fixture
def chat_server(tmp_path):
    db = str(tmp_path / "chat.db")
    registry = Registry.open(db)
    model = os.environ.get("RLHFKIT_SCREENSHOT_MODEL") or str(tiny_policy(tmp_path, "tiny", 0))
    version = registry.register(model, kind="policy")
    registry.promote("champion", version.ref)
    registry.close()
    server = ServeServer(db, tmp_path, "--max-tokens", "16").start()
    yield server
    server.stop()


def test_chat_page_streams_answers_and_records_every_kind_of_feedback(chat_server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(chat_server.url + "/")
        user = page.evaluate("localStorage.getItem('rlhfkit-user')")
        assert user and user.startswith("web-")
        page.fill("#prompt", "what is the capital of france ? " + XSS)
        page.press("#prompt", "Enter")
        first = page.locator(".turn.assistant").first
        expect(first.locator("[data-testid=thumbs-up]")).to_be_visible(timeout=120_000)
        assert XSS in page.locator(".turn.user .bubble").first.text_content()  # shown as text, not markup
        first.locator("[data-testid=thumbs-up]").click()
        expect(first.locator(".note")).to_have_text("thanks")
        first.locator("[data-testid=rate-4]").click()
        expect(first.locator("[data-testid=rate-4]")).to_have_class("on")
        first.locator("[data-testid=flag]").select_option("untrue")
        expect(first.locator(".note")).to_have_text("flagged untrue")
        first.locator("[data-testid=regenerate]").click()
        expect(first.locator("[data-testid=prefer-second]")).to_be_visible(timeout=120_000)
        first.locator("[data-testid=prefer-second]").click()
        expect(page.locator("#status")).to_have_text("preference saved")
        assert page.evaluate("window.__xss") is None and errors == []
        answers = rows(chat_server.db, responses, user_id=user)
        assert len(answers) >= 2 and all(a["stream"] for a in answers)
        original = next(a for a in answers if a["regenerate_of"] is None)
        regenerated = next(a for a in answers if a["regenerate_of"] == original["id"])
        kinds = {f["kind"]: f for f in rows(chat_server.db, feedback, user_id=user)}
        assert set(kinds) == {"thumbs", "rating", "flag", "preference"}
        assert kinds["thumbs"]["value"] is True and kinds["thumbs"]["response_id"] == original["id"]
        assert kinds["rating"]["value"] == {"rating": 4, "scale": 5} and kinds["flag"]["value"] == "untrue"
        assert (kinds["preference"]["response_id"], kinds["preference"]["other_response_id"]) == (
            regenerated["id"],
            original["id"],
        )
        if os.environ.get("RLHFKIT_SCREENSHOT"):  # a fresh conversation for the docs' picture
            page.click("#new-chat")
            for i, question in enumerate(("what is four plus three ?", "how do i steal a car ?")):
                page.fill("#prompt", question)
                page.press("#prompt", "Enter")
                turn = page.locator(".turn.assistant").nth(i)
                expect(turn.locator("[data-testid=thumbs-up]").first).to_be_visible(timeout=120_000)
                if i == 0:
                    turn.locator("[data-testid=regenerate]").click()
                    expect(turn.locator("[data-testid=prefer-first]")).to_be_visible(timeout=120_000)
                    turn.locator("[data-testid=prefer-first]").click()
                    turn.locator("[data-testid=rate-5]").first.click()
                else:
                    turn.locator("[data-testid=thumbs-up]").click()
            page.screenshot(path=os.environ["RLHFKIT_SCREENSHOT"], full_page=True)
        browser.close()
