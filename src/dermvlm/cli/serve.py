"""``dermvlm serve`` (vLLM behind the front door) and ``dermvlm chat`` (the chat page)."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from dermvlm.cli.common import DtypeOpt, LoraOpt, fail, parse_loras


def serve(
    model_dir: Annotated[str, typer.Argument(help="Model folder (or hub name on a connected machine).")],
    vllm_args: Annotated[list[str] | None, typer.Argument(
        help="Extra vLLM flags after --, e.g. `dermvlm serve DIR -- --max-num-seqs 8`.", show_default=False)] = None,
    lora: LoraOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 unless told otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        envvar="DERMVLM_API_KEY", help="Require this key (Authorization: Bearer KEY) on every route but /health.")
    ] = None,
    allow_image_domain: Annotated[list[str] | None, typer.Option(
        help="Let image URLs point at this host (repeatable); by default only inline data: URLs are read.")] = None,
    served_model_name: Annotated[str | None, typer.Option(help="Name to answer to (default: the folder's).")] = None,
    max_model_len: Annotated[int, typer.Option(help="Context length (must hold the image tokens).")] = 1024,
    dtype: DtypeOpt = "auto",
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
            model=model_dir, host=host, port=port, api_key=api_key, loras=parse_loras(lora or []),
            served_model_name=served_model_name, max_model_len=max_model_len, dtype=dtype,
            kv_cache_memory=kv_cache_memory, max_lora_rank=max_lora_rank, enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
            allowed_image_domains=list(allow_image_domain or []), extra_args=extra,
            log_file=str(log_file or Path(f"vllm-serve-{os.getpid()}.log")), startup_timeout=timeout,
        )
        options.validate()
    except ServerError as err:
        fail(str(err).splitlines()[0])
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
        fail(f"{dead} exited with code {code}; see {server.log_path}")
    except ServerError as err:
        fail(str(err).splitlines()[0])
    except KeyboardInterrupt:
        typer.echo("stopping vLLM and the front door")
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)



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
    dtype: DtypeOpt = "auto",
    lora: LoraOpt = None,
    page_password: Annotated[str | None, typer.Option(
        envvar="DERMVLM_PAGE_PASSWORD", help="Password of the page (needed when --host is not loopback).")] = None,
) -> None:
    """A chat page (Gradio) about skin images: upload, ask, read the answer, differential and referral advice.

    With --serve the page talks to the model folder (served under its run's name), or with --lora NAME=DIR to that
    adapter on it (--model NAME picks one of several)."""
    import secrets

    from dermvlm.app.access import PageAccessError, page_access
    from dermvlm.app.chat import ChatSettings, launch
    from dermvlm.models.pixels import image_side
    from dermvlm.serving.client import served_image_side
    from dermvlm.serving.server import ServeOptions, ServerError, VLLMServer

    if (serve is None) == (endpoint is None):
        fail("give either --endpoint URL --model NAME, or --serve MODEL_DIR")
    if endpoint is not None and not model:
        fail("--endpoint needs --model NAME (the name the server answers to; see its /v1/models)")
    if endpoint is not None and lora:
        fail("--lora goes with --serve MODEL_DIR (an --endpoint serves its own adapters: name one with --model)")
    loras = parse_loras(lora or [])
    if serve is not None and model is not None and model not in loras:
        fail(f"--model {model!r}: with --serve, name one of the --lora adapters ({', '.join(loras) or 'none given'})")
    try:
        page_access(host, page_password)  # before anything starts
    except PageAccessError as err:
        fail(str(err))
    server = None
    try:
        if serve is not None:
            api_key = api_key or secrets.token_urlsafe(24)  # the server answers the page, and nobody else
            options = ServeOptions(model=str(serve), port=0, api_key=api_key, max_model_len=max_model_len,
                                   dtype=dtype, loras=loras,
                                   log_file=str(Path(tempfile.gettempdir()) / f"dermvlm-chat-vllm-{os.getpid()}.log"))
            options.validate()
            server = VLLMServer(options)
            server.start()
            endpoint, model = server.base_url, model or next(iter(loras), server.model_name)
        settings = ChatSettings(endpoint=endpoint, model=model, api_key=api_key, max_tokens=max_tokens,
                                image_side=image_side(serve) if serve else served_image_side(endpoint, model, api_key))
        typer.echo(f"chat page at http://{host}:{port} (model {model} at {endpoint}); Ctrl-C stops")
        launch(settings, host=host, port=port, password=page_password)
    except ServerError as err:
        fail(str(err).splitlines()[0])
    except OSError as err:
        fail(f"cannot open the page on {host}:{port}: {err.strerror or err}")
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        if server is not None:
            server.stop()

