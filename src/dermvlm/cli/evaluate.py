"""``dermvlm eval``: ``eval [run] SUITE`` evaluates a model on a VQA suite through an OpenAI-compatible endpoint;
``eval compare DIR...`` tabulates evaluations side by side."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from dermvlm.cli.common import (
    DtypeOpt,
    GroupColOpt,
    ImageColOpt,
    ImagesOpt,
    LabelColOpt,
    LabelsOpt,
    RootOpt,
    SetOpt,
    SourceOpt,
    SplitChoice,
    fail,
    fresh_option,
    one_line,
    run_data,
    source_options,
)
from dermvlm.cli.default_group import DefaultCommandGroup
from dermvlm.cli.interrupts import exit_code, signal_name, unwind_on_signals
from dermvlm.config import ConfigError

eval_app = typer.Typer(
    cls=DefaultCommandGroup, no_args_is_help=True, subcommand_metavar="[run] SUITE [OPTIONS] | compare DIR...",
    help="Evaluate a model on a VQA suite (`dermvlm eval SUITE ...` is `dermvlm eval run SUITE ...`) or compare "
         "evaluations.")


class EvalTracker(StrEnum):
    """Where ``eval --log`` sends the metrics and plots (``tracking.Tracker.evaluation``)."""

    mlflow = "mlflow"
    wandb = "wandb"


OWN_EVAL_FILES = ("cache_key.json", "predictions.jsonl", "metrics.json", "robustness.json")  # eval's, before markers


@eval_app.command("compare")
def eval_compare(
    folders: Annotated[list[Path], typer.Argument(help="Evaluation output folders (each with metrics.json).")],
) -> None:
    """Tabulate evaluations side by side (one column per output folder)."""
    from dermvlm.evaluation.report import compare

    try:
        typer.echo(compare(folders))
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))


@eval_app.command("run")
def eval_run(
    suite: Annotated[Path, typer.Argument(help="A suite YAML (eval/*.yaml).")],
    endpoint: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
                        ] = None,
    model: Annotated[str | None, typer.Option(help="Model name at --endpoint.")] = None,
    serve: Annotated[Path | None, typer.Option(help="Serve this model folder with vLLM for the evaluation.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (predictions, metrics, report).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent requests (at least 1).")] = 8,
    limit: Annotated[int | None, typer.Option(min=0, help="Evaluate the first N items only (0: all).")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for --endpoint.")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="'dermiq', 'none' or a prompt (overrides the suite).")
                             ] = None,
    dtype: DtypeOpt = "auto",
    max_model_len: Annotated[int, typer.Option(min=1, help="Context length for --serve.")] = 1024,
    fresh: Annotated[bool, fresh_option("the answers, metrics and reports an earlier evaluation wrote in --out "
                                        "(nothing else there)")] = False,
    corruption: Annotated[str | None, typer.Option(help="Corrupt every image (MedMNIST-C dermatoscopy: pixelate, "
                                                   "jpeg_compression, gaussian_noise, ..., black_corner, characters).")
                          ] = None,
    severity: Annotated[int | None, typer.Option(min=1, max=5, help="Severity 1-5 of --corruption.")] = None,
    robustness: Annotated[bool, typer.Option("--robustness", help="Run the suite clean and under every corruption "
                                             "x severity of its robustness: block (default all 15 x 5) into --out "
                                             "and write robustness.md/json/png.")] = False,
    data: Annotated[Path | None, typer.Option(help="A benchmark file (VLMEvalKit-style .tsv, .jsonl or .csv) to "
                                              "evaluate with this suite's settings.")] = None,
    split: Annotated[SplitChoice | None, typer.Option(help="The suite's split (all: every image of an external "
                                                      "test set).")] = None,
    run: Annotated[Path | None, typer.Option(help="The pipeline run folder (runs/NAME) the model was trained in: "
                                             "the images its build split (splits.csv) keep their split here, "
                                             "and an item whose image is in its training split stops the "
                                             "evaluation.")] = None,
    judge_endpoint: Annotated[str | None, typer.Option(help="An OpenAI-compatible base URL whose model grades "
                                                       "open-ended answers against the reference (LLM judge).")
                              ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model name at --judge-endpoint.")] = None,
    judge_api_key: Annotated[str | None, typer.Option(help="API key for --judge-endpoint.")] = None,
    operating_point: Annotated[str | None, typer.Option(help="Class-score operating point: 'fit' (choose it on this "
                                                        "suite, a validation split) or an operating_point.json "
                                                        "written by such a run (overrides the suite).")] = None,
    source: SourceOpt = None,
    root: RootOpt = None,
    images: ImagesOpt = None,
    labels: LabelsOpt = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    overrides: SetOpt = None,
    allow_outside_images: Annotated[bool, typer.Option(help="Accept image paths (--data's image_path, --labels) "
                                                       "outside their file's or --images folder.")] = False,
    log: Annotated[list[EvalTracker] | None, typer.Option(
        "--log", help="Also log the metrics and plots to MLflow or W&B (repeatable; with --run, under the run's "
                      "name and its MLflow store, as the pipeline's evaluation).")] = None,
) -> None:
    """Evaluate a model on a VQA suite through an OpenAI-compatible endpoint (`dermvlm eval SUITE` runs this).

    Answers are reused on a rerun only if the model, endpoint, sampling settings, system prompt and suite items are
    the same (cache_key.json); exit code 1 when some items' requests failed (errors.jsonl), 2 on any other error,
    128 + the signal number on SIGINT/SIGTERM (the vLLM server of --serve is stopped)."""
    from dermvlm.config import SuiteConfig, load_config
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.evaluation.runner import EndpointError, EndpointOptions
    from dermvlm.io import check_output
    from dermvlm.models.pixels import image_side
    from dermvlm.run_pixels import with_image_side
    from dermvlm.serving.client import served_image_side
    from dermvlm.serving.server import ServerError
    from dermvlm.tracking import Tracker, TrackingError

    check_eval_flags(endpoint, serve, model, corruption, severity, robustness, judge_endpoint, judge_model)
    out_dir = out or Path("runs") / "eval" / suite.stem
    with unwind_on_signals() as caught:
        try:
            cfg = load_config(suite, SuiteConfig, overrides)
            cfg = suite_for_run(cfg, split, data, corruption, severity)
            if allow_outside_images:
                cfg = cfg.model_copy(update={"allow_outside_images": True})
            out_dir = out or Path("runs") / "eval" / cfg.name
            check_output(out_dir, "eval", own_files=OWN_EVAL_FILES)  # answers are kept, a foreign folder refused
            tracker = Tracker([t.value for t in log or []], run.name if run else cfg.name, run or out_dir,
                              {"suite": str(suite)})
            tracker.check("--log")  # a tracking server that does not answer stops before any request
            cfg = with_image_side(cfg, image_side(serve) if serve else served_image_side(endpoint or "", model or "",
                                                                                        api_key))
            cfg = with_sources(cfg, source_options(source, root, images, labels, image_col, label_col, group_col,
                                                   allow_outside_images and labels is not None), str(suite))
            ep = EndpointOptions(base_url=endpoint or "", model=model or "", api_key=api_key or "EMPTY",
                                 concurrency=concurrency)
            judging = {}
            if judge_endpoint is not None:
                judging = {"judge": EndpointOptions(base_url=judge_endpoint, model=judge_model or "",
                                                    api_key=judge_api_key or "EMPTY", concurrency=concurrency)}
            if robustness:
                from dermvlm.evaluation.robustness import run_robustness as runner
            else:
                from dermvlm.evaluation.suite import run_suite as runner
            result = runner(cfg, out_dir, ep, serve_model=serve, **judging,
                            serve_options={"dtype": dtype, "max_model_len": max_model_len} if serve else None,
                            base=suite.resolve().parent, limit=limit,
                            system_prompt=system_prompt, fresh=fresh,
                            **({"train_data": run_data(run)} if run else {}),
                            **({"operating_point": operating_point} if operating_point and not robustness else {}))
        except KeyboardInterrupt:
            typer.secho(f"error: interrupted by {signal_name(caught)}: "
                        f"{'stopped the vLLM server; ' if serve else ''}the answers so far are kept in "
                        f"{out_dir / 'predictions.jsonl'}; rerun the same command to continue", fg=typer.colors.RED,
                        err=True)
            raise typer.Exit(exit_code(caught)) from None
        except (ConfigError, DatasetError, ServerError, EndpointError, ValueError, OSError) as err:
            fail(one_line(err))
    try:
        tracker.evaluation(cfg.name, result, out_dir)
    except TrackingError as err:
        fail(str(err))
    finally:
        tracker.close()
    if robustness:
        report_robustness(result, out_dir)
    else:
        report_metrics(result, out_dir)


def with_sources(cfg, given: dict, where: str):
    """The suite with the command line's data options merged into its sources (only what they name)."""
    if not given:
        return cfg
    from dermvlm.config import SuiteConfig, validate
    from dermvlm.recipes.run_data import merged_sources

    return validate(cfg.model_dump() | {"sources": merged_sources(cfg.model_dump()["sources"], given)}, SuiteConfig,
                    where)


