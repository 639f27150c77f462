"""The ``dermvlm`` command line: parse, load config, call one function. Heavy imports stay inside commands."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
import typer.core

from dermvlm import __version__
from dermvlm.config import ConfigError, FamilyName

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
MergeDtype = Literal["float32", "bfloat16", "float16"]
SplitChoice = Literal["train", "val", "test", "all"]
LabelClassifier = Literal["features", "cnn", "both"]


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a value not among an option's choices, a missing argument) as one ``error:`` line naming the
    option and what it accepts, instead of a usage panel; exit status 2 as before."""

    def main(self, *args, **kwargs):
        import sys

        from typer import _click as click  # typer's own click, whose exceptions its commands raise

        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as err:  # a bare group: its help, as before
            typer.echo(err.ctx.get_help() if err.ctx else err.format_message())
            sys.exit(err.exit_code)
        except click.ClickException as err:
            typer.secho(f"error: {err.format_message().replace('Value error, ', '')}", fg=typer.colors.RED, err=True)
            sys.exit(err.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(help="dermvlm: a dermatology vision-language assistant, trained with TRL and served with vLLM.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=OneLineErrors)
nano_app = typer.Typer(help="Build the tiny Qwen2.5-VL-architecture model locally.", no_args_is_help=True)
model_app = typer.Typer(help="Model folders: merge LoRA adapters.", no_args_is_help=True)
config_app = typer.Typer(help="Check config files.", no_args_is_help=True)
app.add_typer(nano_app, name="nano")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")
data_app = typer.Typer(help="Data recipes: labeled images → training and evaluation datasets.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
kg_app = typer.Typer(help="The dermatology knowledge graph: stats, nodes, paths, export, scoring.",
                     no_args_is_help=True)
app.add_typer(kg_app, name="kg")

# Options shared by `data build` and `eval`: a command-line source replaces the recipe's (or suite's) sources.
SourceOpt = Annotated[str | None, typer.Option(help="Replace the declared sources: adapter name.")]
RootOpt = Annotated[Path | None, typer.Option(help="Root folder for --source.")]
ImagesOpt = Annotated[Path | None, typer.Option(help="Your images folder (with --labels).")]
LabelsOpt = Annotated[Path | None, typer.Option(help="Your labels CSV.")]
ImageColOpt = Annotated[str, typer.Option(help="Image column of --labels.")]
LabelColOpt = Annotated[str, typer.Option(help="Label column of --labels.")]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)], force=True)
    for noisy in ("httpx", "httpx2", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Harmless on AVX512-BF16 CPUs (an optional hub kernel we must not fetch; ENVIRONMENT.md).
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dermvlm {__version__}")
        raise typer.Exit()


_DEBUG = False


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an unexpected error.")] = False,
    data_root: Annotated[Path | None, typer.Option(
        envvar="DERMVLM_DATA_ROOT", help="Where the real datasets are: replaces ../shared/data in every recipe, "
        "suite and config.")] = None,
) -> None:
    global _DEBUG
    _DEBUG = debug
    if data_root is not None:
        os.environ["DERMVLM_DATA_ROOT"] = str(data_root.resolve())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _setup_logging(verbose)


DISK_ERRORS = {"EROFS": "the file system is read-only", "ENOSPC": "no space left on the device",
               "EDQUOT": "the disk quota is exceeded", "EACCES": "permission denied"}


