"""An evaluation suite: which images or benchmark file, which question types, how to ask; robustness sweeps."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import Field, model_validator

from dermvlm.config.base import Seed, Strict
from dermvlm.config.recipe import ImageSpec, SourceSpec, SplitName, SplitSpec

CORRUPTION_NAMES = Literal["pixelate", "jpeg_compression", "gaussian_noise", "speckle_noise", "impulse_noise",
                           "shot_noise", "defocus_blur", "motion_blur", "zoom_blur", "brightness_up",
                           "brightness_down", "contrast_up", "contrast_down", "black_corner", "characters"]


class CorruptionSpec(Strict):
    """One MedMNIST-C corruption (``evaluation.corruptions``) applied to every image of a suite."""

    name: CORRUPTION_NAMES
    severity: int = Field(ge=1, le=5)


class RobustnessSpec(Strict):
    """The sweep ``dermvlm eval SUITE --robustness`` runs: each corruption at each severity, beside the clean run."""

    corruptions: list[CORRUPTION_NAMES] = Field(default_factory=lambda: list(typing.get_args(CORRUPTION_NAMES)),
                                                min_length=1)
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)
    limit: int | None = Field(default=None, gt=0)  # items per run (the first N of the suite), for a quicker sweep

    @model_validator(mode="after")
    def _severities(self) -> RobustnessSpec:
        bad = [s for s in self.severities if not 1 <= s <= 5]
        if bad:
            raise ValueError(f"severities: {bad} outside 1-5")
        return self


class SuiteConfig(Strict):
    """An evaluation suite (``eval/*.yaml``): which images, which question types, how to ask."""

    name: str
    description: str = ""
    seed: Seed = 0
    sources: list[SourceSpec] = Field(default_factory=list)
    split: SplitName | Literal["all"] = "test"  # "all": every image of the sources (an external test set)
    split_fractions: SplitSpec = SplitSpec()
    # A standard benchmark file instead of sources: a VLMEvalKit-style TSV, a JSONL or a CSV (evaluation.external);
    # ``data`` is its path (relative to the suite file), or ``dermvlm eval SUITE --data FILE``. ``built``: the
    # eval_item rows of a folder ``dermvlm data build`` (or the pipeline) wrote, its split as built.
    format: Literal["recipe", "tsv", "jsonl", "csv", "built"] = "recipe"
    data: str | None = None
    allow_outside_images: bool = False  # image_path values may leave the data file's folder (absolute, ../)
    types: list[Literal["mcq", "open", "yes_no", "attribute"]] = Field(default_factory=lambda: ["mcq", "open"])
    options: int = Field(default=4, ge=2, le=10)
    distractors: Literal["graph", "dataset"] = "dataset"
    abstention: bool = False  # non-skin photographs: the right answer is to say so
    limit: int | None = Field(default=None, gt=0)
    image: ImageSpec = ImageSpec()
    system_prompt: str | None = "dermiq"  # "dermiq" (the documented DermIQ prompt), null, or a literal prompt
    max_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    guided_format: bool = False  # vLLM structured output forces <think>…</think><answer>…</answer>
    bootstrap: int = Field(default=1000, ge=0)
    corruption: CorruptionSpec | None = None  # every image corrupted (``--corruption NAME --severity K``)
    robustness: RobustnessSpec | None = None  # the sweep ``--robustness`` runs (default: all 15 x 5)
    # Open questions with a closed label set (the suite's gold classes): the probability of every class's answer,
    # written as ``class_answer``, read from the served model: AUC and decodes at an operating point
    # (evaluation/closed_set.py). ``operating_point``: ``fit`` (choose τ on this suite: a validation split), the
    # name of a suite evaluated before into the same parent folder, or an operating_point.json path.
    class_scores: bool = True
    class_answer: str = "<answer>{name}</answer>"
    operating_point: str | None = None

    @model_validator(mode="after")
    def _class_answer(self) -> SuiteConfig:
        if self.class_scores and "{name}" not in self.class_answer:
            raise ValueError(f"class_answer: {self.class_answer!r} must contain {{name}} (where the class name goes)")
        return self

    @model_validator(mode="after")
    def _has_images(self) -> SuiteConfig:
        if self.format != "recipe":
            if self.sources:
                raise ValueError(f"sources: a {self.format} suite reads its data: file; leave sources out")
            return self
        if not self.sources and not self.abstention:
            raise ValueError("sources: a suite needs at least one source (or abstention: true, or format: tsv/jsonl "
                             "with data: FILE)")
        return self