def check_eval_flags(endpoint, serve, model, corruption, severity, robustness, judge_endpoint, judge_model) -> None:
    """The combinations of ``eval`` flags that cannot work, refused before anything is read."""
    if (endpoint is None) == (serve is None):
        fail("give exactly one of --endpoint URL (with --model) and --serve MODEL_DIR")
    if (corruption is None) != (severity is None):
        fail("--corruption NAME and --severity K (1-5) go together")
    if corruption is not None and robustness:
        fail("--robustness runs every corruption of the suite's robustness: block; leave out --corruption")
    if corruption is not None:
        from dermvlm.evaluation.corruptions import NAMES

        if corruption not in NAMES:
            fail(f"--corruption: unknown corruption {corruption!r}; choose one of: {', '.join(NAMES)}")
    if endpoint is not None and not model:
        fail("--endpoint needs --model NAME (the name the server answers to)")
    if (judge_endpoint is None) != (judge_model is None):
        fail("--judge-endpoint URL and --judge-model NAME go together")
    if judge_endpoint is not None and robustness:
        fail("--judge-endpoint grades one evaluation; leave it out of --robustness")


def suite_for_run(cfg, split: str | None, data: Path | None, corruption: str | None, severity: int | None):
    """The suite with the command line's --split, --data and --corruption applied."""
    from dermvlm.config import CorruptionSpec, SuiteConfig

    if split is not None:
        cfg = SuiteConfig.model_validate(cfg.model_dump() | {"split": split})
    if data is not None:
        fmt = {".tsv": "tsv", ".jsonl": "jsonl", ".csv": "csv"}.get(data.suffix.lower())
        if fmt is None:
            raise ConfigError(f"--data {data}: name the file .tsv, .jsonl or .csv")
        cfg = SuiteConfig.model_validate(cfg.model_dump() | {"format": fmt, "data": str(data.resolve()),
                                                             "sources": []})
    if corruption is not None:
        cfg = cfg.model_copy(update={"corruption": CorruptionSpec(name=corruption, severity=severity)})
    return cfg


