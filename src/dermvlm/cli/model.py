"""``dermvlm nano build`` and ``dermvlm model merge``: model folders."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Literal

import typer

from dermvlm.cli.common import MergeDtype, fail
from dermvlm.config import FamilyName, RealShapeName

FAMILY_NAMES = typing.get_args(FamilyName)
nano_app = typer.Typer(help=f"Build a tiny model locally (random weights, a locally trained tokenizer) of one of the "
                            f"{len(FAMILY_NAMES)} VLM families: {', '.join(FAMILY_NAMES)}, or a published "
                            "checkpoint's real shape (--like).", no_args_is_help=True)
model_app = typer.Typer(help="Model folders: merge LoRA adapters, push to the Hugging Face Hub.", no_args_is_help=True)


@nano_app.command("build")
def nano_build(
    out: Annotated[Path, typer.Option(help="Folder to write (replaced atomically).")],
    preset: Annotated[Literal["nano", "micro"], typer.Option(help="nano (<1M parameters) or micro (5-20M; "
                                                            "qwen2_5_vl only).")] = "nano",
    seed: Annotated[int, typer.Option(help="Seed for weights and tokenizer corpus.")] = 0,
    min_pixels: Annotated[int | None, typer.Option(help="Image processor minimum pixels.")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Image processor maximum pixels.")] = None,
    patch_size: Annotated[int | None, typer.Option(help="ViT patch size (default: the preset's).", min=2)] = None,
    force: Annotated[bool, typer.Option(help="Replace --out even if dermvlm did not write it.")] = False,
    family: Annotated[FamilyName | None, typer.Option(help="VLM family (dermvlm.models.families; default "
                                                           "qwen2_5_vl).")] = None,
    like: Annotated[RealShapeName | None, typer.Option(help="Copy a published checkpoint's widths, heads, vision "
                                                           "geometry and processor (random weights).")] = None,
    layers: Annotated[int, typer.Option(help="With --like: text layers and vision blocks.", min=1, max=64)] = 1,
) -> None:
    """Build a tiny model of one VLM family (--family: qwen2_5_vl, qwen3_vl, gemma3, smolvlm or llava_next; default
    qwen2_5_vl) with random weights and a locally trained tokenizer, or with --like a published checkpoint's
    widths, heads, vision geometry and processor at --layers depth."""
    import json

    from dermvlm.io import check_output
    from dermvlm.models.families import FAMILIES, nano_presets
    from dermvlm.models.nano import build_nano

    if like is not None:
        given = [o for o, v in (("--family", family), ("--patch-size", patch_size)) if v is not None]
        if given or preset != "nano":
            fail(f"{(given or ['--preset'])[0]}: leave it out with --like (the real shape sets family, sizes and "
                 "patch)")
    family = family or "qwen2_5_vl"
    if family not in FAMILIES:
        fail(f"--family: unknown model family {family!r}; known families: {', '.join(sorted(FAMILIES))}")
    presets = nano_presets(family)
    if preset not in presets:
        fail(f"--preset: unknown preset {preset!r}; choose one of {', '.join(sorted(presets))}")
    try:
        check_output(out, "nano build", force)
        if like is not None:
            from dermvlm.models.real_shapes import build_like

            path = build_like(out, like, layers, seed, min_pixels, max_pixels)
        else:
            path = build_nano(out, preset, seed, min_pixels, max_pixels, patch_size=patch_size, family=family)
    except ValueError as err:
        fail(str(err))
    info = json.loads((path / "dermvlm_nano.json").read_text())
    what = (f"{like} real-shape model ({layers} layer{'s' * (layers > 1)}, " if like else
            f"{preset} model (" if family == "qwen2_5_vl" else f"{family} {preset} model (")
    typer.echo(f"built {what}{info['parameters']:,} parameters) in {path}")


@model_app.command("merge")
def model_merge(
    adapter: Annotated[Path, typer.Argument(help="LoRA adapter folder (adapter_config.json).")],
    out: Annotated[Path, typer.Option(help="Folder for the merged model.")],
    base: Annotated[str | None, typer.Option(help="Base model; default: the adapter's recorded base.")] = None,
    dtype: Annotated[MergeDtype, typer.Option(help="dtype of the merged weights.")] = "float32",
    base_weights: Annotated[Literal["as-trained", "full"], typer.Option(
        help="as-trained: the base the adapter was trained on (a QLoRA adapter's 4-bit base, dequantized: the "
             "trained model); full: the unquantized base weights.")] = "as-trained",
    force: Annotated[bool, typer.Option(help="Replace --out even if dermvlm did not write it.")] = False,
) -> None:
    """Merge a LoRA adapter into its base model: a standalone folder vLLM serves."""
    from dermvlm.io import OutputError, check_output
    from dermvlm.models.merge import merge_adapter

    if not (adapter / "adapter_config.json").is_file():
        fail(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    try:
        check_output(out, "model merge", force, inputs=[adapter, *([base] if base and Path(base).exists() else [])])
    except OutputError as err:
        fail(str(err))
    merged = merge_adapter(adapter, out, base, dtype, base_weights)
    if merged.note:
        typer.echo(f"note: {merged.note}")
    typer.echo(f"merged into {merged.path} (--base-weights {merged.base_weights}: {merged.merged_into})")


@model_app.command("push")
def model_push(
    run_or_dir: Annotated[Path, typer.Argument(help="A pipeline run folder (runs/NAME: its final model) or a model "
                                               "or adapter folder.")],
    repo: Annotated[str, typer.Option(help="Hub repository, ORG/NAME (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List exactly what would be uploaded; upload nothing."
                                          )] = False,
) -> None:
    """Upload the model (or adapter), its processor and its card, with the evaluation's results (model-index
    metrics, fairness and robustness tables), to the Hugging Face Hub in one commit."""
    from dermvlm.hub.push import PushError, push

    try:
        typer.echo(push(run_or_dir, repo, private=private, dry_run=dry_run))
    except PushError as err:
        fail(str(err))
