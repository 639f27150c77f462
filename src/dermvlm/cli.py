"""The ``dermvlm`` command line: parse, load config, call one function. Heavy imports stay inside commands."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from dermvlm import __version__
from dermvlm.config import ConfigError

app = typer.Typer(help="dermvlm: a dermatology vision-language assistant, trained with TRL and served with vLLM.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
nano_app = typer.Typer(help="Build the tiny Qwen2.5-VL-architecture model locally.", no_args_is_help=True)
model_app = typer.Typer(help="Model folders: merge LoRA adapters.", no_args_is_help=True)
config_app = typer.Typer(help="Check config files.", no_args_is_help=True)
app.add_typer(nano_app, name="nano")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")


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


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _setup_logging(verbose)


@nano_app.command("build")
def nano_build(
    out: Annotated[Path, typer.Option(help="Folder to write (replaced atomically).")],
    preset: Annotated[str, typer.Option(help="nano (<1M parameters) or micro (5-20M).")] = "nano",
    seed: Annotated[int, typer.Option(help="Seed for weights and tokenizer corpus.")] = 0,
    min_pixels: Annotated[int | None, typer.Option(help="Image processor minimum pixels.")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Image processor maximum pixels.")] = None,
) -> None:
    """Build a Qwen2.5-VL-architecture model with random weights and a locally trained tokenizer."""
    import json

    from dermvlm.models.nano import PRESETS, build_nano

    if preset not in PRESETS:
        _fail(f"--preset: unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    try:
        path = build_nano(out, preset, seed, min_pixels, max_pixels)
    except ValueError as err:
        _fail(str(err))
    info = json.loads((path / "dermvlm_nano.json").read_text())
    typer.echo(f"built {preset} model ({info['parameters']:,} parameters) in {path}")


@model_app.command("merge")
def model_merge(
    adapter: Annotated[Path, typer.Argument(help="LoRA adapter folder (adapter_config.json).")],
    out: Annotated[Path, typer.Option(help="Folder for the merged model.")],
    base: Annotated[str | None, typer.Option(help="Base model; default: the adapter's recorded base.")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
) -> None:
    """Merge a LoRA adapter into its base model: a standalone folder vLLM serves."""
    from dermvlm.models.merge import merge_adapter

    if not (adapter / "adapter_config.json").is_file():
        _fail(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    if dtype not in ("float32", "bfloat16", "float16"):
        _fail(f"--dtype: {dtype!r} is not one of float32, bfloat16, float16")
    typer.echo(f"merged into {merge_adapter(adapter, out, base, dtype)}")


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="A run config YAML.")]) -> None:
    """Validate a run config, including each stage's TRL fields."""
    from dermvlm.config import load_config
    from dermvlm.pipeline import check_stages

    try:
        cfg = load_config(config)
        check_stages(cfg, str(config))
    except ConfigError as err:
        _fail(str(err))
    typer.echo(f"{config}: ok ({len(cfg.stages)} stages: {', '.join(s.name for s in cfg.stages)})")


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
    lora: Annotated[list[str] | None, typer.Option(help="Serve an adapter as NAME=DIR (repeatable).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 unless told otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require this API key.")] = None,
    max_model_len: Annotated[int, typer.Option(help="Context length (must hold the image tokens).")] = 1024,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
    kv_cache_memory: Annotated[str, typer.Option(help="KV cache size on CPU (e.g. 128M, 1G).")] = "128M",
    max_lora_rank: Annotated[int, typer.Option(help="Largest LoRA rank to accept.")] = 16,
    log_file: Annotated[Path | None, typer.Option(help="Server log file.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for /health.")] = 300.0,
) -> None:
    """Start vLLM's OpenAI-compatible server; stop it cleanly on Ctrl-C or SIGTERM."""
    from dermvlm.serving.server import ServeOptions, ServerError, VLLMServer

    options = ServeOptions(
        model=model_dir, host=host, port=port, api_key=api_key, loras=_parse_loras(lora or []),
        max_model_len=max_model_len, dtype=dtype, kv_cache_memory=kv_cache_memory, max_lora_rank=max_lora_rank,
        log_file=str(log_file or Path(f"vllm-serve-{os.getpid()}.log")), startup_timeout=timeout,
    )
    server = VLLMServer(options)

    def _stop(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.start()
        typer.echo(f"serving {server.model_name} at {server.base_url} (log: {server.log_path}); Ctrl-C stops")
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1.0)
        _fail(f"vLLM exited with code {server.proc.returncode if server.proc else '?'}; see {server.log_path}")
    except ServerError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        typer.echo("stopping vLLM")
    finally:
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
    typer.echo(f"(vLLM ready in {result.server_start_seconds:.0f} s; demo took {result.total_seconds:.0f} s)")
    typer.echo("note: a research tool trained for seconds on a tiny sample, not a medical diagnosis.")


if __name__ == "__main__":
    app()
