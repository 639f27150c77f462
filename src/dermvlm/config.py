"""Pydantic schemas for run configs and one loader that turns every mistake into a clear message.

A config error names the file, the field path (``stages[1].trl.learning_rate``), what is wrong and what is
allowed: the keys a section accepts (with the closest match to a typo) or the values a field accepts.
Schemas here are the single place of validation; modules receive validated objects.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

LM_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
LM_AND_VISION_LORA_TARGETS = (
    r".*(language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    r"|visual\.blocks.*\.(qkv|proj|gate_proj|up_proj|down_proj))"
)


T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config file is missing, unparsable or invalid. ``str()`` is the message for the user."""


class Strict(BaseModel):
    """Base for every schema: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The model families of ``dermvlm.models.families`` (one file each; a test keeps the two lists equal).
FamilyName = Literal["qwen2_5_vl", "qwen3_vl", "gemma3", "smolvlm", "llava_next"]


class NanoSpec(Strict):
    """Build the nano/micro model from scratch instead of loading a checkpoint (``family``: which architecture;
    unset is Qwen2.5-VL, the only one with a ``micro`` preset)."""

    family: FamilyName | None = None
    preset: Literal["nano", "micro"] = "nano"
    seed: int = 0
    min_pixels: int | None = Field(default=None, gt=0)
    max_pixels: int | None = Field(default=None, gt=0)
    patch_size: int | None = Field(default=None, ge=2, le=32)  # ViT patch (resize factor = patch x 2)


class QuantizationSpec(Strict):
    """bitsandbytes 4-bit loading (QLoRA). Used when CUDA is available; on CPU only if ``on_cpu: use``."""

    load_in_4bit: bool = False
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    on_cpu: Literal["skip", "use"] = "skip"


class LoraSpec(Strict):
    """peft LoRA. ``target_modules`` is a regex or a list of module names; the default is the language model."""

    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] | None = None
    include_vision: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"

    def targets(self, family: Any = None) -> str | list[str]:
        """``target_modules`` if set, else the model family's language (and vision) layers; without a family
        (``dermvlm.models.families.Family``), Qwen2.5-VL's names."""
        if self.target_modules is not None:
            return self.target_modules
        if family is not None:
            lm, vision = family.lm_lora_targets, family.vision_lora_targets
            return f"(?:{lm}|{vision})" if self.include_vision else lm
        return LM_AND_VISION_LORA_TARGETS if self.include_vision else LM_LORA_TARGETS


class ModelSpec(Strict):
    """Which model to start from and how to load it. Exactly one of ``name_or_path`` and ``nano``. ``family``:
    the checkpoint's model family, checked against its ``config.json`` (unset: read from it)."""

    name_or_path: str | None = None
    nano: NanoSpec | None = None
    family: FamilyName | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: QuantizationSpec = QuantizationSpec()
    lora: LoraSpec = LoraSpec()
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.name_or_path is None) == (self.nano is None):
            raise ValueError("give exactly one of 'name_or_path' (a checkpoint) and 'nano' (build one)")
        if self.nano is not None and self.nano.family not in (None, "qwen2_5_vl") and self.nano.preset != "nano":
            raise ValueError(f"nano.preset: {self.nano.family} has only the 'nano' preset")
        if self.nano is not None and self.family is not None and self.family != (self.nano.family or "qwen2_5_vl"):
            raise ValueError(f"family: {self.family} differs from nano.family {self.nano.family or 'qwen2_5_vl'}")
        return self

    def key_dump(self) -> dict[str, Any]:
        """The fields that identify the model for stage keys; unset ``family`` fields are left out, so a run
        started before they existed keeps its keys."""
        dump = self.model_dump()
        if dump.get("family") is None:
            dump.pop("family", None)
        if dump.get("nano") and dump["nano"].get("family") is None:
            dump["nano"].pop("family", None)
        return dump


class DataSpec(Strict):
    """The data recipe a run trains on (built into ``runs/<name>/data`` once, rebuilt when it changes)."""

    recipe: str = "data_recipes/sample.yaml"
    source: str | None = None  # replace the recipe's sources with this adapter ...
    root: str | None = None  # ... reading this folder


