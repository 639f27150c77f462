"""The chat app in a real headless browser (Debian's Chromium driven by Playwright) against a real vLLM server:
upload, see what the image itself shows, ask, read the answer as one card with its differential, referral advice and
folded reasoning; click an example thumbnail; a cut-off answer badged as such; a broken upload, a dead endpoint and
a wrong API key each give one line in the page. Also the answer reading on hand-written answers."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
from pathlib import Path

import pytest
from conftest import VLLM_API_KEY

from dermvlm.app.answer_card import card_html
from dermvlm.app.chat import ChatSettings, UploadError, image_url, launch
from dermvlm.app.reading import read_answer
from dermvlm.knowledge import load_graph
from dermvlm.serving.client import served_image_side

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "dermvlm" / "sample_data" / "isic" / "ISIC_0000013.jpg"


@pytest.fixture(scope="module")
def kg():
    return load_graph()


def test_a_malignant_answer_gets_urgent_referral_and_a_differential(kg):
    r = read_answer("<think>Irregular pigment network; differential: dysplastic naevus, seborrhoeic keratosis."
                    "</think><answer>melanoma</answer>", kg)
    assert r.diagnosis == "melanoma" and r.malignancy_plausible and not r.abstained
    assert "urgently" in r.referral and r.differential and not r.differential_from_graph
    assert r.reasoning.startswith("Irregular") and r.answer == "melanoma" and not r.cut_off
    card = card_html(r)
    assert "Referral advice" in card and "Differential" in card and "badge-cut-off" not in card
    assert "<details" in card and "Irregular pigment network" in card  # the reasoning, folded away


def test_a_benign_answer_with_a_malignant_differential_still_refers(kg):
    r = read_answer("<think>Could be melanoma, but the symmetry favours a nevus.</think>"
                    "<answer>melanocytic nevus</answer>", kg)
    assert r.diagnosis == "melanocytic_nevus" and r.malignancy_plausible
    assert "Melanoma" in r.referral or "melanoma" in r.referral


def test_without_a_named_differential_the_graph_gives_one_and_says_so(kg):
    r = read_answer("This is most likely a basal cell carcinoma.", kg)
    assert r.diagnosis == "basal_cell_carcinoma" and r.differential and r.differential_from_graph
    assert "from the knowledge graph" in card_html(r) and r.referral and not r.cut_off  # free text that ended


def test_an_answer_cut_off_before_its_closing_tag_is_badged_and_read_from_what_it_said(kg):
    """The answer began but never closed: the diagnosis is read from the answer so far (not from the reasoning's
    melanoma), and the card says it was cut off."""
    r = read_answer("<think>Pigmented macule with a regular network; melanoma is considered, but the border is "
                    "smooth. It grows.</think><answer>melanocytic nevus", kg)
    assert r.cut_off == "answer" and r.answer == "melanocytic nevus" and r.read_from == "unfinished answer"
    assert r.diagnosis == "melanocytic_nevus" and r.differential == ["melanoma"] and "melanoma" in r.referral
    card = card_html(r)
    assert card.count('class="answer-card"') == 1 and "badge-cut-off" in card and "unfinished answer" in card
    assert "No diagnosis" not in card
    free = "This looks like a seborrhoeic keratosis, a benign"
    assert read_answer(free, kg, truncated=True).cut_off == "answer" and not read_answer(free, kg).cut_off
    assert read_answer("<think>Brown papule.</think>", kg).cut_off == "answer"  # ended before its answer


def test_an_answer_cut_off_inside_its_reasoning_says_so(kg):
    r = read_answer("<think>Pigmented macule; melanoma is considered, but the network is regular. Most likely a "
                    "melanocytic nevus because", kg)
    assert r.cut_off and r.answer == "" and "melanoma" in r.reasoning
    assert r.cut_off == "reasoning" and r.read_from == "reasoning"
    assert "cut off" in card_html(r) and "Melanoma" in ", ".join(r.differential).title()
    assert r.malignancy_plausible and r.referral  # melanoma was in the differential


def test_abstention_is_shown_as_such(kg):
    r = read_answer("<answer>This is not an image of skin; I cannot tell.</answer>", kg)
    assert r.abstained and "The model abstained" in card_html(r) and not r.referral


def test_an_unreadable_upload_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UploadError, match=r"broken\.jpg: not an image that can be read"):
        image_url(bad)
    assert image_url(SAMPLE).startswith("data:image/jpeg;base64,")


def test_the_page_sends_images_at_the_served_models_pixel_budget(vllm_server, trained_run, tmp_path):
    """`dermvlm chat --endpoint` on this machine reads the served model's image side from its folder (for a LoRA
    adapter, its base's), and the page downscales to it, not to 1024 px."""
    from PIL import Image

    from dermvlm.models.pixels import image_side

    side = served_image_side(vllm_server.base_url, "derm", VLLM_API_KEY)
    assert side == image_side(trained_run["base"]) == 140  # the nano build's budget: 112x112 px (2:1 → 140x56)
    assert served_image_side(vllm_server.base_url, "derm", "not-the-key") is None  # unknown: 1024 px as before
    photo = tmp_path / "photo.jpg"
    Image.open(SAMPLE).convert("RGB").resize((1600, 1200)).save(photo)
    sent = image_url(photo, side)
    assert Image.open(io.BytesIO(base64.b64decode(sent.split(",", 1)[1]))).size == (140, 105)


