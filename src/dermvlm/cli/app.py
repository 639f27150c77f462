"""The root ``dermvlm`` app: one-line usage errors, global options, and every escaping error as one line."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from dermvlm import __version__


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a value not among an option's choices, a missing argument) as one ``error:`` line naming the
    option and what it accepts, instead of a usage panel; exit status 2 as before."""

    def main(self, *args, **kwargs):
        import sys

        from typer import _click as click  # typer's own click, whose exceptions its commands raise

        kwargs["standalone_mode"] = False
        blank_flag_metavars(self)
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as err:  # a bare group: its help, as before
            typer.echo(err.ctx.get_help() if err.ctx else err.format_message())
            sys.exit(err.exit_code)
        except click.ClickException as err:
            from dermvlm.echo import clip_lines

            typer.secho(f"error: {clip_lines(err.format_message().replace('Value error, ', ''))}",
                        fg=typer.colors.RED, err=True)
            sys.exit(err.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        """Ctrl-C or SIGTERM (``run`` turns it into ``KeyboardInterrupt``) ends a command with one line and status
        130; typer would exit 130 without a word."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            typer.secho("error: interrupted", fg=typer.colors.RED, err=True)
            raise typer.Exit(130) from None


def blank_flag_metavars(command) -> None:
    """Show on/off flags (``--fresh``, ``--help``) with no value type: typer labels them ``<bool>``, which reads as
    though they took a value."""
    from typer import _click as click

    help_option = command.get_help_option(click.Context(command))
    for param in [*command.params, *([help_option] if help_option else [])]:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        blank_flag_metavars(sub)


app = typer.Typer(help="dermvlm: a dermatology vision-language assistant, trained with TRL and served with vLLM.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=OneLineErrors)


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)], force=True)
    for noisy in ("httpx", "httpx2", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Harmless on AVX512-BF16 CPUs (an optional hub kernel we must not fetch; ENVIRONMENT.md).
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from dermvlm import known_warnings

    known_warnings.install()  # TRL's vLLM-range warning once, in one line; known harmless notices dropped



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
    setup_logging(verbose)


DISK_ERRORS = {"EROFS": "the file system is read-only", "ENOSPC": "no space left on the device",
               "EDQUOT": "the disk quota is exceeded", "EACCES": "permission denied"}


def run() -> None:
    """The console entry point: ``app`` with every error that escapes a command as one line and a non-zero exit
    (disk problems named as such; ``--debug`` shows the traceback)."""
    import errno
    import sys

    from dermvlm.echo import clip_line

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
        if "inline_container.cc" in text:  # torch.save's report of a failed write
            typer.secho(f"error: cannot write a PyTorch file ({type(err).__name__} in torch.save): most often the "
                        "disk is full; free space or choose another folder", fg=typer.colors.RED, err=True)
            sys.exit(1)
        first = clip_line(str(err).splitlines()[0]) if str(err) else ""
        typer.secho(f"error: unexpected {type(err).__name__}: {first} (rerun with --debug for the traceback)",
                    fg=typer.colors.RED, err=True)
        sys.exit(1)

