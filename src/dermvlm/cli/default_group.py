"""A command group with a default command: ``dermvlm eval SUITE ...`` runs ``eval run SUITE ...`` while ``eval
compare DIR...`` is a subcommand of its own (the group's first argument, when it names no subcommand, falls through
to the default)."""

from __future__ import annotations

import typer.core


class DefaultCommandGroup(typer.core.TyperGroup):
    """A ``TyperGroup`` whose unknown first argument (or an option before it) starts ``default_command``."""

    default_command = "run"

    def __init__(self, **attrs) -> None:
        attrs["context_settings"] = {**(attrs.get("context_settings") or {}), "ignore_unknown_options": True}
        super().__init__(**attrs)

    def resolve_command(self, ctx, args):
        if args and args[0] in self.commands:
            return super().resolve_command(ctx, args)
        return self.default_command, self.commands[self.default_command], args