def test_an_answer_the_server_aborts_is_an_error_not_an_answer():
    """vLLM ends a stream in flight with ``finish_reason: abort`` when it shuts down: the page must not show the
    partial text as the model's answer."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dermvlm.app.chat import AnswerAborted, endpoint_error, stream_answer

    def chunk(content: str | None, finish: str | None) -> bytes:
        delta = {"content": content} if content is not None else {}
        body = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "derm",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n".encode()

    class Aborting(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self.wfile.write(chunk("<think>Here: a", None) + chunk(None, "abort") + b"data: [DONE]\n\n")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Aborting)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        settings = ChatSettings(endpoint=f"http://127.0.0.1:{httpd.server_port}/v1", model="derm", timeout=10)
        seen = []
        with pytest.raises(AnswerAborted) as err:
            for text in stream_answer(settings, [{"role": "user", "content": "What is this?"}]):
                seen.append(text)
        assert seen == [("<think>Here: a", None)]
        line = endpoint_error(err.value, settings)
        assert line.startswith("No answer: the server at http://127.0.0.1:") and "stopped mid-answer" in line
        assert "\n" not in line
    finally:
        httpd.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        if os.environ.get("DERMVLM_REQUIRE_BROWSER"):
            pytest.fail("DERMVLM_REQUIRE_BROWSER is set but Chromium is not installed (make browser)")
        pytest.skip("Chromium is not installed: `make browser` (Debian's chromium, as root) runs these tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def apps(vllm_server):
    """Four pages: the real server with its key, the same allowed 8 tokens an answer (every answer is cut off), the
    same with a wrong key, and an endpoint nobody serves."""
    made = {}
    for name, endpoint, key, max_tokens in (("live", vllm_server.base_url, VLLM_API_KEY, 320),
                                            ("short", vllm_server.base_url, VLLM_API_KEY, 8),
                                            ("wrong_key", vllm_server.base_url, "not-the-key", 320),
                                            ("dead", f"http://127.0.0.1:{_free_port()}/v1", None, 320)):
        port = _free_port()
        side = served_image_side(endpoint, "derm", key)  # as `dermvlm chat --endpoint` finds it (live: 140 px)
        app = launch(ChatSettings(endpoint=endpoint, model="derm", api_key=key, max_tokens=max_tokens,
                                  image_side=side), port=port, block=False)
        made[name] = (app, f"http://127.0.0.1:{port}")
    yield {k: url for k, (_, url) in made.items()}
    for app, _ in made.values():
        app.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#research-notice").wait_for(timeout=60_000)
    return page


def _upload(page, path: Path | dict) -> None:
    page.locator("#upload input[type=file]").set_input_files(path)


def test_upload_ask_and_read_the_answer_in_a_real_browser(browser, apps, tmp_path):
    page = _open(browser, apps["live"])
    assert "Research use only" in page.locator("#research-notice").inner_text()
    model_line = page.locator("#model-line").inner_text()
    assert "Model derm at" in model_line and "operating point: as generated" in model_line
    _upload(page, SAMPLE)
    page.get_by_text("ISIC_0000013.jpg ready: ask a question").wait_for(timeout=30_000)
    facts = page.locator("#image-facts").inner_text()  # what the audit measures on this image, beside it
    assert "Artefacts: dermoscopy gel bubbles" in facts and "Skin tone: not estimated: white balance" in facts
    assert "Why it matters" in facts
    page.locator("#ask").click()
    page.locator("#status").get_by_text("Done.").wait_for(timeout=120_000)
    cards = page.locator("#conversation .answer-card")
    assert cards.count() == 1 and page.locator("#answer").count() == 0  # one card, no second panel
    card = cards.first.inner_text()
    # the tiny model's reply as one card: a diagnosis (or none, or an abstention) with its referral advice
    assert any(form in card for form in ("Referral advice", "abstained", "No diagnosis", "No answer")), card
    reasoning = cards.first.locator("details.card-reasoning")
    assert reasoning.get_attribute("open") is None and "Reasoning" in reasoning.locator("summary").inner_text()
    assert "most likely diagnosis" in page.locator("#conversation").inner_text()
    assert page.locator("#research-notice").is_visible()  # still there after the answer
    # A follow-up keeps the conversation about the same image: a second card.
    page.locator("#question textarea").fill("Is it serious?")
    page.locator("#ask").click()
    page.locator("#conversation").get_by_text("Is it serious?").wait_for(timeout=60_000)
    page.locator("#status").get_by_text("Done.").wait_for(timeout=120_000)
    assert cards.count() == 2 and "ISIC_0000013" in page.locator("#upload").inner_text()  # the same image
    shot = Path(os.environ.get("DERMVLM_CHAT_SCREENSHOT") or tmp_path / "chat.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def test_an_example_thumbnail_its_image_facts_and_a_cut_off_answer(browser, apps):
    """Click a labelled example (a photo with ink marks around the lesion), read what the image shows, ask on a
    page allowed 8 tokens an answer: the card carries the cut-off badge."""
    page = _open(browser, apps["short"])
    thumbs = page.locator("#examples img")
    thumbs.first.wait_for(timeout=30_000)
    labels = page.locator("#examples").inner_text()
    assert thumbs.count() == 6 and all(label in labels for label in ("melanoma", "basal cell carcinoma",
                                                                        "actinic keratosis"))
    page.locator("#examples button", has_text="actinic keratosis").click()
    page.get_by_text("PAT_1067_284_533.jpg ready: ask a question").wait_for(timeout=30_000)
    facts = page.locator("#image-facts").inner_text()
    assert "Artefacts: ink or marker lines" in facts and "Skin tone: very light (ITA" in facts
    assert page.locator("#preview img").count() == 1
    page.locator("#ask").click()
    page.locator("#status").get_by_text("Done.").wait_for(timeout=120_000)
    card = page.locator("#conversation .answer-card")
    assert card.count() == 1 and card.locator(".badge-cut-off").inner_text() == "cut off"
    assert "Cut off" in card.locator(".card-note").inner_text()
    page.close()


def test_a_broken_upload_gives_one_line_and_sends_nothing(browser, apps):
    page = _open(browser, apps["live"])
    _upload(page, {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8 not an image"})
    page.get_by_text("broken.jpg: not an image that can be read").wait_for(timeout=30_000)
    page.locator("#ask").click()
    page.get_by_text("Upload a readable skin image first").wait_for(timeout=30_000)
    assert "most likely diagnosis" not in page.locator("#conversation").inner_text()
    page.close()


@pytest.mark.parametrize(("app", "message"), [("dead", "Cannot reach the endpoint"),
                                              ("wrong_key", "refused the API key")])
def test_endpoint_failures_are_one_line_in_the_page(browser, apps, app, message):
    page = _open(browser, apps[app])
    _upload(page, SAMPLE)
    page.get_by_text("ready: ask a question").wait_for(timeout=30_000)
    page.locator("#ask").click()
    page.locator("#status").get_by_text(message).wait_for(timeout=60_000)
    assert "Traceback" not in page.content()
    page.close()


def test_an_endpoint_answering_html_is_named_not_shown_as_an_empty_answer():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dermvlm.app.chat import NotAnAnswer, endpoint_error, stream_answer

    class Html(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        settings = ChatSettings(endpoint=f"http://127.0.0.1:{httpd.server_port}/v1", model="derm", timeout=10)
        with pytest.raises(NotAnAnswer) as err:
            list(stream_answer(settings, [{"role": "user", "content": "What is this?"}]))
        line = endpoint_error(err.value, settings)
        assert "answered text/html, not a chat completion stream" in line and settings.endpoint in line
    finally:
        httpd.shutdown()


def test_the_page_limits_uploads_and_needs_its_password_beyond_loopback():
    import httpx

    from dermvlm.app.access import PageAccessError, page_access

    with pytest.raises(PageAccessError, match="--page-password"):
        page_access("0.0.0.0", None)
    assert page_access("127.0.0.1", None) is None and page_access("::1", None) is None
    port = _free_port()
    app = launch(ChatSettings(endpoint=f"http://127.0.0.1:{_free_port()}/v1", model="derm"), port=port, block=False,
                 password="s3cret")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            assert c.post("/gradio_api/upload", files={"files": ("a.jpg", SAMPLE.read_bytes())}).status_code == 401
            assert c.post("/login", data={"username": "anyone", "password": "wrong"}).status_code == 400
            assert c.post("/login", data={"username": "anyone", "password": "s3cret"}).status_code == 200
            assert c.post("/gradio_api/upload", files={"files": ("a.jpg", SAMPLE.read_bytes())}).status_code == 200
            big = c.post("/gradio_api/upload", files={"files": ("big.jpg", b"\xff" * (21 * 2**20))})
            assert big.status_code == 413 and "maximum allowed size" in big.text
    finally:
        app.close()
