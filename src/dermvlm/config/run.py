"""A run config: model → data → stages → merged model → served and evaluated."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dermvlm.config.base import LabelMap, Seed, Strict
from dermvlm.config.model import ModelSpec
from dermvlm.config.recipe import DedupSpec, ImageSpec, Modality, SplitSpec
from dermvlm.config.serving import DemoSpec, ServeSpec
from dermvlm.config.stages import STAGE_NAME_RE, AnyStage

TrackerName = Literal["none", "tensorboard", "trackio", "mlflow", "wandb"]


class DataSpec(Strict):
    """The data a run trains on, built into ``runs/<name>/data`` once (rebuilt when it changes): a recipe, or your
    own images and labels CSV (``images``, ``labels``, columns, ``group_col``, ``label_map``) with every dataset kind,
    or both (these fields then replace only what they name in the recipe's CSV source). Relative paths are read
    from the config file's folder (``recipes.run_data``)."""

    recipe: str | None = None  # default: data_recipes/sample.yaml, or every kind of your images with `labels`
    source: str | None = None  # replace the recipe's sources with this adapter ...
    root: str | None = None  # ... reading this folder
    images: str | None = None  # your images folder ...
    labels: str | None = None  # ... and the CSV naming each image file and its label
    image_col: str | None = None  # the CSV's columns (default image, label; group_col: found when it can be)
    label_col: str | None = None
    group_col: str | None = None  # patient or lesion: splits never cut one
    site_col: str | None = None
    fitzpatrick_col: str | None = None
    modality: Modality | None = None  # what the images are, as the training text says it
    label_map: LabelMap = Field(default_factory=dict)  # your label → a name the knowledge graph knows
    on_unknown_label: Literal["error", "skip"] | None = None
    exclude: str | list[str] = Field(default_factory=list)  # image ids, or the exclude.yaml `data audit` wrote
    split: SplitSpec | None = None  # val/test fractions (default: the recipe's, else 0.1/0.2)
    image: ImageSpec | None = None  # stored image size (default: the recipe's)
    dedup: DedupSpec | None = None  # duplicates and one image under two labels (default: the recipe's)

    @model_validator(mode="after")
    def _one_way_in(self) -> DataSpec:
        if self.images is not None and self.labels is None:
            raise ValueError("data.images needs data.labels (a CSV naming each image file and its label)")
        if self.source is not None and self.labels is not None:
            raise ValueError("data.source replaces the recipe's sources with an adapter; data.labels with your CSV; "
                             "give one of them")
        if self.root is not None and self.source is None:
            raise ValueError("data.root needs data.source (the adapter that reads it)")
        return self


class RunConfig(Strict):
    """One run of the workflow: model → data → stages → merged model → served."""

    name: str
    seed: Seed = 0
    output_dir: str = "runs"
    model: ModelSpec
    data: DataSpec = DataSpec()
    stages: list[AnyStage] = Field(min_length=1)
    serve: ServeSpec = ServeSpec()
    demo: DemoSpec = DemoSpec()
    # on the final model, served by vLLM: "test" (the held-out test split the data build wrote) and/or suites
    # (eval/*.yaml); default ["test"] when the data builds an eval_item test split, else nothing
    evaluate: list[str] | None = None
    # experiment tracking (dermvlm.tracking): one back-end or several, e.g. [mlflow, wandb]
    logging: TrackerName | list[TrackerName] = "none"

    def trackers(self) -> list[str]:
        """The tracking back-ends, ``none`` left out."""
        chosen = [self.logging] if isinstance(self.logging, str) else self.logging
        return [t for t in dict.fromkeys(chosen) if t != "none"]

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:  # the run folder is output_dir/NAME: it must stay there
        if not re.match(STAGE_NAME_RE, name) or set(name) <= {"."} or name == "eval":
            raise ValueError(f"run name {name[:80]!r}: it names the folder output_dir/NAME, so use letters, digits, "
                             "'_', '-' or '.' (starting with a letter or digit, at most 64; no '/' or '..'; not "
                             "'eval', where `dermvlm eval` writes)")
        return name

    @model_validator(mode="after")
    def _unique_stage_names(self) -> RunConfig:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dup)}")
        return self
