"""A run config: model → data → stages → merged model → served and evaluated."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dermvlm.config.base import Strict
from dermvlm.config.model import ModelSpec
from dermvlm.config.serving import DemoSpec, ServeSpec
from dermvlm.config.stages import AnyStage

TrackerName = Literal["none", "tensorboard", "trackio", "mlflow", "wandb"]


class DataSpec(Strict):
    """The data recipe a run trains on (built into ``runs/<name>/data`` once, rebuilt when it changes)."""

    recipe: str = "data_recipes/sample.yaml"
    source: str | None = None  # replace the recipe's sources with this adapter ...
    root: str | None = None  # ... reading this folder


class RunConfig(Strict):
    """One run of the workflow: model → data → stages → merged model → served."""

    name: str
    seed: int = 0
    output_dir: str = "runs"
    model: ModelSpec
    data: DataSpec = DataSpec()
    stages: list[AnyStage] = Field(min_length=1)
    serve: ServeSpec = ServeSpec()
    demo: DemoSpec = DemoSpec()
    evaluate: list[str] = Field(default_factory=list)  # suites (eval/*.yaml) run on the final model, served by vLLM
    # experiment tracking (dermvlm.tracking): one back-end or several, e.g. [mlflow, wandb]
    logging: TrackerName | list[TrackerName] = "none"

    def trackers(self) -> list[str]:
        """The tracking back-ends, ``none`` left out."""
        chosen = [self.logging] if isinstance(self.logging, str) else self.logging
        return [t for t in dict.fromkeys(chosen) if t != "none"]

    @model_validator(mode="after")
    def _unique_stage_names(self) -> RunConfig:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dup)}")
        return self
