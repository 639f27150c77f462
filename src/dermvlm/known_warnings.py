"""Third-party warnings we know to be harmless here: each shown once, in one line that says what it means (or not
at all), instead of once per importing module with a site-packages path. Anything else is shown as usual."""

from __future__ import annotations

import logging
import re
import warnings

log = logging.getLogger("dermvlm")

# (pattern of the warning's text, the one line to show once; None: say nothing)
KNOWN: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"TRL currently supports vLLM versions from (\S+) to (\S+)\. You have version (\S+)"),
     "note: vLLM {2} is newer than the range TRL was tested with ({0}-{1}); dermvlm verifies this pairing by its "
     "tests (README: Environment), so TRL's warning is shown once, here, instead of once per module"),
    # sklearn's balanced accuracy on a test split where the model named a class the split has no example of
    (re.compile(r"y_pred contains classes not in y_true"), None),
]
KNOWN_LOGS: list[re.Pattern[str]] = [
    re.compile(r"Triton not installed or not compatible"),  # vLLM's CPU build: no Triton, as intended
]
_shown: set[str] = set()


def _known(text: str) -> tuple[re.Pattern[str], str | None] | None:
    return next(((p, line) for p, line in KNOWN if p.search(text)), None)


class _QuietKnownLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(p.search(record.getMessage()) for p in KNOWN_LOGS)


def install() -> None:
    """Route the known warnings through ``showwarning`` once each; drop the known harmless log lines."""
    previous = warnings.showwarning
    if getattr(previous, "dermvlm_known", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        known = _known(str(message))
        if known is None:
            previous(message, category, filename, lineno, file, line)
            return
        pattern, text = known
        if text is not None and pattern.pattern not in _shown:
            _shown.add(pattern.pattern)
            match = pattern.search(str(message))
            log.info(text.format(*(match.groups() if match else ())))

    showwarning.dermvlm_known = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning
    quiet = _QuietKnownLogs()
    for name in ("vllm", "vllm.triton_utils.importing"):
        logging.getLogger(name).addFilter(quiet)
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)
