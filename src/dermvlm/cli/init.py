"""``dermvlm init``: a run config for your own labeled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dermvlm.cli.common import GroupColOpt, ImageColOpt, LabelColOpt, fail
from dermvlm.config import FamilyName


def init(
    images: Annotated[Path, typer.Option(help="Your images folder.")],
    labels: Annotated[Path, typer.Option(help="Your labels CSV (a row per image: file name, label, ...).")],
    family: Annotated[FamilyName, typer.Option(help="Model family of the nano model it trains.")] = "qwen2_5_vl",
    out: Annotated[Path | None, typer.Option(help="Config file to write (default: <images folder name>.yaml).")
                   ] = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Write a working run config for your images: finds the image, label and patient/lesion columns it can (and
    says which it guessed), maps unknown labels to the graph's closest names; paths relative to the config."""
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.init_config import run_name, write_config
    from dermvlm.io import OutputError

    target = out or Path(f"{run_name(images)}.yaml")
    try:
        path, found = write_config(images, labels, target, family, force, image_col, label_col, group_col)
    except (DatasetError, OutputError, OSError) as err:
        fail(str(err))
    for note in found.notes:
        typer.echo(f"  {note}")
    typer.echo(f"wrote {path}; next: dermvlm config check {path}, then dermvlm pipeline {path}")