class GRPOPlusSpec(Strict):
    """GRPO++ (DESIGN.md): every part a switch, so that the ablations can measure each alone."""

    clip_higher: float | None = Field(default=0.28, gt=0)  # TRL epsilon_high; None keeps the clip symmetric
    iterations: int = Field(default=2, ge=1, le=8)  # optimisation passes per generation batch (TRL num_iterations)
    token_level_loss: bool = True  # TRL loss_type "dapo" (token-level) instead of "grpo" (sequence-level)
    zero_variance_filter: bool = True  # flat groups replaced by freshly generated ones of the same class
    max_resample_rounds: int = Field(default=2, ge=0, le=8)
    ref_sync: bool = True  # a slowly synced reference model with a small KL
    kl_beta: float = Field(default=0.01, ge=0)
    ref_sync_steps: int = Field(default=10, ge=1)
    ref_sync_alpha: float = Field(default=0.1, gt=0, le=1)
    entropy_bonus: float = Field(default=0.0, ge=0)  # TRL entropy_coef
    curriculum: bool = True  # within each class, easy → hard by the policy's own probability of the gold answer
    curriculum_noise: float = Field(default=0.15, ge=0)
    hints: bool = False  # a morphology hint in the prompt early in training, faded out
    hint_fade_until: float = Field(default=0.5, gt=0, le=1)
    class_balanced: bool = True  # the sampler draws classes ∝ n_c^(1 - balance) (square-root draw at 0.5)
    balance: float = Field(default=0.5, ge=0, le=1)
    rarity_weight: bool = True  # advantages × (1/K) / q_c: the expected update weighs every class equally
    competing_class_credit: bool = False  # partial credit for naming another class of the dataset (the old rule)


STAGE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
RESERVED_STAGE_NAMES = {"data", "base", "eval", "configs", "logs", "suites", "manifest.json", "serve.log"}
FreezeName = Literal["vision", "projector", "language"]


class StageSpec(Strict):
    """What every stage has. ``trl`` holds fields of the trainer's config dataclass for the stage's kind (TRL's
    ``SFTConfig``, ``GRPOConfig`` or ``DPOConfig``; transformers' ``TrainingArguments`` for ``vision`` and
    ``align``); the other fields are dermvlm's. Each kind is its own schema (below): a field that does not belong
    to the kind is an error."""

    name: str
    kind: str
    use_lora: bool = True
    data: list[str] | None = None  # recipe kinds to train on (default per kind of stage)
    trl: dict[str, Any] = Field(default_factory=dict)
    freeze: list[FreezeName] = Field(default_factory=list)  # parts kept fixed in a full-parameter stage

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        import re

        if not re.match(STAGE_NAME_RE, name) or name in RESERVED_STAGE_NAMES or set(name) <= {"."}:
            raise ValueError(f"stage name {name!r}: use letters, digits, '_', '-' or '.' (starting with a letter "
                             f"or digit, at most 64), not one of the run folder's own names "
                             f"({', '.join(sorted(RESERVED_STAGE_NAMES))})")
        return name

    def data_kinds(self) -> list[str]:
        return list(self.data) if self.data else list(DEFAULT_STAGE_DATA[self.kind])


DEFAULT_STAGE_DATA = {"sft": ["reasoning_trace", "conversation", "mcq", "open_diagnosis", "yes_no", "attribute"],
                      "grpo": ["grpo_prompt"], "dpo": ["preference_pair", "grpo_prompt"], "vision": ["image_label"],
                      "align": ["caption"]}


class SFTStage(StageSpec):
    """Supervised fine-tuning on ``images`` + ``messages`` rows (TRL ``SFTTrainer``)."""

    kind: Literal["sft"] = "sft"


class GRPOStage(StageSpec):
    """GRPO (``plus: null``: the DeepSeekMath loss with its KL) or GRPO++ (TRL ``GRPOTrainer``)."""

    kind: Literal["grpo"] = "grpo"
    rewards: dict[str, float] | None = None
    plus: GRPOPlusSpec | None = None  # None: plain GRPO (loss_type grpo, beta 0.04, one pass per generation)
    overlong_buffer: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _known_rewards(self) -> GRPOStage:
        if self.rewards is not None:
            from_registry = {"format", "exact", "partial_credit", "reasoning_consistency", "kg_score", "overlong"}
            unknown = sorted(set(self.rewards) - from_registry)
            if unknown:
                raise ValueError(f"stage {self.name!r}: unknown reward(s) {', '.join(unknown)}; allowed: "
                                 f"{', '.join(sorted(from_registry))}")
        return self


