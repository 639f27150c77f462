"""A data recipe: labeled-image sources → checked images → splits → the dataset kinds to build."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from dermvlm.config.base import LabelMap, Seed, Strict

SOURCE_NAMES = Literal["dermamnist", "ham10000", "isic", "pad_ufes_20", "fitzpatrick17k", "ddi", "imagefolder",
                       "csv", "sample"]
SplitName = Literal["train", "val", "test"]
Modality = Literal["clinical photograph", "dermoscopic image", "histology image", "image"]  # as training text says it
TRAIN_SPLITS: list[str] = ["train", "val"]


class SourceSpec(Strict):
    """One labeled-image source. ``options`` go to the adapter (e.g. ``labels``, ``image_col`` for ``csv``)."""

    name: SOURCE_NAMES
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    label_map: LabelMap = Field(default_factory=dict)
    on_unknown_label: Literal["error", "skip"] = "error"
    splits: list[SplitName] | None = None
    limit_per_split: int | None = Field(default=None, gt=0)
    train_fraction: float | None = Field(default=None, gt=0, le=1)  # a stratified, seeded part of the train split


class ImageSpec(Strict):
    max_side: int = Field(default=384, ge=16, le=16384)
    max_pixels: int = Field(default=40_000_000, gt=0)


class SplitSpec(Strict):
    """Fractions for sources without official splits (group-aware, label-stratified)."""

    val: float = Field(default=0.1, ge=0.0, lt=1.0)
    test: float = Field(default=0.2, ge=0.0, lt=1.0)


class DedupSpec(Strict):
    near_threshold: int = Field(default=4, ge=0, le=16)
    policy: Literal["error", "drop_train", "report"] = "drop_train"
    on_conflict: Literal["error", "drop", "first"] = "error"  # one image under two labels


class KindSpec(Strict):
    splits: list[SplitName] = Field(default_factory=lambda: list(TRAIN_SPLITS))
    per_image: int = Field(default=1, ge=1, le=10)
    templates: list[str] | None = None


class MCQSpec(KindSpec):
    options: int = Field(default=4, ge=2, le=10)
    distractors: Literal["graph", "dataset"] = "graph"
    with_reasoning: bool = True


class OpenSpec(KindSpec):
    with_reasoning: bool = True


class YesNoSpec(KindSpec):
    questions: list[Literal["malignant", "is_label"]] = Field(default_factory=lambda: ["malignant", "is_label"])


class AttributeSpec(KindSpec):
    attributes: list[Literal["morphology", "colour", "site", "fitzpatrick", "malignancy"]] = Field(
        default_factory=lambda: ["morphology", "colour", "site", "fitzpatrick", "malignancy"])


class TraceSpec(KindSpec):
    n_differentials: int = Field(default=2, ge=0, le=5)


class ConversationSpec(KindSpec):
    turns: int = Field(default=2, ge=1, le=3)


class GRPOPromptSpec(KindSpec):
    question: Literal["open", "mcq"] = "open"
    options: int = Field(default=4, ge=2, le=10)
    distractors: Literal["graph", "dataset"] = "graph"


class PreferenceSpec(KindSpec):
    perturbations: list[Literal["wrong_diagnosis", "contradicted_feature", "missing_referral",
                                "hallucinated_disease", "broken_format", "wrong_record_fact"]] = Field(
        default_factory=lambda: ["wrong_diagnosis", "contradicted_feature", "missing_referral",
                                 "hallucinated_disease", "broken_format", "wrong_record_fact"])


class EvalItemSpec(KindSpec):
    splits: list[SplitName] = Field(default_factory=lambda: ["test"])
    types: list[Literal["mcq", "open", "yes_no", "attribute"]] = Field(default_factory=lambda: ["mcq", "open"])
    options: int = Field(default=4, ge=2, le=10)
    distractors: Literal["graph", "dataset"] = "dataset"


class ImageLabelSpec(KindSpec):
    """Images and their classes for the vision stage; it trains on ``train`` and only reports ``val``/``test``."""

    splits: list[SplitName] = Field(default_factory=lambda: ["train", "val", "test"])


class KindsSpec(Strict):
    """Which kinds to build; a kind left out is not built."""

    image_label: ImageLabelSpec | None = None
    caption: KindSpec | None = None
    mcq: MCQSpec | None = None
    open_diagnosis: OpenSpec | None = None
    yes_no: YesNoSpec | None = None
    attribute: AttributeSpec | None = None
    reasoning_trace: TraceSpec | None = None
    conversation: ConversationSpec | None = None
    grpo_prompt: GRPOPromptSpec | None = None
    preference_pair: PreferenceSpec | None = None
    eval_item: EvalItemSpec | None = None

    def enabled(self) -> dict[str, KindSpec]:
        return {k: getattr(self, k) for k in type(self).model_fields if getattr(self, k) is not None}


class RecipeConfig(Strict):
    """A data recipe: sources → checked images → splits → the requested dataset kinds."""

    name: str
    seed: Seed = 0
    description: str = ""
    sources: list[SourceSpec] = Field(min_length=1)
    image: ImageSpec = ImageSpec()
    split: SplitSpec = SplitSpec()
    dedup: DedupSpec = DedupSpec()
    kinds: KindsSpec
    system_prompt: str | None = None
    # images left out: their ids (file stem), names or paths, or the path of an ``exclude.yaml`` that
    # ``dermvlm data audit`` wrote (relative to the recipe's folder)
    exclude: str | list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _never_train_on_test(self) -> RecipeConfig:
        for kind, spec in self.kinds.enabled().items():
            if kind not in ("eval_item", "image_label") and "test" in spec.splits:
                raise ValueError(f"kinds.{kind}.splits includes 'test': training data never comes from a test split")
        if not self.kinds.enabled():
            raise ValueError("kinds: enable at least one kind")
        return self
