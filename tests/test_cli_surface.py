"""The command line's surface (every command, argument and option, with types, defaults and bounds) is kept in
``tests/cli_surface.json``: a change to it is deliberate. After an intended change, rewrite the file with
``.venv/bin/python tests/test_cli_surface.py --update`` and review the diff."""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).with_name("cli_surface.json")


def surface() -> dict[str, list[dict]]:
    import typer

    from dermvlm.cli import app

    def describe(cmd, path: list[str]) -> dict[str, list[dict]]:
        params = []
        for p in cmd.params:
            plain = isinstance(p.default, str | int | float | bool | type(None) | list)
            default = p.default if plain else str(p.default)
            params.append({"name": p.name, "kind": type(p).__name__, "opts": list(p.opts),
                           "secondary": list(p.secondary_opts), "type": str(p.type_descriptor.annotation),
                           "required": p.required, "default": default, "multiple": p.multiple, "nargs": p.nargs,
                           "min": p.min, "max": p.max, "envvar": p.envvar})
        out = {" ".join(path) or "dermvlm": params}
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            out.update(describe(sub, [*path, name]))
        return out

    return describe(typer.main.get_command(app), [])


def test_cli_surface_is_unchanged():
    now = json.loads(json.dumps(surface()))
    kept = json.loads(GOLDEN.read_text())
    assert sorted(now) == sorted(kept), "commands added or removed: rerun with --update if intended"
    for command in kept:
        assert now[command] == kept[command], f"`{command}` changed its options: rerun with --update if intended"


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    GOLDEN.write_text(json.dumps(surface(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