class DPOStage(StageSpec):
    """DPO on recipe pairs or on pairs the KG scorer ranks from the policy's own samples (TRL ``DPOTrainer``)."""

    kind: Literal["dpo"] = "dpo"
    pairs_from: Literal["recipe", "policy"] = "recipe"
    policy_samples: int = Field(default=4, ge=2, le=16)
    min_margin: float = Field(default=0.1, ge=0)
    sampler: Literal["auto", "vllm", "transformers"] = "auto"
    sample_max_new_tokens: int = Field(default=96, gt=0)
    max_prompts: int | None = Field(default=None, gt=0)


class AugmentSpec(Strict):
    """On-the-fly image augmentation for the vision stage (seeded; skin images have no canonical orientation)."""

    flips: bool = True
    rotate90: bool = True
    crop_scale: tuple[float, float] = (0.75, 1.0)  # random resized crop: area fraction kept
    brightness: float = Field(default=0.1, ge=0, le=0.5)
    contrast: float = Field(default=0.1, ge=0, le=0.5)
    saturation: float = Field(default=0.1, ge=0, le=0.5)
    hue: float = Field(default=0.02, ge=0, le=0.2)

    @model_validator(mode="after")
    def _crop(self) -> AugmentSpec:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale: need 0 < low <= high <= 1 (got {lo}, {hi})")
        return self


class VisionStage(StageSpec):
    """The VLM's own vision tower and projector trained on labeled images, before the language stages.

    ``supervised``: cross-entropy through a temporary head on the pooled visual tokens (``loss``: ``balanced`` class
    weights, ``logit_adjusted`` (Menon et al.) or ``plain``); ``contrastive``: image embeddings against the
    language side's embeddings of the graph's multi-aspect class descriptions. ``tower``: ``full`` trains the
    tower, ``lora`` adapts it with LoRA (merged into the output), ``frozen`` trains the projector only.
    """

    kind: Literal["vision"] = "vision"
    use_lora: bool = False
    supervised: bool = True
    loss: Literal["balanced", "logit_adjusted", "plain"] = "logit_adjusted"
    logit_tau: float = Field(default=1.0, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    contrastive: bool = False
    contrastive_weight: float = Field(default=0.5, ge=0)
    tower: Literal["full", "lora", "frozen"] = "full"
    augment: AugmentSpec | None = AugmentSpec()
    probe: bool = True  # a linear probe on the pooled features: val/test balanced accuracy in the results

    @model_validator(mode="after")
    def _some_objective(self) -> VisionStage:
        if not (self.supervised or self.contrastive):
            raise ValueError(f"stage {self.name!r}: enable 'supervised' or 'contrastive' (or both)")
        if self.use_lora:
            raise ValueError(f"stage {self.name!r}: a vision stage sets LoRA with 'tower: lora', not 'use_lora'")
        return self


class AlignStage(StageSpec):
    """LLaVA's stage 1: only the projector trains, on short captions; vision tower and language model frozen."""

    kind: Literal["align"] = "align"
    use_lora: bool = False


def _stage_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "sft"))
    return str(getattr(value, "kind", "sft"))


STAGE_KINDS: dict[str, type[StageSpec]] = {"sft": SFTStage, "grpo": GRPOStage, "dpo": DPOStage,
                                          "vision": VisionStage, "align": AlignStage}
AnyStage = Annotated[
    Annotated[SFTStage, Tag("sft")] | Annotated[GRPOStage, Tag("grpo")] | Annotated[DPOStage, Tag("dpo")]
    | Annotated[VisionStage, Tag("vision")] | Annotated[AlignStage, Tag("align")],
    Discriminator(_stage_kind, custom_error_type="stage_kind",
                  custom_error_message="unknown stage kind; allowed values are 'sft', 'grpo', 'dpo', 'vision', "
                                       "'align'"),
]


def make_stage(**fields: Any) -> StageSpec:
    """A validated stage of the kind ``fields['kind']`` names (``sft`` when absent)."""
    return STAGE_KINDS[fields.get("kind", "sft")](**fields)


