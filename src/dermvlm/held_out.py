"""Evaluation on what the run held out: the run's own test split by default, and suites checked against the run's
training split before anything trains.

A run config's ``evaluate:`` names ``test`` (the ``eval_item`` test split its data build wrote; the default when the
data builds one) and/or suite files. A suite evaluated for a run takes the run's split (``splits.csv``) for every
image or group the build split. Two checks keep a suite off the training images: ``suite_overlap`` compares files
and groups from the sources alone (``config check``, nothing decoded), ``check_suites_held_out`` compares the
pixels of every suite item with the built training split (``evaluation.membership``), after the data build and
before the first training step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dermvlm.config import ConfigError, RecipeConfig, RunConfig, SuiteConfig, load_config
from dermvlm.datasets.split_assignment import SplitTable, assign_splits, file_sha256, group_key, image_id, split_rows

HELD_OUT = "test"  # the evaluate: entry for the run's own held-out test split
MAX_TOKENS = 320


def builds_held_out(recipe: RecipeConfig) -> bool:
    spec = recipe.kinds.eval_item
    return spec is not None and HELD_OUT in spec.splits


def evaluation_targets(cfg: RunConfig, recipe: RecipeConfig) -> list[str]:
    """What the run evaluates: ``evaluate:`` as written, or by default the held-out test split when the recipe
    builds one."""
    if cfg.evaluate is not None:
        return list(cfg.evaluate)
    return [HELD_OUT] if builds_held_out(recipe) else []


def held_out_suite(cfg: RunConfig, data_dir: Path, recipe: RecipeConfig) -> SuiteConfig:
    """The run's own test split as a suite: the built ``eval_item`` rows, asked with the recipe's system prompt."""
    return SuiteConfig(name=HELD_OUT, description=f"{cfg.name}: the test split its data build held out",
                       format="built", data=str(data_dir.resolve()), split=HELD_OUT, system_prompt=recipe.system_prompt,
                       max_tokens=MAX_TOKENS, seed=cfg.seed)


def planned_records(recipe: RecipeConfig, base: Path, table: SplitTable | None = None, on_conflict: str = "first"):
    """The records a build of ``recipe`` will split, with their splits (nothing decoded); one file listed under two
    labels is resolved by ``on_conflict`` (the build's own policy to stop where the build would)."""
    from dermvlm.datasets.conflicts import resolve_conflicts
    from dermvlm.knowledge import load_graph
    from dermvlm.recipes.build import collect_records

    records, _, _ = collect_records(recipe, load_graph(), base=base)
    keep, _ = resolve_conflicts(records, lambda i, r: str(Path(r.image).resolve()), on_conflict)
    records = [records[i] for i in keep]
    assign_splits(records, recipe.split.val, recipe.split.test, recipe.seed, table)
    return records


def suite_overlap(suite: SuiteConfig, base: Path, run_records) -> str | None:
    """Why ``suite`` would ask about the run's training images (same file or same patient/lesion group), or None;
    the suite's splits are taken from the run's planned split, as at evaluation time."""
    if suite.format != "recipe" or suite.abstention or not suite.sources:
        return None
    table = SplitTable.from_rows(split_rows(run_records))
    train = [r for r in run_records if r.split == "train"]
    files = {file_sha256(r.image) for r in train} - {None}
    groups = {group_key(r) for r in train}
    from dermvlm.evaluation.items import suite_recipe

    records = planned_records(suite_recipe(suite), base, table)
    asked = [r for r in records if suite.split == "all" or r.split == suite.split]
    hits = [r for r in asked if file_sha256(r.image) in files or group_key(r) in groups]
    if not hits:
        return None
    first = hits[0]
    same = "the same image" if file_sha256(first.image) in files else f"the same group ({group_key(first)})"
    return (f"{len(hits)} of {len(asked)} images it asks about are in the run's training split (e.g. image "
            f"{image_id(first)}: {same}); evaluate the run's own held-out split (evaluate: [test]), a suite of "
            "other data, or the same data with the run's split (it reads splits.csv)")


def check_suites_held_out(suites: list[tuple[int, Path, SuiteConfig]], data_dir: Path, source: str = "<config>"
                          ) -> None:
    """Before the first training step: build every named suite's items as its evaluation will (with the run's
    split) and stop if any shows (a near copy of) a training image."""
    from dermvlm.evaluation.items import build_items
    from dermvlm.evaluation.membership import SplitOverlapError, check_held_out, write_members

    table = SplitTable.of_build(data_dir)
    for i, path, suite in suites:
        with tempfile.TemporaryDirectory() as tmp:
            items = build_items(suite.model_copy(update={"limit": None, "corruption": None}), Path(tmp) / "items",
                                base=path.resolve().parent, splits=table)
            try:
                check_held_out(suite.name, items, write_members(Path(tmp), items), data_dir)
            except SplitOverlapError as err:
                raise ConfigError(f"{source}: evaluate[{i}] ({path}): {err}") from None


def named_suites(targets: list[str], source: str) -> list[tuple[int, Path, SuiteConfig]]:
    """The suite files among ``targets`` with their index, loaded (paths read as ``recipes.run_data.config_path``
    reads them)."""
    from dermvlm.recipes.run_data import config_path

    out = []
    for i, entry in enumerate(targets):
        if entry == HELD_OUT:
            continue
        path = config_path(entry, source)
        if not path.is_file():
            raise ConfigError(f"{source}: evaluate[{i}]: suite file not found: {entry}")
        out.append((i, path, load_config(path, SuiteConfig)))
    return out


def evaluated_suites(cfg: RunConfig, source: str, data_dir: Path) -> list[tuple[Path, SuiteConfig]]:
    """What the run evaluates, as (folder its paths are read from, suite): the held-out test split and the named
    suites, in ``evaluate:`` order."""
    from dermvlm.recipes.run_data import run_recipe

    recipe, _ = run_recipe(cfg, source)
    targets = evaluation_targets(cfg, recipe)
    named = {i: (path.resolve().parent, suite) for i, path, suite in named_suites(targets, source)}
    return [named[i] if i in named else (data_dir, held_out_suite(cfg, data_dir, recipe)) for i in range(len(targets))]


def check_before_training(cfg: RunConfig, source: str, data_dir: Path) -> list[str]:
    """After the data build, before the first training step: the held-out split has items and no named suite
    shows a training image. Returns what the run evaluates."""
    from dermvlm.recipes.run_data import run_recipe

    recipe, _ = run_recipe(cfg, source)
    targets = evaluation_targets(cfg, recipe)
    if HELD_OUT in targets:
        import json

        built = json.loads((data_dir / "stats.json").read_text()).get("kinds", {}).get("eval_item", {})
        if not built.get(HELD_OUT):
            raise ConfigError(f"{source}: evaluate: the build in {data_dir} holds no test items (its test split is "
                              "empty or all its images were skipped; see stats.json and skipped.csv): add images, "
                              "raise data.split.test, or set evaluate: []")
    check_suites_held_out(named_suites(targets, source), data_dir, source)
    return targets
