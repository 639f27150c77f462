"""``dermvlm data``: build, audit, inspect and fetch labeled-image datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from dermvlm.cli.common import (
    GroupColOpt,
    ImageColOpt,
    ImagesOpt,
    LabelClassifier,
    LabelColOpt,
    LabelsOpt,
    RootOpt,
    SourceOpt,
    fail,
    source_options,
)
from dermvlm.config import ConfigError

data_app = typer.Typer(help="Data recipes: labeled images → training and evaluation datasets.",
                       no_args_is_help=True)


@data_app.command("build")
def data_build(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML from data_recipes/, or a run config (its data:).")],
    out: Annotated[Path, typer.Option(help="Output folder (replaced atomically).")],
    source: SourceOpt = None,
    root: RootOpt = None,
    images: ImagesOpt = None,
    labels: LabelsOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    force: Annotated[bool, typer.Option(help="Replace --out even if dermvlm did not write it.")] = False,
    allow_outside_images: Annotated[bool, typer.Option(help="Accept --labels paths that leave --images.")] = False,
) -> None:
    """Build every dataset kind a recipe enables (HF DatasetDicts, dataset card, stats.json, skipped.csv,
    splits.csv). The options replace only what they name in the recipe's sources (label_map survives)."""
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.io import OutputError, check_output
    from dermvlm.knowledge import UnknownLabelError
    from dermvlm.recipes.build import build
    from dermvlm.recipes.run_data import recipe_inputs, recipe_or_run, with_sources

    try:
        cfg, base, _ = recipe_or_run(recipe)
        cfg = with_sources(cfg, source_options(source, root, images, labels, image_col, label_col, group_col,
                                               allow_outside_images), str(recipe))
        check_output(out, "data build", force, inputs=[recipe, *recipe_inputs(cfg, base)])  # --force never replaces
        result = build(cfg, out, base=base)
    except (ConfigError, DatasetError, UnknownLabelError, OutputError) as err:
        fail(str(err))
    s = result.stats
    by_split = ", ".join(f"{k} {v}" for k, v in s["records_by_split"].items())
    typer.echo(f"wrote {result.out}: {s['records']} images ({by_split})")
    for kind, counts in s["kinds"].items():
        if set(counts) <= {"train", "val", "test"}:
            typer.echo(f"  {kind:<16} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} file(s): "
                   + ", ".join(f"{k} ({v})" for k, v in s["skipped_by_reason"].items()) + f"; see {out}/skipped.csv")
    for line in [result.split_change, *s["warnings"]]:
        if line:
            typer.secho(f"warning: {line}", fg=typer.colors.YELLOW, err=True)


@data_app.command("audit")
def data_audit(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML, a run config (its data:), or an image folder with a "
                                                "labels.csv (image,label).")],
    out: Annotated[Path, typer.Option(help="Report folder (audit.md/html/json, contact sheets, exclude.yaml).")],
    source: SourceOpt = None,
    root: RootOpt = None,
    images: ImagesOpt = None,
    labels: LabelsOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds for label-error candidates.")] = 5,
    classifier: Annotated[LabelClassifier, typer.Option(
        help="Label-error classifier: features (logistic regression, seconds), cnn (a small CNN per fold, minutes) "
             "or both (their mean; finds the most planted errors).")] = "features",
    force: Annotated[bool, typer.Option(help="Replace --out even if dermvlm did not write it.")] = False,
) -> None:
    """Rank a dataset's duplicates, off-topic images and label-error candidates, worst first, and propose an
    exclude list a recipe or run config can use (`exclude: OUT/exclude.yaml`). Splits are the run's own
    (runs/NAME/data/splits.csv) when a run config's data is built, else the build's rule."""
    from dermvlm.audit import audit
    from dermvlm.config import RecipeConfig
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.datasets.split_assignment import SplitTable
    from dermvlm.io import OutputError, check_output
    from dermvlm.knowledge import UnknownLabelError
    from dermvlm.pipeline import run_dir
    from dermvlm.recipes.run_data import recipe_inputs, recipe_or_run, with_sources

    try:
        splits = None
        if recipe.is_dir():
            if images is None and labels is None and source is None:
                images, labels = recipe, recipe / "labels.csv"
                if not labels.is_file():
                    fail(f"{recipe}: a folder to audit needs a labels.csv (or give --labels CSV)")
            cfg = RecipeConfig.model_validate({"name": recipe.name, "sources": [{"name": "csv"}],
                                               "kinds": {"image_label": {"splits": ["train", "val", "test"]}}})
            base = Path.cwd()
        else:
            cfg, base, run = recipe_or_run(recipe)
            splits = SplitTable.of_build(run_dir(run) / "data") if run is not None else None
        cfg = with_sources(cfg, source_options(source, root, images, labels, image_col, label_col, group_col),
                           str(recipe))
        check_output(out, "data audit", force, inputs=[recipe, *recipe_inputs(cfg, base)])  # --force never replaces
        result = audit(cfg, out, base=base, folds=folds, classifier=classifier, splits=splits)
    except (ConfigError, DatasetError, UnknownLabelError, OutputError) as err:
        fail(str(err))
    d = result["duplicates"]
    typer.echo(f"audited {result['images']} images: {d['exact_pairs']} exact / {d['near_pairs']} near duplicate "
               f"pairs ({d['cross_split_pairs']} across splits), {len(result['conflicts'])} label conflicts, "
               f"{len(result['exclude'])} proposed exclusions, {len(result['held_for_review'])} held for review; "
               f"splits: {'the run build' if splits else 'the build rule'}; report: {out / 'audit.md'}")
    if result.get("label_error_caveat"):
        typer.secho(f"warning: {result['label_error_caveat']}", fg=typer.colors.YELLOW, err=True)


@data_app.command("inspect")
def data_inspect(
    folder: Annotated[Path, typer.Argument(help="A folder written by 'dermvlm data build'.")],
    examples: Annotated[int, typer.Option(help="Examples to print per kind.")] = 1,
    plot: Annotated[Path | None, typer.Option(help="Label distribution PNG (default: FOLDER/labels.png).")] = None,
) -> None:
    """Counts, examples and a label-distribution plot of a built dataset folder."""
    from dermvlm.recipes.inspect import inspect_folder

    try:
        report = inspect_folder(folder, examples, plot)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    typer.echo(report)


@data_app.command("fetch")
def data_fetch(
    dataset: Annotated[Literal["dermamnist"], typer.Argument(help="The dataset to fetch (its official release).")],
    size: Annotated[Literal["28", "64", "128", "224"], typer.Option(help="Image side in px.")] = "28",
    out: Annotated[Path | None, typer.Option(help="Folder to write to (default: the data root's dermamnist/).")
                   ] = None,
    url: Annotated[str | None, typer.Option(help="Base URL of a mirror (default: the MedMNIST+ Zenodo record).")
                   ] = None,
) -> None:
    """Download a dataset's official release where the internet is reachable (DermaMNIST: CC BY-NC 4.0)."""
    from dermvlm.data_root import rerooted
    from dermvlm.datasets.fetch import ZENODO, FetchError, fetch_dermamnist

    folder = out or Path(rerooted("../shared/data/dermamnist"))
    try:
        path, counts = fetch_dermamnist(folder, int(size), url or ZENODO)
    except FetchError as err:
        fail(str(err))
    typer.echo(f"{path}: DermaMNIST at {size} px, " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
               + f"; use it as a source: {{name: dermamnist, root: {path}}}")

