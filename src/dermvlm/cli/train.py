"""``dermvlm config check``, ``pipeline``, ``train`` and ``demo``: run configs end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dermvlm.cli.common import SetOpt, fail, fresh_option
from dermvlm.config import ConfigError

config_app = typer.Typer(help="Check config files.", no_args_is_help=True)


@config_app.command("check")
def config_check(
    config: Annotated[Path, typer.Argument(help="A run config YAML.")],
    overrides: SetOpt = None,
    accelerate_config: Annotated[Path | None, typer.Option(
        help="The accelerate config you will launch with (configs/accelerate/*.yaml).")] = None,
) -> None:
    """Validate a run config: every field, each stage's trainer settings as TRL will read them, every path, and
    (with --accelerate-config, or under accelerate launch) what the launch's sharding cannot run."""
    from dermvlm.config import load_config
    from dermvlm.launch import launch_problems, sharding_from_config
    from dermvlm.pipeline import check_paths, check_stages

    try:
        cfg = load_config(config, overrides=overrides)
        check_stages(cfg, str(config))
        check_paths(cfg, str(config))
        if accelerate_config is not None:
            problems = launch_problems(cfg, sharding_from_config(accelerate_config), str(config))
            if problems:
                raise ConfigError(problems[0])
    except ConfigError as err:
        fail(str(err))
    typer.echo(f"{config}: ok ({len(cfg.stages)} stages: {', '.join(s.name for s in cfg.stages)})")


def pipeline(
    config: Annotated[Path, typer.Argument(help="Run config.")],
    from_stage: Annotated[str | None, typer.Option("--from", help="Rerun from this stage on.")] = None,
    to_stage: Annotated[str | None, typer.Option("--to", help="Stop after this stage.")] = None,
    overrides: SetOpt = None,
) -> None:
    """Data → stages → merged model, resuming finished stages and checkpoints (runs/<name>/)."""
    from dermvlm.config import load_config
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.distributed import PeerError
    from dermvlm.io import OutputError
    from dermvlm.pipeline import run_pipeline

    try:
        cfg = load_config(config, overrides=overrides)
        final = run_pipeline(cfg, str(config), from_stage, to_stage)
    except (ConfigError, DatasetError, OutputError, PeerError) as err:
        fail(str(err))
    typer.echo(f"final model: {final}")
    typer.echo(f"manifest: {Path(cfg.output_dir) / cfg.name / 'manifest.json'}")


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
    except (ConfigError, DatasetError, OutputError, PeerError) as err:
        fail(str(err))
    typer.echo(f"stage {names[0]} finished: {final}")



def demo(
    config: Annotated[Path, typer.Argument(help="Run config.")] = Path("configs/nano-cpu.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Train the config's stages on the bundled sample, serve the model with vLLM, ask it one question."""
    from dermvlm.config import load_config
    from dermvlm.demo import run_demo
    from dermvlm.serving.server import ServerError

    try:
        cfg = load_config(config, overrides=overrides)
        result = run_demo(cfg, str(config))
    except (ConfigError, ServerError, ValueError) as err:
        fail(str(err))
    typer.echo("")
    typer.echo(f"model:    {result.model_dir}")
    typer.echo(f"image:    {result.image} (label: {result.label})")
    typer.echo(f"question: {result.question}")
    typer.echo(f"answer:   {result.answer}")
    for name, rep in result.reports.items():
        scores = ", ".join(f"{k} accuracy {v['accuracy']:.2f}" for k, v in rep.items() if isinstance(v, dict))
        typer.echo(f"eval {name}: {scores}")
        typer.echo(f"report:   {rep['report']}")
    typer.echo(f"(vLLM ready and evaluated in {result.server_start_seconds:.0f} s; demo took "
               f"{result.total_seconds:.0f} s)")
    typer.echo("note: a research tool trained for seconds on a tiny sample, not a medical diagnosis.")

