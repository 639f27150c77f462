"""``dermvlm chat``: a Gradio page to talk to the assistant about a skin image, over any OpenAI-compatible endpoint.

Upload or drop an image (or click a bundled CC0/CC BY example), see what the image itself shows (artefacts, skin
tone: ``image_facts_panel.py``), ask, and the answer streams in; then it becomes one card (``answer_card.py``): the
diagnosis read from it (``reading.py``), a "cut off" badge when it has no ``</answer>``, the differential, the
referral advice and the reasoning folded away; an abstention as such. The page names the model and the operating
point it reads answers at (``evaluation/operating_point.py``), and the research-use notice is always on it. Follow-up
questions keep the conversation about the same image; a new image starts a new one. A file that is not a readable
image, an endpoint that is down or refuses the key: each a one-line message in the page, nothing sent.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermvlm.app.access import page_access
from dermvlm.app.answer_card import CSS, card_html, streaming_html
from dermvlm.app.image_facts_panel import facts_markdown
from dermvlm.app.reading import RESEARCH_NOTICE, read_answer
from dermvlm.evaluation.operating_point import AS_GENERATED

DEFAULT_QUESTION = "What is the most likely diagnosis of this skin lesion? Think it through, then answer."
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # larger uploads are refused by the page's server before they are stored
CACHE_CLEANUP = (3600, 3600)  # every hour, uploads older than an hour are deleted (and all of them at exit)
MAX_SIDE = 1024  # the side images are downscaled to when the model's pixel budget is unknown
ELEM = {"upload": "upload", "question": "question", "ask": "ask", "chat": "conversation", "status": "status",
        "notice": "research-notice", "preview": "preview", "facts": "image-facts", "examples": "examples",
        "model": "model-line"}


class UploadError(ValueError):
    """An upload that is not an image the model can be asked about (the message says why and what to do)."""


@dataclass
class ChatSettings:
    endpoint: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    timeout: float = 120.0
    operating_point: str = AS_GENERATED  # the sentence the page states; a prior-corrected run sets its own
    image_side: int | None = None  # the model's (``models.pixels.image_side``); None: MAX_SIDE


def image_url(path: str | Path, max_side: int | None = None) -> str:
    """The upload as a ``data:`` URL, prepared exactly as a run stores its images (``datasets.images``: oriented,
    RGB, longer side at most ``max_side``, the model's image side; ``MAX_SIDE`` when unknown), or ``UploadError``
    naming the file."""
    from dermvlm.datasets.images import ImageProblem, load_image

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise UploadError(f"{name}: the upload did not arrive; upload the image again")
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name}: larger than {MAX_UPLOAD_BYTES // 2**20} MB; upload a smaller JPEG or PNG")
    try:
        data = load_image(path, max_side or MAX_SIDE).data
    except ImageProblem as err:
        raise UploadError(f"{name}: not an image that can be read ({err}); upload a JPEG or PNG photograph or "
                          "dermoscopy image") from None
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class AnswerAborted(RuntimeError):
    """The endpoint cut the answer off (``finish_reason: abort``); the partial text is not shown as an answer."""


class NotAnAnswer(RuntimeError):
    """The endpoint's reply is not a chat completion stream (an HTML page, a JSON error without a status)."""


def endpoint_error(err: Exception, settings: ChatSettings) -> str:
    """One line for a failed request: which endpoint, what went wrong, what to do."""
    import openai

    if isinstance(err, AnswerAborted | NotAnAnswer):
        return f"No answer: {err}"
    if isinstance(err, openai.AuthenticationError):
        return f"The endpoint {settings.endpoint} refused the API key (401): start the app with the server's key."
    if isinstance(err, openai.APIConnectionError | openai.APITimeoutError):
        return (f"Cannot reach the endpoint {settings.endpoint}: is the server running? "
                f"({type(err).__name__})")
    if isinstance(err, openai.NotFoundError):
        return f"The endpoint {settings.endpoint} does not serve a model named {settings.model!r} (404)."
    if isinstance(err, openai.APIStatusError):
        return f"The endpoint {settings.endpoint} answered {err.status_code}: {str(err)[:200]}"
    return f"The request to {settings.endpoint} failed: {type(err).__name__}: {str(err)[:200]}"


def conversation_messages(image: str, turns: list[tuple[str, str]], question: str) -> list[dict[str, Any]]:
    """OpenAI messages: the image with the first question, earlier answers as text, then the new question."""
    messages: list[dict[str, Any]] = []
    for i, (q, a) in enumerate([*turns, (question, None)]):
        content: Any = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": q}] if i == 0 \
            else q
        messages.append({"role": "user", "content": content})
        if a is not None:
            messages.append({"role": "assistant", "content": a})
    return messages


def stream_answer(settings: ChatSettings, messages: list[dict[str, Any]]) -> Iterator[tuple[str, str | None]]:
    """(the answer so far, the finish reason once the server gives one), after each streamed chunk."""
    from openai import OpenAI

    client = OpenAI(base_url=settings.endpoint, api_key=settings.api_key or "EMPTY", max_retries=0,
                    timeout=settings.timeout)
    stream = client.chat.completions.create(model=settings.model, messages=messages, stream=True,
                                            max_tokens=settings.max_tokens, temperature=settings.temperature)
    kind = stream.response.headers.get("content-type", "").split(";")[0].strip()
    if kind != "text/event-stream":
        stream.close()
        raise NotAnAnswer(f"the endpoint {settings.endpoint} answered {kind or 'without a content type'}, not a chat "
                          "completion stream: is it an OpenAI-compatible base URL (ending in /v1)?")
    text = ""
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason
        if finish == "abort":
            raise AnswerAborted(f"the server at {settings.endpoint} stopped mid-answer (aborted after {len(text)} "
                                "characters): is it shutting down? Ask again once it is back.")
        text += chunk.choices[0].delta.content or ""
        yield text, finish


def build_app(settings: ChatSettings, examples: list[tuple[str, str]] | None = None):
    """The Gradio Blocks of the chat page (``examples``: image paths with their captions)."""
    import gradio as gr

    from dermvlm.app.example_gallery import example_gallery
    from dermvlm.knowledge import load_graph

    kg = load_graph()
    examples = examples or []

    def fresh() -> dict[str, Any]:
        return {"image": None, "turns": [], "name": None}

    def on_upload(path: str | None, state: dict[str, Any]):
        state = fresh()
        if not path:
            return state, None, "", [], "Upload or drop a skin image to start."
        try:
            state["image"] = image_url(path, settings.image_side)
        except UploadError as err:
            return state, None, "", [], f"⚠️ {err}"
        state["name"] = Path(path).name
        return state, path, facts_markdown(path), [], f"Image {state['name']} ready: ask a question."

    def on_ask(question: str, state: dict[str, Any], chat: list[dict[str, Any]]):
        question = (question or "").strip() or DEFAULT_QUESTION
        if not state or not state.get("image"):
            yield state, chat, "⚠️ Upload a readable skin image first (JPEG or PNG)."
            return
        messages = conversation_messages(state["image"], state["turns"], question)
        chat = [*chat, {"role": "user", "content": question}, {"role": "assistant", "content": streaming_html("")}]
        text, finish = "", None
        try:
            for text, finish in stream_answer(settings, messages):  # noqa: B007 (finish: the last chunk's)
                chat[-1] = {"role": "assistant", "content": streaming_html(text)}
                yield state, chat, "Answering…"
        except Exception as err:  # the endpoint's failures are shown in the page, never as a traceback
            yield state, chat[:-2], f"⚠️ {endpoint_error(err, settings)}"
            return
        chat[-1] = {"role": "assistant", "content": card_html(read_answer(text, kg, truncated=finish == "length"))}
        yield {**state, "turns": [*state["turns"], (question, text)]}, chat, "Done."

    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
    with gr.Blocks(title="dermvlm assistant", delete_cache=CACHE_CLEANUP) as app:
        gr.Markdown(f"## dermvlm assistant\n{RESEARCH_NOTICE}", elem_id=ELEM["notice"])
        gr.Markdown(f"Model **{settings.model}** at `{settings.endpoint}` · operating point: "
                    f"{settings.operating_point}", elem_id=ELEM["model"])
        state = gr.State(fresh())
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Skin image (drop here or click)", file_types=["image"], type="filepath",
                                 elem_id=ELEM["upload"])
                preview = gr.Image(label="The image sent to the model", interactive=False, height=220,
                                   elem_id=ELEM["preview"])
                facts = gr.Markdown(elem_id=ELEM["facts"])
                example_gallery(examples, upload, ELEM["examples"])
            with gr.Column(scale=2):
                chat = gr.Chatbot(label="Conversation", height=None, min_height=360, max_height=760,
                                  elem_id=ELEM["chat"])
                question = gr.Textbox(label="Question", value=DEFAULT_QUESTION, lines=2, elem_id=ELEM["question"])
                ask = gr.Button("Ask", variant="primary", elem_id=ELEM["ask"])
                status = gr.Markdown("Upload or drop a skin image to start.", elem_id=ELEM["status"])
        upload.change(on_upload, [upload, state], [state, preview, facts, chat, status])
        ask.click(on_ask, [question, state, chat], [state, chat, status])
        question.submit(on_ask, [question, state, chat], [state, chat, status])
    app.dermvlm_theme = theme
    return app


def launch(settings: ChatSettings, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
           password: str | None = None):
    """Start the page on ``host:port`` (127.0.0.1 by default); returns the Gradio app (running in the background
    when ``block`` is false). Uploads are limited to ``MAX_UPLOAD_BYTES`` and deleted after ``CACHE_CLEANUP``; a
    page reachable beyond this machine needs ``password`` (``page_access``)."""
    from dermvlm.app.example_gallery import sample_examples

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    auth = page_access(host, password)
    examples = sample_examples()
    app = build_app(settings, examples)
    app.queue()
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, ssr_mode=False,
               show_error=False, theme=app.dermvlm_theme, css=CSS, quiet=True, max_file_size=MAX_UPLOAD_BYTES,
               auth=auth, auth_message="dermvlm assistant: the password the page was started with (--page-password)",
               allowed_paths=sorted({str(Path(path).parent) for path, _ in examples}))
    return app
