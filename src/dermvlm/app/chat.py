"""``dermvlm chat``: a Gradio page to talk to the assistant about a skin image, over any OpenAI-compatible endpoint.

Upload or drop an image (or pick a bundled CC0/CC BY example), ask, and the answer streams in; then the final
answer, the differential and the referral advice are shown plainly (``reading.py``), the reasoning in a collapsible
panel, an abstention as such, and the research-use notice always. Follow-up questions keep the conversation about
the same image; a new image starts a new one. A file that is not a readable image, an endpoint that is down or
refuses the key: each a one-line message in the page, nothing sent.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermvlm.app.reading import RESEARCH_NOTICE, read_answer

DEFAULT_QUESTION = "What is the most likely diagnosis of this skin lesion? Think it through, then answer."
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_SIDE = 1024  # images are downscaled to this side before they are sent
ELEM = {"upload": "upload", "question": "question", "ask": "ask", "chat": "conversation", "answer": "answer",
        "reasoning": "reasoning", "status": "status", "notice": "research-notice", "preview": "preview"}


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


def image_url(path: str | Path) -> str:
    """The upload as a JPEG ``data:`` URL (downscaled to ``MAX_SIDE``), or ``UploadError`` naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise UploadError(f"{name}: the upload did not arrive; upload the image again")
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name}: larger than {MAX_UPLOAD_BYTES // 2**20} MB; upload a smaller JPEG or PNG")
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise UploadError(f"{name}: not an image that can be read ({type(err).__name__}); upload a JPEG or PNG "
                          "photograph or dermoscopy image") from None
    im.thumbnail((MAX_SIDE, MAX_SIDE))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"


class AnswerAborted(RuntimeError):
    """The endpoint cut the answer off (``finish_reason: abort``); the partial text is not shown as an answer."""


def endpoint_error(err: Exception, settings: ChatSettings) -> str:
    """One line for a failed request: which endpoint, what went wrong, what to do."""
    import openai

    if isinstance(err, AnswerAborted):
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


def stream_answer(settings: ChatSettings, messages: list[dict[str, Any]]) -> Iterator[str]:
    """The answer so far, after each streamed chunk."""
    from openai import OpenAI

    client = OpenAI(base_url=settings.endpoint, api_key=settings.api_key or "EMPTY", max_retries=0,
                    timeout=settings.timeout)
    stream = client.chat.completions.create(model=settings.model, messages=messages, stream=True,
                                            max_tokens=settings.max_tokens, temperature=settings.temperature)
    text = ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            yield text
        if chunk.choices and chunk.choices[0].finish_reason == "abort":
            raise AnswerAborted(f"the server at {settings.endpoint} stopped mid-answer (aborted after {len(text)} "
                                "characters): is it shutting down? Ask again once it is back.")


def build_app(settings: ChatSettings, examples: list[str] | None = None):
    """The Gradio Blocks of the chat page."""
    import gradio as gr

    from dermvlm.knowledge import load_graph

    kg = load_graph()

    def on_upload(path: str | None, state: dict[str, Any]):
        state = {"image": None, "turns": [], "name": None}
        if not path:
            return state, None, [], "", "", "Upload or drop a skin image to start."
        try:
            state["image"] = image_url(path)
        except UploadError as err:
            return state, None, [], "", "", f"⚠️ {err}"
        state["name"] = Path(path).name
        return state, path, [], "", "", f"Image {state['name']} ready: ask a question."

    def on_ask(question: str, state: dict[str, Any], chat: list[dict[str, Any]]):
        question = (question or "").strip() or DEFAULT_QUESTION
        if not state or not state.get("image"):
            yield state, chat, "", "", "⚠️ Upload a readable skin image first (JPEG or PNG)."
            return
        messages = conversation_messages(state["image"], state["turns"], question)
        chat = [*chat, {"role": "user", "content": question}, {"role": "assistant", "content": "…"}]
        text = ""
        try:
            for text in stream_answer(settings, messages):
                chat[-1] = {"role": "assistant", "content": text}
                yield state, chat, "", "", "Answering…"
        except Exception as err:  # the endpoint's failures are shown in the page, never as a traceback
            chat = chat[:-2]
            yield state, chat, "", "", f"⚠️ {endpoint_error(err, settings)}"
            return
        reading = read_answer(text, kg)
        panel = reading.markdown()
        chat[-1] = {"role": "assistant", "content": panel}
        state = {**state, "turns": [*state["turns"], (question, text)]}
        reasoning = reading.reasoning or "_The answer gave no separate reasoning._"
        yield state, chat, panel, reasoning, "Done."

    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
    with gr.Blocks(title="dermvlm assistant") as app:
        gr.Markdown(f"## dermvlm assistant\n{RESEARCH_NOTICE}", elem_id=ELEM["notice"])
        state = gr.State({"image": None, "turns": [], "name": None})
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Skin image (drop here or click)", file_types=["image"], type="filepath",
                                 elem_id=ELEM["upload"])
                question = gr.Textbox(label="Question", value=DEFAULT_QUESTION, lines=2, elem_id=ELEM["question"])
                ask = gr.Button("Ask", variant="primary", elem_id=ELEM["ask"])
                status = gr.Markdown("Upload or drop a skin image to start.", elem_id=ELEM["status"])
                preview = gr.Image(label="The image sent to the model", interactive=False, height=220,
                                   elem_id=ELEM["preview"])
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[upload], label="Examples (CC0 / CC BY)")
            with gr.Column(scale=2):
                chat = gr.Chatbot(label=f"{settings.model} at {settings.endpoint}", height=360,
                                  elem_id=ELEM["chat"])
                answer = gr.Markdown(elem_id=ELEM["answer"])
                with gr.Accordion("Reasoning (the model's <think>)", open=False):
                    reasoning = gr.Markdown(elem_id=ELEM["reasoning"])
        outputs = [state, chat, answer, reasoning, status]
        upload.change(on_upload, [upload, state], [state, preview, *outputs[1:]])
        ask.click(on_ask, [question, state, chat], outputs)
        question.submit(on_ask, [question, state, chat], outputs)
    app.dermvlm_theme = theme
    return app


def sample_examples(n: int = 4) -> list[str]:
    """A few bundled CC0/CC BY sample images, spread over their labels."""
    from dermvlm.datasets.sample import load_sample_records

    return [r.image for r in load_sample_records(limit=n)]


def launch(settings: ChatSettings, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Start the page on ``host:port`` (127.0.0.1 by default); returns the Gradio app (running in the background
    when ``block`` is false)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    examples = sample_examples()
    app = build_app(settings, examples)
    app.queue()
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, ssr_mode=False,
               show_error=False, theme=app.dermvlm_theme, quiet=True,
               allowed_paths=[str(Path(e).parent) for e in examples])
    return app
