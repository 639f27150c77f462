"""A stage's ``trl:`` block checked against the trainer's own config dataclass (TRL's ``SFTConfig``,
``GRPOConfig``, ``DPOConfig``; transformers' ``TrainingArguments``) as it will be used at train time."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dermvlm.config.base import ConfigError
from dermvlm.config.messages import did_you_mean, unwrap
from dermvlm.echo import shown


def check_dataclass_kwargs(cls: type, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``kwargs`` checked against the dataclass ``cls`` (e.g. TRL's SFTConfig) as it will be used at train time:
    unknown fields (with the closest name), values of the wrong type (YAML reads ``3e-3`` as a string: numeric
    strings are converted, anything else fails), and impossible counts (batch sizes, steps, learning rates).
    Returns the converted values; raises ``ConfigError`` naming ``where`` and the field."""
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
        if isinstance(value, bool) and annotation is not None and bool not in unwrap(annotation):
            raise ConfigError(f"{where}.{key}: {str(value).lower()} is not a {_type_name(annotation)}; give a number")
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
                raise ConfigError(f"{where}.{key}: {shown(kwargs[key])} is not a valid {_type_name(annotation)} "
                                  f"({reason})") from None
        problem = _bound_problem(key, value)
        if problem:
            raise ConfigError(f"{where}.{key}: {problem} (got {shown(kwargs[key])})")
        out[key] = value
    return out


_SIMPLE = (int, float, bool, str, type(None))
AT_LEAST_ONE = {"per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "num_generations", "logging_steps", "save_steps", "max_completion_length", "steps_per_generation",
                "num_iterations", "generation_batch_size", "save_total_limit", "eval_steps"}
POSITIVE = {"learning_rate", "num_train_epochs", "temperature", "beta"}
NON_NEGATIVE = {"warmup_steps", "weight_decay", "max_grad_norm", "epsilon", "epsilon_high", "warmup_ratio",
                "dataloader_num_workers"}
MAX_STEPS = 10**7  # a week of 16 steps a second; more is a typo
AT_MOST = {"learning_rate": 1.0, "max_steps": MAX_STEPS, "save_steps": MAX_STEPS, "logging_steps": MAX_STEPS,
           "eval_steps": MAX_STEPS, "warmup_steps": MAX_STEPS, "num_train_epochs": 10**4, "warmup_ratio": 1.0,
           "seed": 2**32 - 1, "data_seed": 2**32 - 1, "gradient_accumulation_steps": 2**16,
           "per_device_train_batch_size": 2**16, "per_device_eval_batch_size": 2**16, "num_generations": 2**10}


def _simple(annotation: Any) -> bool:
    """Whether pydantic can check this annotation without surprises (scalars, optionals, lists of scalars)."""
    return all(t in _SIMPLE for t in unwrap(annotation))


def _type_name(annotation: Any) -> str:
    names = [t.__name__ for t in unwrap(annotation) if t is not type(None)]
    return " or ".join(dict.fromkeys(names)) or str(annotation)


def _bound_problem(key: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return "must be a finite number"
    if key in AT_MOST and value > AT_MOST[key]:
        if key == "learning_rate":
            return "a learning rate is in (0, 1]; typical ones are 1e-5 to 1e-3"
        return f"must be at most {AT_MOST[key]:,}; is it a typo?"
    if key == "max_steps" and not (value == -1 or value > 0):
        return "must be a positive step count (or -1 to train num_train_epochs)"
    if key in AT_LEAST_ONE and value < 1:
        return "must be at least 1"
    if key in POSITIVE and not value > 0:
        return "must be greater than 0"
    if key in NON_NEGATIVE and value < 0:
        return "must not be negative"
    return None
