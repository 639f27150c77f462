"""One schema per stage kind (vision, align, sft, grpo, dpo): a discriminated union on ``kind``; ``trl`` holds
the trainer config dataclass's own fields, checked by ``config.trl_fields``."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from dermvlm.config.base import Strict


class GRPOPlusSpec(Strict):
    """GRPO++ (DESIGN.md): every part a switch, so that the ablations can measure each alone."""

    clip_higher: float | None = Field(default=0.28, gt=0)  # TRL epsilon_high; None keeps the clip symmetric
    iterations: int = Field(default=2, ge=1, le=8)  # optimisation passes per generation batch (TRL num_iterations)
    token_level_loss: bool = True  # TRL loss_type "dapo" (token-level) instead of "grpo" (sequence-level)
    # dynamic sampling: each prompt is generated with ``max_resample_rounds`` same-class alternates in one call, and
    # per prompt the first group whose rewards are not all alike trains (flat groups are dropped before the loss)
    zero_variance_filter: bool = True
    max_resample_rounds: int = Field(default=2, ge=0, le=8)
    ref_sync: bool = True  # a slowly synced reference model with a small KL
    kl_beta: float = Field(default=0.01, ge=0)
    ref_sync_steps: int = Field(default=10, ge=1)
    ref_sync_alpha: float = Field(default=0.1, gt=0, le=1)
    entropy_bonus: float = Field(default=0.0, ge=0)  # TRL entropy_coef
    curriculum: bool = True  # within each class, easy → hard by the policy's own probability of the gold answer
    curriculum_noise: float = Field(default=0.15, ge=0)
    curriculum_cap: float = Field(default=1.0, gt=0, le=1)  # the sweep ends at this difficulty quantile per class
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
    """Supervised fine-tuning on ``images`` + ``messages`` rows (TRL ``SFTTrainer``). ``class_balanced``: rows
    drawn with GRPO++'s class draw (shares ∝ n_c^(1 - balance), training/balanced.py) instead of shuffled;
    ``lr_scale``: a part trained at a fraction of the learning rate (full-parameter stages, e.g. {vision: 0.1})."""

    kind: Literal["sft"] = "sft"
    class_balanced: bool = False
    balance: float = Field(default=0.5, ge=0, le=1)
    lr_scale: dict[FreezeName, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _lr_scale(self) -> SFTStage:
        if self.lr_scale and self.use_lora:
            raise ValueError(f"stage {self.name!r}: lr_scale applies to full-parameter stages (use_lora: false)")
        both = sorted(set(self.lr_scale) & set(self.freeze))
        if both:
            raise ValueError(f"stage {self.name!r}: {', '.join(both)} both frozen and given an lr_scale")
        if any(v <= 0 for v in self.lr_scale.values()):
            raise ValueError(f"stage {self.name!r}: lr_scale values must be > 0 (freeze a part to stop it)")
        return self


class GRPOStage(StageSpec):
    """GRPO (``plus: null``: the DeepSeekMath loss with its KL) or GRPO++ (TRL ``GRPOTrainer``)."""

    kind: Literal["grpo"] = "grpo"
    rewards: dict[str, float] | None = None
    plus: GRPOPlusSpec | None = None  # None: plain GRPO (loss_type grpo, beta 0.04, one pass per generation)
    overlong_buffer: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _known_rewards(self) -> GRPOStage:
        if self.rewards is not None:
            from_registry = {"format", "answer_only", "exact", "partial_credit", "reasoning_consistency", "kg_score",
                             "overlong"}
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
    class_balanced: bool = False  # policy pairs: max_prompts drawn with GRPO++'s class draw, not the first rows
    balance: float = Field(default=0.5, ge=0, le=1)


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


class SelfSupervisedSpec(Strict):
    """A self-supervised vision stage (SimCLR on the pooled visual tokens, training/ssl_vision.py) on images without
    their labels: this run's train split plus the train split of ``recipe`` (e.g. the unlabelled remainder a
    low-resource recipe leaves out), images already in this run's train split counted once."""

    recipe: str | None = None  # another data recipe whose image_label train images join the pool (labels dropped)
    temperature: float = Field(default=0.2, gt=0)
    projection_dim: int = Field(default=128, ge=8)
    augment: AugmentSpec = AugmentSpec(crop_scale=(0.3, 1.0), brightness=0.4, contrast=0.4, saturation=0.4,
                                       hue=0.1)


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
    # 0: smoothing on top of logit adjustment pulls the adjusted scores toward uniform, i.e. the raw ones toward the
    # rare classes (DermaMNIST low-resource val: head AUC 0.767 with 0.1, 0.826 without)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    contrastive: bool = False
    contrastive_weight: float = Field(default=0.5, ge=0)
    tower: Literal["full", "lora", "frozen"] = "full"
    augment: AugmentSpec | None = AugmentSpec()
    probe: bool = True  # a linear probe on the pooled features: val/test balanced accuracy in the results
    self_supervised: SelfSupervisedSpec | None = None  # a stage of its own: no labels, supervised/contrastive off

    @model_validator(mode="after")
    def _some_objective(self) -> VisionStage:
        if self.self_supervised is not None and (self.supervised or self.contrastive):
            raise ValueError(f"stage {self.name!r}: a self_supervised stage uses no labels: set supervised: false "
                             "and contrastive: false (the supervised vision stage comes after it)")
        if not (self.supervised or self.contrastive or self.self_supervised):
            raise ValueError(f"stage {self.name!r}: enable 'supervised', 'contrastive' (or both) or "
                             "'self_supervised'")
        if self.use_lora:
            raise ValueError(f"stage {self.name!r}: a vision stage sets LoRA with 'tower: lora', not 'use_lora'")
        return self


class AlignStage(StageSpec):
    """LLaVA's stage 1: only the projector trains, on short captions; vision tower and language model frozen."""

    kind: Literal["align"] = "align"
    use_lora: bool = False


def stage_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "sft"))
    return str(getattr(value, "kind", "sft"))


STAGE_KINDS: dict[str, type[StageSpec]] = {"sft": SFTStage, "grpo": GRPOStage, "dpo": DPOStage,
                                          "vision": VisionStage, "align": AlignStage}
AnyStage = Annotated[
    Annotated[SFTStage, Tag("sft")] | Annotated[GRPOStage, Tag("grpo")] | Annotated[DPOStage, Tag("dpo")]
    | Annotated[VisionStage, Tag("vision")] | Annotated[AlignStage, Tag("align")],
    Discriminator(stage_kind, custom_error_type="stage_kind",
                  custom_error_message="unknown stage kind; allowed values are 'sft', 'grpo', 'dpo', 'vision', "
                                       "'align'"),
]


def make_stage(**fields: Any) -> StageSpec:
    """A validated stage of the kind ``fields['kind']`` names (``sft`` when absent)."""
    return STAGE_KINDS[fields.get("kind", "sft")](**fields)