def run() -> None:
    """The console entry point: ``app`` with every error that escapes a command as one line and a non-zero exit
    (disk problems named as such; ``--debug`` shows the traceback)."""
    import errno
    import sys

    def _stop(signum, _frame):  # SIGTERM unwinds like Ctrl-C, so every started server is stopped on the way out
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        app()
    except KeyboardInterrupt:
        typer.secho("error: interrupted", fg=typer.colors.RED, err=True)
        sys.exit(130)
    except OSError as err:
        if _DEBUG:
            raise
        name = errno.errorcode.get(err.errno or 0, "")
        what = DISK_ERRORS.get(name, err.strerror or str(err))
        where = f"{err.filename}: " if err.filename else ""
        typer.secho(f"error: cannot write or read {where}{what} ({name or type(err).__name__}); free space, fix the "
                    f"permissions or choose another folder", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except Exception as err:
        if _DEBUG:
            raise
        text = str(err)
        for name, phrase in (("ENOSPC", "No space left on device"), ("EROFS", "Read-only file system")):
            if phrase in text:  # an OSError wrapped by a library (safetensors, arrow)
                typer.secho(f"error: cannot write: {DISK_ERRORS[name]} ({name}, in {type(err).__name__}); free "
                            f"space or choose another folder", fg=typer.colors.RED, err=True)
                sys.exit(1)
        typer.secho(f"error: unexpected {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                    f"(rerun with --debug for the traceback)", fg=typer.colors.RED, err=True)
        sys.exit(1)


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
    family: Annotated[FamilyName, typer.Option(help="VLM family (dermvlm.models.families).")] = "qwen2_5_vl",
) -> None:
    """Build a tiny model of a VLM family (default Qwen2.5-VL) with random weights and a locally trained
    tokenizer."""
    import json

    from dermvlm.io import check_output
    from dermvlm.models.families import FAMILIES, nano_presets
    from dermvlm.models.nano import build_nano

    if family not in FAMILIES:
        _fail(f"--family: unknown model family {family!r}; known families: {', '.join(sorted(FAMILIES))}")
    presets = nano_presets(family)
    if preset not in presets:
        _fail(f"--preset: unknown preset {preset!r}; choose one of {', '.join(sorted(presets))}")
    try:
        check_output(out, "nano build", force)
        path = build_nano(out, preset, seed, min_pixels, max_pixels, patch_size=patch_size, family=family)
    except ValueError as err:
        _fail(str(err))
    info = json.loads((path / "dermvlm_nano.json").read_text())
    what = preset if family == "qwen2_5_vl" else f"{family} {preset}"
    typer.echo(f"built {what} model ({info['parameters']:,} parameters) in {path}")


@model_app.command("merge")
def model_merge(
    adapter: Annotated[Path, typer.Argument(help="LoRA adapter folder (adapter_config.json).")],
    out: Annotated[Path, typer.Option(help="Folder for the merged model.")],
    base: Annotated[str | None, typer.Option(help="Base model; default: the adapter's recorded base.")] = None,
    dtype: Annotated[MergeDtype, typer.Option(help="dtype of the merged weights.")] = "float32",
) -> None:
    """Merge a LoRA adapter into its base model: a standalone folder vLLM serves."""
    from dermvlm.models.merge import merge_adapter

    if not (adapter / "adapter_config.json").is_file():
        _fail(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    typer.echo(f"merged into {merge_adapter(adapter, out, base, dtype)}")


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="A run config YAML.")]) -> None:
    """Validate a run config: every field, each stage's trainer settings as TRL will read them, and every path."""
    from dermvlm.config import load_config
    from dermvlm.pipeline import check_paths, check_stages

    try:
        cfg = load_config(config)
        check_stages(cfg, str(config))
        check_paths(cfg, str(config))
    except ConfigError as err:
        _fail(str(err))
    typer.echo(f"{config}: ok ({len(cfg.stages)} stages: {', '.join(s.name for s in cfg.stages)})")


def _run_data(run: Path) -> Path:
    """The built recipe of a pipeline run folder (``RUN/data``), or ``run`` itself when it is one."""
    for candidate in (run / "data", run):
        if (candidate / "recipe.json").is_file():
            return candidate
    raise ConfigError(f"--run {run}: no built data recipe there (expected {run / 'data' / 'recipe.json'}); give the "
                      "run folder of `dermvlm pipeline` (runs/NAME)")


def _parse_loras(items: list[str]) -> dict[str, str]:
    loras = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            _fail(f"--lora {item!r}: expected NAME=DIR")
        loras[name] = path
    return loras


