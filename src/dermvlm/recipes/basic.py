"""The simplest recipe: one open diagnosis question per image, answered in the DermIQ format.

Used by the demo and by the foundation's SFT tests; the full recipe set (MCQ, traces, conversations,
preference pairs) lives beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

from dermvlm.datasets.records import Record

DIAGNOSIS_QUESTION = "What is the most likely diagnosis of this skin lesion?"
MODALITY = {"isic": "dermoscopic", "pad_ufes_20": "clinical", "dermamnist": "dermoscopic"}


def answer_text(record: Record) -> str:
    """A short DermIQ-format answer: ``<think>`` what the image is ``</think><answer>`` label ``</answer>``."""
    modality = MODALITY.get(record.dataset, "clinical")
    site = f" on the {record.site}" if record.site else ""
    return f"<think>A {modality} image of a skin lesion{site}.</think><answer>{record.label}</answer>"


def user_turn(question: str = DIAGNOSIS_QUESTION) -> dict:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}


def diagnosis_sft_dataset(records: Sequence[Record], question: str = DIAGNOSIS_QUESTION):
    """A TRL SFT dataset (``images`` + ``messages``) with one exchange per record."""
    from datasets import Dataset, Features, Image, List, Value

    features = Features({
        "images": List(Image()),
        "messages": List({"role": Value("string"), "content": List({"type": Value("string"),
                                                                   "text": Value("string")})}),
        "label": Value("string"),
    })
    rows = {
        "images": [[r.image] for r in records],
        "messages": [
            [user_turn(question), {"role": "assistant", "content": [{"type": "text", "text": answer_text(r)}]}]
            for r in records
        ],
        "label": [r.label for r in records],
    }
    for msgs in rows["messages"]:
        for m in msgs:
            for part in m["content"]:
                part.setdefault("text", None)
    return Dataset.from_dict(rows, features=features)
