"""``dermvlm config check``: what a run will read and do, checked before anything loads, so that a config the check
passes does not fail later for a reason it could have seen.

Each check reads the config (and what the checks before it found) and returns one line saying what it checked, or
raises ``ConfigError`` naming the file, the field and what to do. ``CHECKS`` lists them in order; a new check
(e.g. the pixel budget of the real-model path) is one function appended there. The pipeline runs the same checks
before it builds anything (``plan=False`` skips reading the data's records, which the build does anyway).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermvlm.config import ConfigError, RecipeConfig, RunConfig
from dermvlm.run_pixels import check_pixels


@dataclass
class RunPlan:
    """What the checks found, for the checks after them."""

    cfg: RunConfig
    source: str
    plan: bool = True  # read the data's records and plan the split (nothing is decoded)
    recipe: RecipeConfig | None = None
    base: Path | None = None
    records: list[Any] | None = None
    targets: list[str] = field(default_factory=list)


def check_trainers(p: RunPlan) -> str:
    from dermvlm.pipeline import check_stages

    check_stages(p.cfg, p.source)
    return f"trainers: {len(p.cfg.stages)} stages ({', '.join(f'{s.name} {s.kind}' for s in p.cfg.stages)}) as TRL " \
           "will read them"


def check_data(p: RunPlan) -> str:
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.held_out import planned_records
    from dermvlm.knowledge import UnknownLabelError
    from dermvlm.recipes.run_data import recipe_file, run_recipe

    p.recipe, p.base = run_recipe(p.cfg, p.source)
    path = recipe_file(p.cfg, p.source)
    what = f"recipe {path}" if path else "your images (every kind)"
    if not p.plan:
        return f"data: {what}"
    try:
        p.records = planned_records(p.recipe, p.base, on_conflict=p.recipe.dedup.on_conflict)
    except (DatasetError, UnknownLabelError) as err:
        raise ConfigError(f"{p.source}: data: {err}") from None
    listed = len(p.records)
    missing = [r.image for r in p.records if not Path(r.image).is_file()]
    if missing and len(missing) == listed:
        raise ConfigError(f"{p.source}: data: none of the {listed} images the labels list is on disk (e.g. "
                          f"{missing[0]}); check data.images and the image column")
    gone = set(missing)
    p.records = [r for r in p.records if r.image not in gone]  # the build leaves them out (skipped.csv)
    from dermvlm.datasets.small_data import small_data_warnings

    by_split = Counter(r.split for r in p.records)
    groups = len({r.group_id for r in p.records})
    return "\n".join([
        f"data: {what}: {len(p.records)} images in {groups} groups, {len({r.label for r in p.records})} classes; "
        f"split {', '.join(f'{s} {by_split.get(s, 0)}' for s in ('train', 'val', 'test'))} (seed {p.recipe.seed}, "
        f"val {p.recipe.split.val}, test {p.recipe.split.test}; images that fail their check are left out then)",
        *([f"warning: {len(missing)} of {listed} images the labels list are not on disk (e.g. {missing[0]}): "
            "left out, as the build will"] if missing else []),
        *(f"warning: {w}" for w in small_data_warnings(p.records, p.recipe.split.val, p.recipe.split.test))])


def stage_kinds(stage) -> list[str]:
    """The dataset kinds a stage reads (``pipeline.stage_dataset``)."""
    if stage.kind == "dpo":
        return ["grpo_prompt"] if stage.pairs_from == "policy" else ["preference_pair"]
    return stage.data_kinds()


def check_stage_kinds(p: RunPlan) -> str:
    assert p.recipe is not None
    enabled = p.recipe.kinds.enabled()
    where = recipe_name(p)
    for i, stage in enumerate(p.cfg.stages):
        if getattr(stage, "self_supervised", None) is not None and stage.self_supervised.recipe:
            from dermvlm.unlabelled import pool_recipe

            pool_recipe(stage.self_supervised.recipe, f"{p.source}: stages[{i}] ({stage.name})")
        for kind in stage_kinds(stage):
            if kind not in enabled:
                raise ConfigError(
                    f"{p.source}: stages[{i}] ({stage.name}) reads kind {kind!r}, which {where} does not build; add "
                    f"`{kind}: {{}}` under its kinds: (or set the stage's data:) before the first run: a kind added "
                    "later changes the data and every stage trains again")
            if "train" not in enabled[kind].splits:
                raise ConfigError(f"{p.source}: stages[{i}] ({stage.name}) trains on kind {kind!r}, but {where} "
                                  f"builds it for {', '.join(enabled[kind].splits)} only; add train to its splits")
    if p.records is not None and not any(r.split == "train" for r in p.records):
        raise ConfigError(f"{p.source}: data: no image falls in the train split ({len(p.records)} images); add "
                          "images or lower data.split's val and test")
    return "stage data: " + "; ".join(f"{s.name} reads {', '.join(stage_kinds(s))}" for s in p.cfg.stages)


def check_evaluation(p: RunPlan) -> str:
    from dermvlm.held_out import HELD_OUT, builds_held_out, evaluation_targets, named_suites, suite_overlap

    assert p.recipe is not None
    p.targets = evaluation_targets(p.cfg, p.recipe)
    if HELD_OUT in p.targets:
        if not builds_held_out(p.recipe):
            raise ConfigError(f"{p.source}: evaluate: {HELD_OUT!r} evaluates the held-out test split, but "
                              f"{recipe_name(p)} builds no eval_item rows for it; add `eval_item: {{}}` under its "
                              "kinds:, or name suites instead")
        if p.records is not None:
            test = [r for r in p.records if r.split == HELD_OUT]
            if not test:
                raise ConfigError(
                    f"{p.source}: evaluate: the held-out test split would be empty ({len(p.records)} images in "
                    f"{len({r.group_id for r in p.records})} groups, test fraction {p.recipe.split.test}): add "
                    "images, raise data.split.test, or set evaluate: [] to train without evaluating")
    lines = []
    for i, path, suite in named_suites(p.targets, p.source):
        why = suite_overlap(suite, path.resolve().parent, p.records) if p.records is not None else None
        if why:
            raise ConfigError(f"{p.source}: evaluate[{i}] ({path}): {why}")
        lines.append(suite.name)
    n_test = sum(r.split == HELD_OUT for r in p.records or [])
    held = [f"the held-out test split ({n_test} image{'' if n_test == 1 else 's'})"
            if p.records is not None else "the held-out test split"] if HELD_OUT in p.targets else []
    if not p.targets:
        return "evaluation: none (evaluate: [] or no eval_item test split)"
    return "evaluation: " + ", ".join(held + [f"suite {n} (held out from training)" for n in lines])


def check_model(p: RunPlan) -> str:
    from dermvlm.models.families import FAMILIES, UnknownFamilyError, family_for
    from dermvlm.models.loading import PROCESSOR_FILES
    from dermvlm.pipeline import is_hub_id

    m = p.cfg.model
    if m.nano is not None:  # the schema checks model.family against it
        return f"model: the nano {m.nano.family or 'qwen2_5_vl'} model, built locally ({m.nano.preset})"
    name = m.name_or_path or ""
    if is_hub_id(name):
        return f"model: {name} from the Hugging Face Hub (family and processor checked when it loads)"
    folder = Path(name)
    if not folder.is_dir():
        raise ConfigError(f"{p.source}: model.name_or_path: no such model folder: {name}")
    try:
        family = family_for(folder).name
    except UnknownFamilyError as err:
        raise ConfigError(f"{p.source}: model.name_or_path: {err}; families: {', '.join(sorted(FAMILIES))}") from None
    if m.family is not None and m.family != family:
        raise ConfigError(f"{p.source}: model.family is {m.family}, but {folder} is a {family} checkpoint; fix "
                          "model.family or leave it out to read it from the checkpoint")
    if not any((folder / f).is_file() for f in PROCESSOR_FILES):
        raise ConfigError(f"{p.source}: model.name_or_path: {folder} has no processor ({' or '.join(PROCESSOR_FILES)})"
                          "; copy it from the base checkpoint")
    return f"model: {folder} ({family}, with its processor)"


def recipe_name(p: RunPlan) -> str:
    from dermvlm.recipes.run_data import recipe_file

    path = recipe_file(p.cfg, p.source)
    return f"the recipe {path}" if path else "the data (your images)"


CHECKS: list[Callable[[RunPlan], str]] = [check_trainers, check_data, check_stage_kinds, check_evaluation,
                                          check_model, check_pixels]


def check_run(cfg: RunConfig, source: str = "<config>", plan: bool = True) -> list[str]:
    """Run every check in ``CHECKS``; return their lines (the first problem raises ``ConfigError``)."""
    p = RunPlan(cfg, source, plan)
    return [check(p) for check in CHECKS]