@app.command()
def serve(
    model_dir: Annotated[str, typer.Argument(help="Model folder (or hub name on a connected machine).")],
    vllm_args: Annotated[list[str] | None, typer.Argument(
        help="Extra vLLM flags after --, e.g. `dermvlm serve DIR -- --max-num-seqs 8`.", show_default=False)] = None,
    lora: Annotated[list[str] | None, typer.Option(help="Serve an adapter as NAME=DIR (repeatable).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 unless told otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        envvar="DERMVLM_API_KEY", help="Require this key (Authorization: Bearer KEY) on every route but /health.")
    ] = None,
    allow_image_domain: Annotated[list[str] | None, typer.Option(
        help="Let image URLs point at this host (repeatable); by default only inline data: URLs are read.")] = None,
    served_model_name: Annotated[str | None, typer.Option(help="Name to answer to (default: the folder's).")] = None,
    max_model_len: Annotated[int, typer.Option(help="Context length (must hold the image tokens).")] = 1024,
    dtype: Annotated[Dtype, typer.Option(help="Weights dtype (auto: the checkpoint's).")] = "auto",
    kv_cache_memory: Annotated[str, typer.Option(help="KV cache size on CPU (e.g. 128M, 1G).")] = "128M",
    enforce_eager: Annotated[bool | None, typer.Option(
        "--enforce-eager/--no-enforce-eager", help="Eager mode (default: on the CPU build only).",
        show_default=False)] = None,
    tensor_parallel_size: Annotated[int, typer.Option(help="GPUs to split the model over.")] = 1,
    gpu_memory_utilization: Annotated[float | None, typer.Option(
        help="Fraction of GPU memory for vLLM (CUDA build only; vLLM's default 0.92).")] = None,
    max_lora_rank: Annotated[int | None, typer.Option(
        help="Largest LoRA rank to accept (default: the adapters' largest r).")] = None,
    vllm_arg: Annotated[list[str] | None, typer.Option(
        help="Extra vLLM flags, shell-split (repeatable), e.g. --vllm-arg '--max-num-seqs 8'.")] = None,
    log_file: Annotated[Path | None, typer.Option(help="Server log file.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for /health.")] = 300.0,
) -> None:
    """Start vLLM's OpenAI-compatible server behind dermvlm's front door; stop both on Ctrl-C or SIGTERM.

    The front door checks the API key on every route but /health, keeps /invocations closed (404) and refuses
    image URLs that are not data: URLs or on an --allow-image-domain host (400); vLLM itself is on a private socket.
    """
    from dermvlm.serving.server import ServeConfigError, ServeOptions, ServerError, VLLMServer, split_vllm_args

    def _stop(signum, _frame):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a second signal must not cut the shutdown
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    try:
        extra = split_vllm_args(vllm_arg or []) + list(vllm_args or [])
        if vllm_args and not vllm_args[0].startswith("-"):
            raise ServeConfigError(f"unexpected argument {vllm_args[0]!r}: put vLLM flags after -- "
                                   f"(dermvlm serve MODEL_DIR -- --flag value)")
        options = ServeOptions(
            model=model_dir, host=host, port=port, api_key=api_key, loras=_parse_loras(lora or []),
            served_model_name=served_model_name, max_model_len=max_model_len, dtype=dtype,
            kv_cache_memory=kv_cache_memory, max_lora_rank=max_lora_rank, enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
            allowed_image_domains=list(allow_image_domain or []), extra_args=extra,
            log_file=str(log_file or Path(f"vllm-serve-{os.getpid()}.log")), startup_timeout=timeout,
        )
        options.validate()
    except ServerError as err:
        _fail(str(err).splitlines()[0])
    server = VLLMServer(options)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    for sig, handler in previous.items():
        if sig != signal.SIGHUP or handler is not signal.SIG_IGN:  # under nohup SIGHUP stays ignored
            signal.signal(sig, _stop)
    try:
        server.start()
        media = ", ".join(options.allowed_image_domains) or "none (data: URLs only)"
        typer.echo(f"serving {server.model_name} at {server.base_url} (log: {server.log_path}); API key "
                   f"{'required' if api_key else 'off'}; image hosts: {media}; Ctrl-C stops")
        while server.alive():
            time.sleep(0.5)
        dead = "vLLM" if server.proc is None or server.proc.poll() is not None else "the front door"
        code = (server.proc if dead == "vLLM" else server.proxy_proc).poll()
        _fail(f"{dead} exited with code {code}; see {server.log_path}")
    except ServerError as err:
        _fail(str(err).splitlines()[0])
    except KeyboardInterrupt:
        typer.echo("stopping vLLM and the front door")
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
def pipeline(
    config: Annotated[Path, typer.Argument(help="Run config.")],
    from_stage: Annotated[str | None, typer.Option("--from", help="Rerun from this stage on.")] = None,
    to_stage: Annotated[str | None, typer.Option("--to", help="Stop after this stage.")] = None,
) -> None:
    """Data → stages → merged model, resuming finished stages and checkpoints (runs/<name>/)."""
    from dermvlm.config import load_config
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.io import OutputError
    from dermvlm.pipeline import run_pipeline

    try:
        cfg = load_config(config)
        final = run_pipeline(cfg, str(config), from_stage, to_stage)
    except (ConfigError, DatasetError, OutputError) as err:
        _fail(str(err))
    typer.echo(f"final model: {final}")
    typer.echo(f"manifest: {Path(cfg.output_dir) / cfg.name / 'manifest.json'}")


@app.command()
def train(
    kind: Annotated[str, typer.Argument(help="vision, align, sft, grpo or dpo.")],
    config: Annotated[Path, typer.Argument(help="Run config.")],
    stage: Annotated[str | None, typer.Option(help="Stage name (needed when the config has several of KIND).")
                     ] = None,
    fresh: Annotated[bool, typer.Option(help="Train the stage again from its start, even if it finished.")] = False,
) -> None:
    """Run one stage of a config (and whatever it needs before it), e.g. `dermvlm train grpo configs/x.yaml`.
    A finished stage is reused and an interrupted one resumes from its last checkpoint, unless --fresh."""
    from dermvlm.config import STAGE_KINDS, load_config
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.io import OutputError
    from dermvlm.pipeline import run_pipeline

    if kind not in STAGE_KINDS:
        _fail(f"kind {kind!r}: choose one of {', '.join(STAGE_KINDS)}")
    try:
        cfg = load_config(config)
        names = [s.name for s in cfg.stages if s.kind == kind and (stage is None or s.name == stage)]
        if not names:
            _fail(f"{config}: no {kind} stage" + (f" named {stage!r}" if stage else ""))
        if len(names) > 1:
            _fail(f"{config}: {len(names)} {kind} stages ({', '.join(names)}); choose one with --stage NAME")
        final = run_pipeline(cfg, str(config), from_stage=names[0] if fresh else None, to_stage=names[0])
    except (ConfigError, DatasetError, OutputError) as err:
        _fail(str(err))
    typer.echo(f"stage {names[0]} finished: {final}")


@app.command("eval")
def eval_cmd(
    suite: Annotated[str, typer.Argument(help="A suite YAML (eval/*.yaml), or 'compare' followed by output folders.")],
    folders: Annotated[list[Path] | None, typer.Argument(help="With 'compare': evaluation output folders.")] = None,
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
    dtype: Annotated[Dtype, typer.Option(help="dtype for --serve.")] = "auto",
    max_model_len: Annotated[int, typer.Option(min=1, help="Context length for --serve.")] = 1024,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard the answers (and other files) an earlier eval "
                                        "wrote in --out and start over.")] = False,
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
                                             "an item whose image is in its training split stops the "
                                             "evaluation.")] = None,
    judge_endpoint: Annotated[str | None, typer.Option(help="An OpenAI-compatible base URL whose model grades "
                                                       "open-ended answers against the reference (LLM judge).")
                              ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model name at --judge-endpoint.")] = None,
    judge_api_key: Annotated[str | None, typer.Option(help="API key for --judge-endpoint.")] = None,
    source: SourceOpt = None,
    root: RootOpt = None,
    images: ImagesOpt = None,
    labels: LabelsOpt = None,
    image_col: ImageColOpt = "image",
    label_col: LabelColOpt = "label",
) -> None:
    """Evaluate a model on a VQA suite through an OpenAI-compatible endpoint; `eval compare DIR...` tabulates runs.

    Answers are reused on a rerun only if the model, endpoint, sampling settings, system prompt and suite items are
    the same (cache_key.json); exit code 1 when some items' requests failed (errors.jsonl), 2 on any other error,
    128 + the signal number on SIGINT/SIGTERM (the vLLM server of --serve is stopped)."""
    if suite == "compare":
        from dermvlm.evaluation.report import compare

        if not folders:
            _fail("eval compare needs one or more output folders")
        try:
            typer.echo(compare(folders))
        except (FileNotFoundError, ValueError) as err:
            _fail(str(err))
        return
    import threading

    from dermvlm.config import SuiteConfig, load_config
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.evaluation.runner import EndpointError, EndpointOptions
    from dermvlm.evaluation.suite import run_suite
    from dermvlm.serving.server import ServerError

    if (endpoint is None) == (serve is None):
        _fail("give exactly one of --endpoint URL (with --model) and --serve MODEL_DIR")
    if (corruption is None) != (severity is None):
        _fail("--corruption NAME and --severity K (1-5) go together")
    if corruption is not None and robustness:
        _fail("--robustness runs every corruption of the suite's robustness: block; leave out --corruption")
    if corruption is not None:
        from dermvlm.evaluation.corruptions import NAMES

        if corruption not in NAMES:
            _fail(f"--corruption: unknown corruption {corruption!r}; choose one of: {', '.join(NAMES)}")
    if endpoint is not None and not model:
        _fail("--endpoint needs --model NAME (the name the server answers to)")
    if (judge_endpoint is None) != (judge_model is None):
        _fail("--judge-endpoint URL and --judge-model NAME go together")
    if judge_endpoint is not None and robustness:
        _fail("--judge-endpoint grades one evaluation; leave it out of --robustness")

    def one_line(err: BaseException) -> str:  # a server's log tail: its first and last lines
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        return lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"

    caught: list[int] = []

    def on_signal(signum, _frame) -> None:  # unwind, so that the vLLM server's context manager stops it
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not interrupt the shutdown
        caught.append(signum)
        raise KeyboardInterrupt

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    out_dir = out or Path("runs") / "eval" / Path(suite).stem
    try:
        cfg = load_config(Path(suite), SuiteConfig)
        if split is not None:
            cfg = SuiteConfig.model_validate(cfg.model_dump() | {"split": split})
        if data is not None:
            fmt = {".tsv": "tsv", ".jsonl": "jsonl", ".csv": "csv"}.get(data.suffix.lower())
            if fmt is None:
                raise ConfigError(f"--data {data}: name the file .tsv, .jsonl or .csv")
            cfg = SuiteConfig.model_validate(cfg.model_dump() | {"format": fmt, "data": str(data.resolve()),
                                                                 "sources": []})
        out_dir = out or Path("runs") / "eval" / cfg.name
        overrides = source_overrides(source, root, images, labels, image_col, label_col, None)
        ep = EndpointOptions(base_url=endpoint or "", model=model or "", api_key=api_key or "EMPTY",
                             concurrency=concurrency)
        if corruption is not None:
            from dermvlm.config import CorruptionSpec

            cfg = cfg.model_copy(update={"corruption": CorruptionSpec(name=corruption, severity=severity)})
        runner, judging = run_suite, {}
        if judge_endpoint is not None:
            judging = {"judge": EndpointOptions(base_url=judge_endpoint, model=judge_model or "",
                                                api_key=judge_api_key or "EMPTY", concurrency=concurrency)}
        if robustness:
            from dermvlm.evaluation.robustness import run_robustness as runner
        result = runner(cfg, out_dir, ep, serve_model=serve, **judging,
                        serve_options={"dtype": dtype, "max_model_len": max_model_len} if serve else None,
                        overrides=overrides, base=Path(suite).resolve().parent, limit=limit,
                        system_prompt=system_prompt, fresh=fresh, **({"train_data": _run_data(run)} if run else {}))
    except KeyboardInterrupt:
        signum = caught[0] if caught else signal.SIGINT
        typer.secho(f"error: interrupted by {signal.Signals(signum).name}: "
                    f"{'stopped the vLLM server; ' if serve else ''}the answers so far are kept in "
                    f"{out_dir / 'predictions.jsonl'}; rerun the same command to continue", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(128 + signum) from None
    except (ConfigError, DatasetError, ServerError, EndpointError, ValueError, OSError) as err:
        _fail(one_line(err))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if robustness:
        worst = result["worst_corruption"]
        typer.echo(f"clean balanced accuracy {result['clean']['balanced_accuracy']:.3f}; worst corruption {worst} "
                   f"(mean relative {result['mean_relative_balanced_accuracy'][worst]:.2f}); "
                   f"table in {out_dir / 'robustness.md'}")
        if result["errors"]:
            typer.secho(f"error: {result['errors']} items got no answer across the runs; rerun the same command to "
                        "ask them again", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
        return
    m = result["metrics"]
    for kind, t in m["types"].items():
        if kind == "open_text":
            typer.echo(f"{kind:<11} n={t['n']:<5} exact match {t['exact_match']:.3f}  token F1 {t['token_f1']:.3f}  "
                       f"ROUGE-L {t['rouge_l']:.3f}  BLEU {t['bleu']:.2f}"
                       + (f"  judge {t['judge']['accuracy']:.3f} (unparsable {t['judge']['unparsable_rate']:.3f})"
                          if "judge" in t else ""))
            continue
        typer.echo(f"{kind:<11} n={t['n']:<5} accuracy {t.get('accuracy', 0):.3f}  balanced "
                   f"{t.get('balanced_accuracy', 0) or 0:.3f}  unparsable {t.get('unparsable_rate', 0):.3f}")
    typer.echo(f"report: {out_dir / 'report.md'}")
    if result["errors"]:
        example = f" (e.g. {result['error_examples'][0][:120]})" if result.get("error_examples") else ""
        typer.secho(f"error: {result['errors']} of {result['n_items']} items got no answer; they are listed in "
                    f"{out_dir / 'errors.jsonl'}, not scored, and asked again on the next run{example}",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def chat(
    endpoint: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
                        ] = None,
    model: Annotated[str | None, typer.Option(help="Model name the endpoint serves (with --endpoint).")] = None,
    serve: Annotated[Path | None, typer.Option(help="Serve this model folder with vLLM instead (127.0.0.1).")
                     ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="DERMVLM_API_KEY", help="The endpoint's API key.")] = None,
    host: Annotated[str, typer.Option(help="Address of the page; 127.0.0.1 unless told otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the page.")] = 7860,
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
    max_model_len: Annotated[int, typer.Option(help="Context length for --serve.")] = 2048,
) -> None:
    """A chat page (Gradio) about skin images: upload, ask, read the answer, differential and referral advice."""
    from dermvlm.app.chat import ChatSettings, launch
    from dermvlm.serving.server import ServeOptions, ServerError, VLLMServer

    if (serve is None) == (endpoint is None):
        _fail("give either --endpoint URL --model NAME, or --serve MODEL_DIR")
    if endpoint is not None and not model:
        _fail("--endpoint needs --model NAME (the name the server answers to; see its /v1/models)")
    server = None
    try:
        if serve is not None:
            options = ServeOptions(model=str(serve), port=0, api_key=api_key, max_model_len=max_model_len,
                                   log_file=str(Path(tempfile.gettempdir()) / f"dermvlm-chat-vllm-{os.getpid()}.log"))
            options.validate()
            server = VLLMServer(options)
            server.start()
            endpoint, model = server.base_url, server.model_name
        settings = ChatSettings(endpoint=endpoint, model=model, api_key=api_key, max_tokens=max_tokens)
        typer.echo(f"chat page at http://{host}:{port} (model {model} at {endpoint}); Ctrl-C stops")
        launch(settings, host=host, port=port)
    except ServerError as err:
        _fail(str(err).splitlines()[0])
    except OSError as err:
        _fail(f"cannot open the page on {host}:{port}: {err.strerror or err}")
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        if server is not None:
            server.stop()


@app.command()
def demo(
    config: Annotated[Path, typer.Argument(help="Run config.")] = Path("configs/nano-cpu.yaml"),
) -> None:
    """Train the config's stages on the bundled sample, serve the model with vLLM, ask it one question."""
    from dermvlm.config import load_config
    from dermvlm.demo import run_demo
    from dermvlm.serving.server import ServerError

    try:
        cfg = load_config(config)
        result = run_demo(cfg, str(config))
    except (ConfigError, ServerError, ValueError) as err:
        _fail(str(err))
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


def source_overrides(source: str | None, root: Path | None, images: Path | None, labels: Path | None,
                     image_col: str, label_col: str, group_col: str | None, allow_outside_images: bool = False
                     ) -> list[dict] | None:
    """Command-line sources that replace a recipe's (or a suite's) declared sources."""
    if labels is not None or images is not None:
        if labels is None:
            _fail("--images needs --labels CSV (or use --source imagefolder --root DIR)")
        options = {"labels": str(labels), "image_col": image_col, "label_col": label_col}
        if allow_outside_images:
            options["allow_outside_images"] = True
        if images is not None:
            options["images"] = str(images)
        if group_col:
            options["group_col"] = group_col
        return [{"name": "csv", "options": options}]
    if source is not None:
        return [{"name": source, "root": str(root) if root else None}]
    if root is not None:
        _fail("--root needs --source NAME")
    return None


@data_app.command("build")
def data_build(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML from data_recipes/.")],
    out: Annotated[Path, typer.Option(help="Output folder (replaced atomically).")],
    source: SourceOpt = None,
    root: RootOpt = None,
    images: ImagesOpt = None,
    labels: LabelsOpt = None,
    image_col: ImageColOpt = "image",
    label_col: LabelColOpt = "label",
    group_col: Annotated[str | None, typer.Option(help="Patient/lesion column of --labels.")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out even if dermvlm did not write it.")] = False,
    allow_outside_images: Annotated[bool, typer.Option(help="Accept --labels paths that leave --images.")] = False,
) -> None:
    """Build every dataset kind a recipe enables (HF DatasetDicts, dataset card, stats.json, skipped.csv)."""
    from dermvlm.config import RecipeConfig, load_config
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.io import OutputError, check_output
    from dermvlm.knowledge import UnknownLabelError
    from dermvlm.recipes.build import build

    try:
        check_output(out, "data build", force)
        cfg = load_config(recipe, RecipeConfig)
        overrides = source_overrides(source, root, images, labels, image_col, label_col, group_col,
                                     allow_outside_images)
        result = build(cfg, out, overrides, base=recipe.resolve().parent)
    except (ConfigError, DatasetError, UnknownLabelError, OutputError) as err:
        _fail(str(err))
    s = result.stats
    by_split = ", ".join(f"{k} {v}" for k, v in s["records_by_split"].items())
    typer.echo(f"wrote {result.out}: {s['records']} images ({by_split})")
    for kind, counts in s["kinds"].items():
        if set(counts) <= {"train", "val", "test"}:
            typer.echo(f"  {kind:<16} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} file(s): "
                   + ", ".join(f"{k} ({v})" for k, v in s["skipped_by_reason"].items()) + f"; see {out}/skipped.csv")


@data_app.command("audit")
def data_audit(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML, or an image folder with a labels.csv (image,label).")],
    out: Annotated[Path, typer.Option(help="Report folder (audit.md/html/json, contact sheets, exclude.yaml).")],
    source: SourceOpt = None,
    root: RootOpt = None,
    images: ImagesOpt = None,
    labels: LabelsOpt = None,
    image_col: ImageColOpt = "image",
    label_col: LabelColOpt = "label",
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds for label-error candidates.")] = 5,
    classifier: Annotated[LabelClassifier, typer.Option(
        help="Label-error classifier: features (logistic regression, seconds), cnn (a small CNN per fold, minutes) "
             "or both (their mean; finds the most planted errors).")] = "features",
    force: Annotated[bool, typer.Option(help="Replace --out even if dermvlm did not write it.")] = False,
) -> None:
    """Rank a dataset's duplicates, off-topic images and label-error candidates, worst first, and propose an
    exclude list a recipe can use (`exclude: OUT/exclude.yaml`)."""
    from dermvlm.audit import audit
    from dermvlm.config import RecipeConfig, load_config
    from dermvlm.datasets.adapters.common import DatasetError
    from dermvlm.io import OutputError, check_output
    from dermvlm.knowledge import UnknownLabelError

    try:
        check_output(out, "data audit", force)
        if recipe.is_dir():
            if images is None and labels is None and source is None:
                images, labels = recipe, recipe / "labels.csv"
                if not labels.is_file():
                    _fail(f"{recipe}: a folder to audit needs a labels.csv (or give --labels CSV)")
            cfg = RecipeConfig.model_validate({"name": recipe.name, "sources": [{"name": "csv"}],
                                               "kinds": {"image_label": {"splits": ["train", "val", "test"]}}})
            base = Path.cwd()
        else:
            cfg = load_config(recipe, RecipeConfig)
            base = recipe.resolve().parent
        overrides = source_overrides(source, root, images, labels, image_col, label_col, None)
        result = audit(cfg, out, overrides, base=base, folds=folds, classifier=classifier)
    except (ConfigError, DatasetError, UnknownLabelError, OutputError) as err:
        _fail(str(err))
    d = result["duplicates"]
    typer.echo(f"audited {result['images']} images: {d['exact_pairs']} exact / {d['near_pairs']} near duplicate "
               f"pairs ({d['cross_split_pairs']} across splits), {len(result['conflicts'])} label conflicts, "
               f"{len(result['exclude'])} proposed exclusions; report: {out / 'audit.md'}")


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
        _fail(str(err))
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
        _fail(str(err))
    typer.echo(f"{path}: DermaMNIST at {size} px, " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
               + f"; use it as a source: {{name: dermamnist, root: {path}}}")


def _kg():
    from dermvlm.knowledge import load_graph
    from dermvlm.knowledge.curated import CuratedError

    try:
        return load_graph()
    except CuratedError as err:
        _fail(str(err))


def _node(kg, label: str) -> str:
    from dermvlm.knowledge import UnknownLabelError

    try:
        return label if kg.has(label) else kg.resolve(label)
    except UnknownLabelError as err:
        _fail(str(err))
    raise AssertionError


@kg_app.command("stats")
def kg_stats(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Node and edge counts by kind, coverage of each dataset's labels, curation checks."""
    import json as _json

    from dermvlm.knowledge.coverage import coverage_report

    report = coverage_report(_kg())
    if as_json:
        typer.echo(_json.dumps(report, indent=2))
        return
    typer.echo(f"nodes: {report['nodes']}, edges: {report['edges']}")
    for k, v in report["nodes_by_kind"].items():
        typer.echo(f"  {k:<14} {v}")
    for k, v in report["edges_by_relation"].items():
        typer.echo(f"  {k:<26} {v}")
    for ds, c in report["dataset_coverage"].items():
        typer.echo(f"  {ds:<16} {c['covered']}/{c['labels']} labels resolve")
    d = report["diseases"]
    typer.echo(f"diseases: {d['count']} (>=3 features: {d['with_3_features']}, >=2 differentials: "
               f"{d['with_2_differentials']})")


@kg_app.command("show")
def kg_show(
    node: Annotated[str, typer.Argument(help="Node id or any label (e.g. 'BCC', 'seborrheic keratosis').")],
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the node's neighbourhood.")] = None,
) -> None:
    """A node: its category path, malignancy, features, differentials and sources."""
    kg = _kg()
    nid = _node(kg, node)
    data = kg.node(nid)
    typer.echo(f"{data['name']} ({nid}) [{data['kind']}]")
    typer.echo("path: " + " > ".join(kg.name(n) for n in kg.category_path(nid)))
    if data["kind"] in ("disease", "category"):
        typer.echo(f"malignancy: {kg.malignancy(nid)}")
    for key in ("synonyms", "abbreviations", "icd10", "age_bands", "referral", "red_flags", "description"):
        if data.get(key):
            typer.echo(f"{key}: {data[key]}")
    if data["kind"] == "disease":
        from dermvlm.knowledge.curated import FEATURE_KINDS

        for kind in FEATURE_KINDS:
            feats = kg.features(nid, kind)
            if feats:
                typer.echo(f"{kind}: {', '.join(kg.name(f) for f in feats)}")
        if kg.lacks(nid):
            typer.echo(f"argues against: {', '.join(kg.name(f) for f in kg.lacks(nid))}")
        typer.echo("differentials: " + ", ".join(f"{kg.name(d)} ({w:.2f})" for d, w in kg.differentials(nid)))
    if plot:
        from dermvlm.knowledge.export import plot_neighbourhood

        typer.echo(f"plot: {plot_neighbourhood(kg, nid, plot)}")


@kg_app.command("path")
def kg_path(a: Annotated[str, typer.Argument()], b: Annotated[str, typer.Argument()]) -> None:
    """Taxonomy path between two nodes through their lowest common ancestor."""
    kg = _kg()
    na, nb = _node(kg, a), _node(kg, b)
    c = kg.lca(na, nb)
    up = kg.category_path(na)[kg.category_path(na).index(c):]
    down = kg.category_path(nb)[kg.category_path(nb).index(c) + 1:]
    typer.echo(" < ".join(kg.name(n) for n in reversed(up)) + (" > " if down else "")
               + " > ".join(kg.name(n) for n in down))
    typer.echo(f"lowest common ancestor: {kg.name(c)}; taxonomy distance: {kg.taxonomy_distance(na, nb)}")


@kg_app.command("export")
def kg_export(
    out: Annotated[Path, typer.Option(help="Output file.")],
    fmt: Annotated[Literal["graphml", "json"], typer.Option("--format", help="Export format.")] = "json",
) -> None:
    """Export the whole graph."""
    from dermvlm.knowledge.export import export

    if fmt not in ("graphml", "json"):
        _fail(f"--format: {fmt!r} is not one of graphml, json")
    typer.echo(f"wrote {export(_kg(), out, fmt)}")


@kg_app.command("score")
def kg_score(
    gold: Annotated[str, typer.Option(help="Gold label (node id or any resolvable label).")],
    response: Annotated[str | None, typer.Option(help="The response text.")] = None,
    response_file: Annotated[Path | None, typer.Option(help="Read the response from a file.")] = None,
    site: Annotated[str | None, typer.Option(help="Image metadata: body site id.")] = None,
    fitzpatrick: Annotated[int | None, typer.Option(help="Image metadata: Fitzpatrick type 1-6.")] = None,
    reported: Annotated[list[str] | None, typer.Option(
        help="Record fact: a symptom the record reports (itch, grew, hurt, changed, bleed, elevation; repeat).")
    ] = None,
    denied: Annotated[list[str] | None, typer.Option(help="Record fact: a symptom the record reports absent.")
                      ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The full breakdown as JSON.")] = False,
) -> None:
    """Score a response against a gold label (and the record's facts) with the KG scorer."""
    import json as _json

    from dermvlm.knowledge import KGScorer

    if (response is None) == (response_file is None):
        _fail("give exactly one of --response and --response-file")
    if response_file is not None:
        try:
            response = response_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            _fail(f"--response-file: cannot read {response_file}: {err}")
    from dermvlm.knowledge.grounding import PAD_UFES_FIELDS, RecordFacts

    for name in [*(reported or []), *(denied or [])]:
        if name not in PAD_UFES_FIELDS:
            _fail(f"--reported/--denied: {name!r} is not one of {', '.join(PAD_UFES_FIELDS)}")
    facts = RecordFacts.from_meta({"symptoms": reported or [], "symptoms_absent": denied or []})
    kg = _kg()
    result = KGScorer(kg).score(response, _node(kg, gold), site=site, fitzpatrick=fitzpatrick, facts=facts)
    if as_json:
        typer.echo(_json.dumps(result.to_dict(), indent=2))
        return
    typer.echo(f"score: {result.score:.3f}" + (f" ({result.reason})" if result.reason else ""))
    typer.echo(f"answered: {result.answered} ({result.diagnosis_relation}, credit {result.diagnosis_credit})")
    typer.echo(f"supported: {result.supported}\ncontradicted: {result.contradicted}\nunverified: {result.unverified}")
    typer.echo(f"stereotypes stated as findings: {result.consistent}\nclass knowledge: supported "
               f"{result.typical_supported}, contradicted {result.typical_contradicted}")
    typer.echo(f"differentials: {result.differentials} (plausible: {result.plausible_differentials})")
    typer.echo(f"unknown diseases: {result.unknown_diseases}; malignancy in play: {result.malignancy_in_play}, "
               f"referral advised: {result.referral_advised}")


@kg_app.command("derive")
def kg_derive(
    sources: Annotated[Path | None, typer.Option(help="Folder of knowledge sources (default: the data root's "
                                                 "knowledge/, ../shared/data/knowledge).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output JSON; default: the package's derived.json.")] = None,
) -> None:
    """Regenerate the ontology-derived facts (derived.json) from the raw knowledge sources."""
    import json as _json

    from dermvlm.data_root import rerooted
    from dermvlm.io import atomic_write_text
    from dermvlm.knowledge.derive import derive
    from dermvlm.knowledge.graph import DERIVED

    facts = derive(sources or Path(rerooted("../shared/data/knowledge")))
    path = atomic_write_text(out or DERIVED, _json.dumps(facts, indent=1, sort_keys=True) + "\n")
    typer.echo(f"wrote {path}: " + ", ".join(f"{k} {v}" for k, v in facts["sources"].items()))


if __name__ == "__main__":
    run()