class ServeSpec(Strict):
    """How ``serve`` starts vLLM for this run."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, lt=65536)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(default=1024, gt=0)
    kv_cache_memory: str = "128M"
    startup_timeout: float = Field(default=300.0, gt=0)
    api_key: str | None = None


class DemoSpec(Strict):
    """The question the demo asks the served model about one sample image."""

    question: str = "What is the most likely diagnosis of this skin lesion?"
    image: str | None = None  # a bundled sample image name; the first one when None
    max_tokens: int = Field(default=64, gt=0)


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
    logging: Literal["none", "tensorboard", "trackio"] = "none"

    @model_validator(mode="after")
    def _unique_stage_names(self) -> RunConfig:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dup)}")
        return self


# ---------------------------------------------------------------- data recipes

SOURCE_NAMES = Literal["dermamnist", "ham10000", "isic", "pad_ufes_20", "fitzpatrick17k", "ddi", "imagefolder",
                       "csv", "sample"]
SplitName = Literal["train", "val", "test"]
TRAIN_SPLITS: list[str] = ["train", "val"]


class SourceSpec(Strict):
    """One labeled-image source. ``options`` go to the adapter (e.g. ``labels``, ``image_col`` for ``csv``)."""

    name: SOURCE_NAMES
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    label_map: dict[str, str] = Field(default_factory=dict)
    on_unknown_label: Literal["error", "skip"] = "error"
    splits: list[SplitName] | None = None
    limit_per_split: int | None = Field(default=None, gt=0)
    train_fraction: float | None = Field(default=None, gt=0, le=1)  # a stratified, seeded part of the train split


class ImageSpec(Strict):
    max_side: int = Field(default=384, ge=16, le=4096)
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
    seed: int = 0
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


# ---------------------------------------------------------------- evaluation suites


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
    seed: int = 0
    sources: list[SourceSpec] = Field(default_factory=list)
    split: SplitName | Literal["all"] = "test"  # "all": every image of the sources (an external test set)
    split_fractions: SplitSpec = SplitSpec()
    # A standard benchmark file instead of sources: a VLMEvalKit-style TSV, a JSONL or a CSV (evaluation.external);
    # ``data`` is its path (relative to the suite file), or ``dermvlm eval SUITE --data FILE``.
    format: Literal["recipe", "tsv", "jsonl", "csv"] = "recipe"
    data: str | None = None
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


# ---------------------------------------------------------------- loading and messages


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside Optional/Union/list annotations."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in _unwrap(a)]
    if origin in (list, tuple, dict):
        args = typing.get_args(annotation)
        return [t for a in args[-1:] for t in _unwrap(a)]
    return [annotation]


def _model_at(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The schema class that holds the field at ``loc`` (its parent section)."""
    current: Any = schema
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if isinstance(current, list):  # a tagged union: the tag in ``loc`` names the member
            current = next((m for m in current if m.model_fields.get("kind") and
                            m.model_fields["kind"].default == part), None)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        models = [t for t in _unwrap(current.model_fields[part].annotation)
                  if isinstance(t, type) and issubclass(t, BaseModel)]
        if not models:
            return None
        current = models[0] if len(models) == 1 else models
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_loc(loc: tuple) -> str:
    out = ""
    for i, part in enumerate(loc):
        if i >= 2 and part in STAGE_KINDS and loc[i - 2] == "stages" and isinstance(loc[i - 1], int):
            continue  # the union tag pydantic adds after ``stages[i]``
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def closest(key: str, allowed: list[str]) -> str | None:
    """The allowed name a typo most likely meant: a close spelling, else a prefix (``rank`` → ``r``)."""
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return close[0]
    prefixes = sorted((a for a in allowed if key.startswith(a) or a.startswith(key)), key=len, reverse=True)
    return prefixes[0] if prefixes else None


def did_you_mean(key: str, allowed: list[str]) -> str:
    match = closest(key, allowed)
    return f" (did you mean '{match}'?)" if match else ""


def allowed_keys_message(key: str, allowed: list[str]) -> str:
    hint = did_you_mean(key, allowed)
    return f"unknown key '{key}'{hint}; allowed keys: {', '.join(sorted(allowed))}"


