"""``dermvlm config check``, ``pipeline``, ``train`` and ``demo``: run configs end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dermvlm.cli.common import (
    GroupColOpt,
    ImageColOpt,
    ImagesOpt,
    LabelColOpt,
    LabelsOpt,
    SetOpt,
    fail,
    fresh_option,
    source_options,
)
from dermvlm.cli.plan import GpuMemoryOpt, GpusOpt, gpu_memory_bytes
from dermvlm.config import ConfigError

config_app = typer.Typer(help="Check config files.", no_args_is_help=True)

DEMO_CONFIG = Path("configs/nano-cpu.yaml")  # the demo's run, read from the project's root


@config_app.command("check")
def config_check(
    config: Annotated[Path, typer.Argument(help="A run config YAML.")],
    overrides: SetOpt = None,
    accelerate_config: Annotated[Path | None, typer.Option(
        help="The accelerate config you will launch with (configs/accelerate/*.yaml).")] = None,
    gpu_memory: GpuMemoryOpt = None,
    gpus: GpusOpt = 1,
) -> None:
    """Check a run before it starts: every field, each stage's trainer settings as TRL will read them, the data
    (its images, labels and planned split; nothing decoded), each stage's dataset kinds, the held-out split and
    the suites (none may show a training image), the model family and processor, (with --accelerate-config, or
    under accelerate launch) what the launch's sharding cannot run, and (with --gpu-memory) a planned peak
    (dermvlm plan) larger than the GPU."""
    from dermvlm.config import load_config
    from dermvlm.launch import launch_problems, sharding_from_config
    from dermvlm.run_check import check_run

    memory = gpu_memory_bytes(gpu_memory)
    try:
        cfg = load_config(config, overrides=overrides)
        lines = check_run(cfg, str(config))
        if accelerate_config is not None:
            problems = launch_problems(cfg, sharding_from_config(accelerate_config), str(config))
            if problems:
                raise ConfigError(problems[0])
        if memory is not None:
            from dermvlm.plan import check_plan

            check_plan(cfg, memory, gpus, str(config))
    except ConfigError as err:
        fail(str(err))
    for line in "\n".join(lines).splitlines():
        typer.echo(f"  {line}")
    typer.echo(f"{config}: ok ({len(cfg.stages)} stages: {', '.join(s.name for s in cfg.stages)})")


def pipeline(
    config: Annotated[Path, typer.Argument(help="Run config.")],
    from_stage: Annotated[str | None, typer.Option("--from", help="Rerun from this stage on.")] = None,
    to_stage: Annotated[str | None, typer.Option("--to", help="Stop after this stage.")] = None,
    overrides: SetOpt = None,
    images: ImagesOpt = None,
    labels: LabelsOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check, build the data, load the model and run one "
                                          "batch per stage forward; train nothing.")] = False,
) -> None:
    """Data → stages → merged model → evaluation of the held-out split, resuming finished stages and checkpoints
    (runs/<name>/). --images/--labels/... set the config's data: (only what they name)."""
    from dermvlm.config import load_config
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.distributed import PeerError
    from dermvlm.io import OutputError
    from dermvlm.pipeline import run_pipeline
    from dermvlm.recipes.run_data import with_data
    from dermvlm.tracking import TrackingError

    try:
        cfg = with_data(load_config(config, overrides=overrides),
                        source_options(None, None, images, labels, image_col, label_col, group_col))
        if dry_run:
            from dermvlm.dry_run import dry_run as preview

            for line in preview(cfg, str(config)):
                typer.echo(line)
            return
        final = run_pipeline(cfg, str(config), from_stage, to_stage)
    except (ConfigError, DatasetError, OutputError, PeerError, TrackingError) as err:
        fail(str(err))
    typer.echo(f"final model: {final}")
    manifest = Path(cfg.output_dir) / cfg.name / "manifest.json"
    if manifest.is_file():
        import json

        echo_reports(json.loads(manifest.read_text()).get("evaluation") or {})
    typer.echo(f"manifest: {manifest}")


def echo_reports(reports: dict) -> None:
    """One line of accuracies per evaluated suite (n items each), and where its report is."""
    for name, rep in reports.items():
        scores = ", ".join(f"{k} accuracy {v['accuracy']:.2f} (n {v['n']})" for k, v in rep.items()
                           if isinstance(v, dict) and v.get("accuracy") is not None)
        typer.echo(f"eval {name}: {scores}")
        typer.echo(f"report:   {rep['report']}")


def train(
    kind: Annotated[str, typer.Argument(help="vision, align, sft, grpo or dpo.")],
    config: Annotated[Path, typer.Argument(help="Run config.")],
    stage: Annotated[str | None, typer.Option(help="Stage name (needed when the config has several of KIND).")
                     ] = None,
    fresh: Annotated[bool, fresh_option("the stage's folder (runs/NAME/STAGE: checkpoints, adapter, model, logs) "
                                        "an earlier run wrote; later stages then train again on their next run")
                     ] = False,
    overrides: SetOpt = None,
) -> None:
    """Run one stage of a config (and whatever it needs before it), e.g. `dermvlm train grpo configs/x.yaml`.
    A finished stage is reused and an interrupted one resumes from its last checkpoint, unless --fresh."""
    from dermvlm.config import STAGE_KINDS, load_config
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.distributed import PeerError
    from dermvlm.io import OutputError
    from dermvlm.pipeline import run_pipeline
    from dermvlm.tracking import TrackingError

    if kind not in STAGE_KINDS:
        fail(f"kind {kind!r}: choose one of {', '.join(STAGE_KINDS)}")
    try:
        cfg = load_config(config, overrides=overrides)
        names = [s.name for s in cfg.stages if s.kind == kind and (stage is None or s.name == stage)]
        if not names:
            fail(f"{config}: no {kind} stage" + (f" named {stage!r}" if stage else ""))
        if len(names) > 1:
            fail(f"{config}: {len(names)} {kind} stages ({', '.join(names)}); choose one with --stage NAME")
        final = run_pipeline(cfg, str(config), from_stage=names[0] if fresh else None, to_stage=names[0])
    except (ConfigError, DatasetError, OutputError, PeerError, TrackingError) as err:
        fail(str(err))
    typer.echo(f"stage {names[0]} finished: {final}")



def demo(
    config: Annotated[Path, typer.Argument(help="Run config.")] = DEMO_CONFIG,
    overrides: SetOpt = None,
) -> None:
    """Train the config's stages on the bundled sample, serve the model with vLLM, ask it one question."""
    from dermvlm.config import load_config
    from dermvlm.demo import run_demo
    from dermvlm.serving.server import ServerError
    from dermvlm.tracking import TrackingError

    if config == DEMO_CONFIG and not config.is_file():
        fail(f"{config}: not found in {Path.cwd()}: run `dermvlm demo` from the project's root (where configs/ is), "
             "or name a run config: dermvlm demo CONFIG")
    try:
        cfg = load_config(config, overrides=overrides)
        result = run_demo(cfg, str(config))
    except (ConfigError, ServerError, TrackingError, ValueError) as err:
        fail(str(err))
    typer.echo("")
    typer.echo(f"model:    {result.model_dir}")
    typer.echo(f"image:    {result.image} (label: {result.label})")
    typer.echo(f"question: {result.question}")
    typer.echo(f"answer:   {result.answer}")
    echo_reports(result.reports)
    typer.echo(f"(vLLM ready and evaluated in {result.server_start_seconds:.0f} s; demo took "
               f"{result.total_seconds:.0f} s)")
    typer.echo("note: a research tool trained for seconds on a tiny sample, not a medical diagnosis.")

