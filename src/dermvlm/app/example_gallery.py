"""The bundled CC0/CC BY sample images as clickable thumbnails, each captioned with its label; a click loads the
image as if it had been uploaded."""

from __future__ import annotations

import gradio as gr


def sample_examples(n: int = 6) -> list[tuple[str, str]]:
    """A few bundled sample images, one per label (round robin), each with its label's name."""
    from dermvlm.datasets.sample import load_sample_records
    from dermvlm.knowledge import load_graph

    kg = load_graph()
    return [(r.image, kg.name(r.label)) for r in load_sample_records(limit=n)]


def example_gallery(examples: list[tuple[str, str]], target: gr.File, elem_id: str) -> gr.Gallery:
    """Thumbnails of ``examples`` (path, caption); clicking one sets ``target`` to that image."""
    gallery = gr.Gallery(value=examples, label="Examples (CC0 / CC BY): click one to use it", columns=3,
                         height=270, object_fit="cover", allow_preview=False, interactive=False, elem_id=elem_id,
                         visible=bool(examples))

    def pick(evt: gr.SelectData) -> str:
        return examples[evt.index][0]

    gallery.select(pick, None, target)
    return gallery
