"""``dermvlm plan``: memory and time per stage of a run config, before anything loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dermvlm.cli.common import SetOpt, fail
from dermvlm.config import ConfigError

GpusOpt = Annotated[int, typer.Option(help="GPUs on the machine (the sharded strategies split over them).", min=1)]
GpuMemoryOpt = Annotated[str | None, typer.Option(help="Memory of one GPU, e.g. 80GiB, 24GB (warns or refuses "
                                                      "what will not fit).")]


def gpu_memory_bytes(text: str | None) -> int | None:
    from dermvlm.plan import parse_memory

    if text is None:
        return None
    try:
        return parse_memory(text)
    except ValueError as err:
        fail(f"--gpu-memory: {err}")
    return None


def plan(
    config: Annotated[Path, typer.Argument(help="A run config YAML.")],
    overrides: SetOpt = None,
    gpus: GpusOpt = 1,
    gpu_memory: GpuMemoryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Per stage GiB as JSON (for machines).")] = False,
) -> None:
    """Parameters, tokens per image, sequence length and peak GPU memory per stage (one GPU, DDP, ZeRO-2, ZeRO-3,
    FSDP), with and without gradient checkpointing, and rough hours; warns about a stage that will not fit."""
    from dermvlm.config import load_config
    from dermvlm.plan import GIB, Hardware, plan_run

    memory = gpu_memory_bytes(gpu_memory)
    try:
        cfg = load_config(config, overrides=overrides)
        fp, plans = plan_run(cfg, Hardware(gpus=gpus, gpu_memory=memory), str(config))
    except ConfigError as err:
        fail(str(err))
    too_big = [(p, s) for p in plans for s in p.memory if memory and p.total(s) * GIB > memory]
    if as_json:
        typer.echo(json.dumps({
            "config": str(config), "model": fp.source, "parameters": fp.total, "gpus": gpus,
            "gpu_memory_gib": round(memory / GIB, 2) if memory else None,
            "stages": [{"name": p.name, "kind": p.kind, "parameters": p.params, "trainable": p.trainable,
                        "tokens_per_image": p.tokens_per_image, "image_size": list(p.image_size),
                        "sequence_length": p.seq_len, "sequences_per_forward": p.sequences,
                        "gradient_checkpointing": p.gradient_checkpointing,
                        "activations_gib_other_checkpointing": round(p.activations_other_gc, 2),
                        "gib": {s: {k: round(v, 2) for k, v in m.items()} for s, m in p.memory.items()},
                        "hours": None if p.hours is None else round(p.hours, 2), "notes": p.notes,
                        "measured_gpu_peak_gib": p.measured_gpu_gib}
                       for p in plans]}, indent=2))
        return
    show_table(config, fp, plans, gpus, memory)
    for p, s in too_big:
        typer.secho(f"warning: stage {p.name} needs about {p.total(s):.1f} GiB per GPU under {s}, more than "
                    f"{memory / GIB:.1f} GiB", fg=typer.colors.YELLOW, err=True)


def show_table(config: Path, fp, plans, gpus: int, memory: int | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from dermvlm.plan import GIB

    console = Console(width=max(132, Console().width))
    console.print(f"{config}: {fp.source}, {fp.total / 1e9:.2f}B parameters (vision {fp.parts['vision'] / 1e6:.0f}M, "
                  f"projector {fp.parts['projector'] / 1e6:.0f}M, language {fp.parts['language'] / 1e9:.2f}B)")
    strategies = [s for s in plans[0].memory if s != "one GPU"]
    table = Table(title="estimated peak memory per GPU, GiB (calibrated on CPU: README, On a GPU machine)")
    for col in ("stage", "trainable", "tok/img", "seq x n", "weights", "state", "activations GC on/off", "vLLM",
                "total", *[f"{s} x{gpus}" for s in strategies], "hours"):
        table.add_column(col, justify="left" if col == "stage" else "right")

    def cell(v: float) -> str:
        return f"[red]{v:.1f}[/red]" if memory and v * GIB > memory else f"{v:.1f}"

    for p in plans:
        m = p.memory["one GPU"]
        on, off = (m["activations"], p.activations_other_gc)[::1 if p.gradient_checkpointing else -1]
        acts = f"[b]{on:.1f}[/b] / {off:.1f}" if p.gradient_checkpointing else f"{on:.1f} / [b]{off:.1f}[/b]"
        table.add_row(f"{p.name} ({p.kind})", f"{p.trainable / 1e6:.1f}M", str(p.tokens_per_image),
                      f"{p.seq_len} x {p.sequences}", f"{m['weights']:.1f}", f"{m['trainable_state']:.1f}", acts,
                      f"{m['vllm']:.1f}", cell(m["total"]), *[cell(p.total(s)) for s in strategies],
                      "?" if p.hours is None else f"{p.hours:.1f}")
    console.print(table)
    console.print(f"bold: the configured gradient checkpointing; image {plans[0].image_size[0]}x"
                  f"{plans[0].image_size[1]} (the recipe's largest); hours: an H100 at 35% of its bf16 peak, "
                  "not measured on a GPU")
    for p in plans:
        if p.measured_gpu_gib is not None:
            m = p.memory["one GPU"]
            console.print(f"measured ({p.name}): the run's manifest has a GPU peak of {p.measured_gpu_gib:.1f} GiB; "
                          f"planned {m['total'] - m['overhead']:.1f} GiB allocated (+{m['overhead']:.1f} context "
                          "and slack) on one GPU")
    for note in dict.fromkeys(f"{n} ({', '.join(p.name for p in plans if n in p.notes)})"
                              for p in plans for n in p.notes):
        console.print(f"note: {note}")
