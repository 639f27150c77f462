"""Pydantic schemas for every file a user writes, by domain (model, stages, run, serving, recipes, suites), and one
loader that turns every mistake into a one-line message naming the file and the field.

Schemas are the single place of validation; modules receive validated objects. ``from dermvlm.config import X``
is the public way in.
"""

from dermvlm.config.base import ConfigError, Strict
from dermvlm.config.loading import load_config, read_yaml, validate
from dermvlm.config.messages import allowed_keys_message, closest, did_you_mean, format_loc
from dermvlm.config.model import (
    LM_AND_VISION_LORA_TARGETS,
    LM_LORA_TARGETS,
    FamilyName,
    LoraSpec,
    ModelSpec,
    NanoSpec,
    PixelsSpec,
    QuantizationSpec,
    RealShapeName,
)
from dermvlm.config.recipe import (
    SOURCE_NAMES,
    TRAIN_SPLITS,
    DedupSpec,
    ImageSpec,
    KindSpec,
    KindsSpec,
    RecipeConfig,
    SourceSpec,
    SplitName,
    SplitSpec,
)
from dermvlm.config.run import DataSpec, RunConfig
from dermvlm.config.serving import DemoSpec, ServeSpec
from dermvlm.config.stages import (
    DEFAULT_STAGE_DATA,
    STAGE_KINDS,
    AlignStage,
    AnyStage,
    AugmentSpec,
    DPOStage,
    GRPOPlusSpec,
    GRPOStage,
    SFTStage,
    StageSpec,
    VisionStage,
    make_stage,
)
from dermvlm.config.suite import CORRUPTION_NAMES, CorruptionSpec, RobustnessSpec, SuiteConfig
from dermvlm.config.trl_fields import check_dataclass_kwargs

__all__ = [
    "CORRUPTION_NAMES", "DEFAULT_STAGE_DATA", "LM_AND_VISION_LORA_TARGETS", "LM_LORA_TARGETS", "SOURCE_NAMES",
    "STAGE_KINDS", "TRAIN_SPLITS", "AlignStage", "AnyStage", "AugmentSpec", "ConfigError", "CorruptionSpec",
    "DPOStage", "DataSpec", "DedupSpec", "DemoSpec", "FamilyName", "GRPOPlusSpec", "GRPOStage", "ImageSpec",
    "KindSpec", "KindsSpec", "LoraSpec", "ModelSpec", "NanoSpec", "PixelsSpec", "QuantizationSpec", "RealShapeName",
    "RecipeConfig",
    "RobustnessSpec", "RunConfig", "SFTStage", "ServeSpec", "SourceSpec", "SplitName", "SplitSpec", "StageSpec",
    "Strict", "SuiteConfig", "VisionStage", "allowed_keys_message", "check_dataclass_kwargs", "closest",
    "did_you_mean", "format_loc", "load_config", "make_stage", "read_yaml", "validate",
]
