"""What several command groups share: the one-line failure, option types, command-line data sources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, NoReturn

import typer

from dermvlm.config import ConfigError

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
MergeDtype = Literal["float32", "bfloat16", "float16"]
SplitChoice = Literal["train", "val", "test", "all"]
LabelClassifier = Literal["features", "cnn", "both"]

# Options shared by `data build` and `eval`: a command-line source replaces the recipe's (or suite's) sources.
SourceOpt = Annotated[str | None, typer.Option(help="Replace the declared sources: adapter name.")]
RootOpt = Annotated[Path | None, typer.Option(help="Root folder for --source.")]
ImagesOpt = Annotated[Path | None, typer.Option(help="Your images folder (with --labels).")]
LabelsOpt = Annotated[Path | None, typer.Option(help="Your labels CSV.")]
ImageColOpt = Annotated[str | None, typer.Option(help="Image column of --labels (default: image).")]
LabelColOpt = Annotated[str | None, typer.Option(help="Label column of --labels (default: label).")]
GroupColOpt = Annotated[str | None, typer.Option(
    help="Patient/lesion column of --labels: splits never cut one (default: a patient/lesion column it finds).")]

# Options shared by the commands that read a config file (`pipeline`, `train`, `config check`, `eval`).
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="Override a value of the config file, validated like the file: a dotted key "
    "(stages by name or index) and a YAML value, e.g. --set stages.grpo.trl.learning_rate=5e-6 (repeatable).",
    show_default=False)]

# Options shared by the commands that start vLLM on a model folder (`serve`, `chat --serve`, `eval --serve`).
DtypeOpt = Annotated[Dtype, typer.Option(help="Weights dtype for vLLM (auto: the checkpoint's).")]
LoraOpt = Annotated[list[str] | None, typer.Option(help="Serve a LoRA adapter as NAME=DIR (repeatable).",
                                                   show_default=False)]


def fresh_option(discards: str):
    """``--fresh``, the same flag wherever it appears: discard what an earlier run of the command wrote and would
    reuse (``discards`` says what, for that command) and start over. Nothing else is deleted."""
    return typer.Option("--fresh", help=f"Start over: discard {discards} instead of reusing or resuming it.")


def fail(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` (one line, long values cut) and exit with status 2: an input or usage problem."""
    from dermvlm.echo import clip_lines

    typer.secho(f"error: {clip_lines(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def source_options(source: str | None, root: Path | None, images: Path | None, labels: Path | None,
                   image_col: str | None, label_col: str | None, group_col: str | None,
                   allow_outside_images: bool = False) -> dict:
    """What the command line names about the data, and only that: merged into a recipe's (or a suite's, or a run
    config's) sources by ``recipes.run_data.merged_sources``, so a recipe's ``label_map`` and other options
    survive. Paths are made absolute (they are relative to the working directory)."""
    if images is not None and labels is None:
        fail("--images needs --labels CSV (or use --source imagefolder --root DIR)")
    if root is not None and source is None:
        fail("--root needs --source NAME")
    if source is not None and labels is not None:
        fail("--source replaces the sources with an adapter, --labels with your CSV: give one of them")
    if source is not None:
        import typing

        from dermvlm.config import SOURCE_NAMES, did_you_mean

        known = typing.get_args(SOURCE_NAMES)
        if source not in known:
            fail(f"--source: unknown source {source!r}{did_you_mean(source, list(known))}; known: {', '.join(known)}")
    given = {"source": source, "root": root, "images": images, "labels": labels, "image_col": image_col,
             "label_col": label_col, "group_col": group_col,
             "allow_outside_images": True if allow_outside_images else None}
    return {k: str(v.resolve()) if isinstance(v, Path) else v for k, v in given.items() if v is not None}


def run_data(run: Path) -> Path:
    """The built recipe of a pipeline run folder (``RUN/data``), or ``run`` itself when it is one."""
    for candidate in (run / "data", run):
        if (candidate / "recipe.json").is_file():
            return candidate
    raise ConfigError(f"--run {run}: no built data recipe there (expected {run / 'data' / 'recipe.json'}); give the "
                      "run folder of `dermvlm pipeline` (runs/NAME)")


def parse_loras(items: list[str]) -> dict[str, str]:
    loras = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            fail(f"--lora {item!r}: expected NAME=DIR")
        loras[name] = path
    return loras



def one_line(err: BaseException) -> str:
    """An error's message on one line (a server's log tail: its first and last lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
