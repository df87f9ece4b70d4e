"""The demo app in a real browser: Debian's Chromium driven by Playwright (`make test-browser`
installs both; Playwright needs no browser download with `executable_path`). A person's path
through the page: click an example question, send it, watch the steps appear, open the search,
read the answer. A passage holding HTML and a Markdown link must reach the page inert."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers import Scripted
from playwright.sync_api import expect, sync_playwright

from research_r1 import evaluation
from research_r1.protocol import SEARCH_R1, TEMPLATES
from research_r1.retrieval import Passage
from research_r1.space.app import build_app
from research_r1.tiny import EOS, build_tokenizer

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS", "outputs/browser"))

QUESTION = "who wrote hamlet?"
EVIL = "<img src=x onerror=\"document.title='pwned'\"> [a link](http://example.com)"
TURNS = [
    "<think> I need the author of Hamlet. </think><search> hamlet author </search>",
    "<think> The first passage says Shakespeare. </think><answer> William Shakespeare </answer>",
]
PASSAGES = [
    Passage("1", '"Hamlet"\nHamlet is a tragedy written by William Shakespeare.', 2.0),
    Passage("2", f"{EVIL}\n{EVIL} http://example.com", 1.0),
]


class Found:
    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [PASSAGES[:k] for _ in queries]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    config = root / "retriever.yaml"
    config.write_text("type: bm25\nindex: none\ncorpus: none\n")
    texts = [TEMPLATES["search_r1"].user, *TURNS, *(p.text for p in PASSAGES), EOS]
    tokenizer = build_tokenizer(texts, SEARCH_R1.tags, chat=True)
    options = evaluation.PlayArguments(
        model="scripted",
        template="search_r1",
        retriever=str(config),
        top_k=2,
        max_turns=2,
        backend="transformers",
    )
    plan = evaluation.agent_plan(options)
    scripted = Scripted(tokenizer, {QUESTION: TURNS})  # writes TURNS in order
    app = build_app(plan, scripted, tokenizer, Found(), examples=[QUESTION])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app.queue(max_size=4).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    yield f"http://127.0.0.1:{port}"
    app.close()


@pytest.fixture
def page(page_url):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test-browser` installs it")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(page_url)
        yield page
        browser.close()


def test_an_example_question_shows_the_steps_then_the_answer(page):
    page.get_by_role("button", name=QUESTION).click()
    box = page.get_by_placeholder("Ask a question")
    expect(box).to_have_value(QUESTION)
    box.press("Enter")

    chat = page.get_by_role("log", name="chatbot conversation")
    expect(chat.get_by_text("William Shakespeare", exact=True)).to_be_visible(timeout=30_000)
    expect(chat.get_by_text("Search: hamlet author")).to_be_visible()
    expect(chat.get_by_text("Thinking")).to_have_count(2)
    chat.get_by_text("Search: hamlet author").click()  # open the step: the passages it read
    expect(chat.get_by_text("Hamlet is a tragedy written by William Shakespeare.")).to_be_visible()
    expect(page.get_by_label("Running")).to_have_value(
        re.compile("^model scripted · template search_r1 ")
    )
    page.wait_for_timeout(1000)  # the step's opening animation, for the screenshot
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "space.png", full_page=True)


def test_html_and_links_in_a_passage_stay_text(page):
    box = page.get_by_placeholder("Ask a question")
    box.fill(QUESTION)
    box.press("Enter")
    chat = page.get_by_role("log", name="chatbot conversation")
    expect(chat.get_by_text("William Shakespeare", exact=True)).to_be_visible(timeout=30_000)
    chat.get_by_text("Search: hamlet author").click()
    expect(chat.get_by_text("<img src=x", exact=False).first).to_be_visible()
    assert chat.locator("img").count() == 0
    assert chat.locator("a").count() == 0
    assert page.title() != "pwned"


def test_the_leaderboard_tab_filters_by_setting(page):
    page.get_by_role("tab", name="Leaderboard").click()
    expect(page.get_by_text("Search-R1 base PPO").first).to_be_visible()
    expect(page.get_by_text("reported").first).to_be_visible()
    page.get_by_label("Setting").click()
    page.get_by_role("option", name="research · wiki-18, e5-base-v2 · top-5").click()
    expect(page.get_by_text("Search-R1 base PPO").filter(visible=True)).to_have_count(0)
    expect(page.get_by_text("naive RAG").filter(visible=True)).to_have_count(1)
    page.wait_for_timeout(1000)  # the chart redraws
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "leaderboard.png", full_page=True)