def _error_lines(err: ValidationError, schema: type[BaseModel]) -> list[str]:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p and "]" in p))
        path = format_loc(loc)
        if e["type"] == "extra_forbidden":
            parent = _model_at(schema, loc)
            allowed = list(parent.model_fields) if parent else []
            lines.append(f"{path}: {allowed_keys_message(str(loc[-1]), allowed)}")
        elif e["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        elif e["type"] == "stage_kind":
            lines.append(f"{path}.kind: {e['msg']} (got {_stage_kind(e.get('input'))!r})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "literal_error":
                msg = msg.replace("Input should be", "allowed values are")
            got = e.get("input")
            got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"{path}: {msg}{got_s}")
    return lines


def validate(data: Any, schema: type[BaseModel], source: str = "<config>") -> BaseModel:
    """Validate a parsed mapping against ``schema``; raise ``ConfigError`` naming ``source`` and the fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values, not {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        lines = _error_lines(err, schema)
        raise ConfigError(f"{source}: invalid {schema.__name__}:\n  " + "\n  ".join(lines)) from None


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: not valid YAML: {getattr(err, 'problem', err)}") from None


def load_config(path: str | Path, schema: type[T] = RunConfig) -> T:  # type: ignore[assignment]
    """Read and validate a YAML config file."""
    return validate(read_yaml(path), schema, str(path))  # type: ignore[return-value]


def check_dataclass_kwargs(cls: type, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``kwargs`` checked against the dataclass ``cls`` (e.g. TRL's SFTConfig) as it will be used at train time:
    unknown fields (with the closest name), values of the wrong type (YAML reads ``3e-3`` as a string: numeric
    strings are converted, anything else fails), and impossible counts (batch sizes, steps, learning rates).
    Returns the converted values; raises ``ConfigError`` naming ``where`` and the field."""
    import dataclasses

    from pydantic import TypeAdapter

    allowed = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in kwargs:
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            raise ConfigError(
                f"{where}.{key}: unknown {cls.__name__} field '{key}'{hint}; "
                f"(see TRL's {cls.__name__} documentation for the {len(allowed)} allowed fields)"
            )
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a field type this Python cannot resolve: leave the values to the dataclass
        hints = {}
    out = {}
    for key, value in kwargs.items():
        annotation = hints.get(key)
        if annotation is not None and value is not None and _simple(annotation):
            try:
                try:
                    value = TypeAdapter(annotation).validate_python(value)
                except ValidationError:
                    if not isinstance(value, str):
                        raise
                    TypeAdapter(annotation).validate_python([value])  # a list field given one item (TRL wraps it)
            except (ValidationError, TypeError, ValueError) as err:
                reason = err.errors()[0]["msg"] if isinstance(err, ValidationError) else str(err)
                raise ConfigError(f"{where}.{key}: {kwargs[key]!r} is not a valid {_type_name(annotation)} "
                                  f"({reason})") from None
        problem = _bound_problem(key, value)
        if problem:
            raise ConfigError(f"{where}.{key}: {problem} (got {kwargs[key]!r})")
        out[key] = value
    return out


_SIMPLE = (int, float, bool, str, type(None))
AT_LEAST_ONE = {"per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "num_generations", "logging_steps", "save_steps", "max_completion_length", "steps_per_generation",
                "num_iterations", "generation_batch_size", "save_total_limit", "eval_steps"}
POSITIVE = {"learning_rate", "num_train_epochs", "temperature", "beta"}
NON_NEGATIVE = {"warmup_steps", "weight_decay", "max_grad_norm", "epsilon", "epsilon_high", "warmup_ratio",
                "dataloader_num_workers"}


def _simple(annotation: Any) -> bool:
    """Whether pydantic can check this annotation without surprises (scalars, optionals, lists of scalars)."""
    return all(t in _SIMPLE for t in _unwrap(annotation))


def _type_name(annotation: Any) -> str:
    names = [t.__name__ for t in _unwrap(annotation) if t is not type(None)]
    return " or ".join(dict.fromkeys(names)) or str(annotation)


def _bound_problem(key: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if key == "max_steps" and not (value == -1 or value > 0):
        return "must be a positive step count (or -1 to train num_train_epochs)"
    if key in AT_LEAST_ONE and value < 1:
        return "must be at least 1"
    if key in POSITIVE and not value > 0:
        return "must be greater than 0"
    if key in NON_NEGATIVE and value < 0:
        return "must not be negative"
    return None
