"""``python -m dermvlm.cli``: the same as the ``dermvlm`` console script."""

from dermvlm.cli import run

run()