def report_robustness(result: dict, out_dir: Path) -> None:
    worst = result["worst_corruption"]
    typer.echo(f"clean balanced accuracy {result['clean']['balanced_accuracy']:.3f}; worst corruption {worst} "
               f"(mean relative {result['mean_relative_balanced_accuracy'][worst]:.2f}); "
               f"table in {out_dir / 'robustness.md'}")
    if result["errors"]:
        typer.secho(f"error: {result['errors']} items got no answer across the runs; rerun the same command to "
                    "ask them again", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def report_metrics(result: dict, out_dir: Path) -> None:
    """The metrics by question type, the report's path, and exit status 1 when some items got no answer."""
    from dermvlm.evaluation.closed_set import summary as closed_set_summary

    for kind, t in result["metrics"]["types"].items():
        if kind == "open_text":
            typer.echo(f"{kind:<11} n={t['n']:<5} exact match {t['exact_match']:.3f}  token F1 {t['token_f1']:.3f}  "
                       f"ROUGE-L {t['rouge_l']:.3f}  BLEU {t['bleu']:.2f}"
                       + (f"  judge {t['judge']['accuracy']:.3f} (unparsable {t['judge']['unparsable_rate']:.3f})"
                          if "judge" in t else ""))
            continue
        typer.echo(f"{kind:<11} n={t['n']:<5} accuracy {t.get('accuracy', 0):.3f}  balanced "
                   f"{t.get('balanced_accuracy', 0) or 0:.3f}  unparsable {t.get('unparsable_rate', 0):.3f}")
        if t.get("class_scores"):
            typer.echo(closed_set_summary(t["class_scores"]))
    typer.echo(f"report: {out_dir / 'report.md'}")
    judged = result.get("judge") or {}
    if judged.get("unjudged"):
        example = f" (e.g. {judged['failed_examples'][0]})" if judged.get("failed_examples") else ""
        typer.secho(f"error: the judge {judged['model']!r} at {judged['endpoint']} gave no verdict on "
                    f"{judged['unjudged']} answers{example}; check --judge-endpoint and --judge-model, then rerun "
                    "the same command to ask it again", fg=typer.colors.RED, err=True)
    if result["errors"]:
        example = f" (e.g. {result['error_examples'][0][:120]})" if result.get("error_examples") else ""
        typer.secho(f"error: {result['errors']} of {result['n_items']} items got no answer; they are listed in "
                    f"{out_dir / 'errors.jsonl'}, not scored, and asked again on the next run{example}",
                    fg=typer.colors.RED, err=True)
    if result["errors"] or judged.get("unjudged"):
        raise typer.Exit(1)
