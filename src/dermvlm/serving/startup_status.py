"""What a user sees while vLLM starts (a minute or more on CPU): ``starting vLLM on 127.0.0.1 (about N s on this
machine)`` and a progress display of the seconds waited against that estimate. N is the median of this machine's
last start-ups, kept in ``~/.cache/dermvlm/vllm_startup.json`` (``$XDG_CACHE_HOME`` honoured)."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from dermvlm.progress import ProgressLine

FIRST_GUESS_S = 90  # no start recorded on this machine yet
KEEP = 10  # start-ups remembered


def _record_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dermvlm" / "vllm_startup.json"


def _recorded() -> list[float]:
    try:
        values = json.loads(_record_file().read_text()).get("seconds", [])
        return [float(v) for v in values if isinstance(v, int | float) and v > 0]
    except (OSError, ValueError, AttributeError):
        return []


class StartupStatus:
    """``tick()`` while waiting, ``ready()`` once healthy (records the time), ``stop()`` in any case."""

    def __init__(self, host: str, every: float = 10.0) -> None:
        past = _recorded()
        self.expected = round(statistics.median(past)) if past else None
        about = f"about {self.expected} s on this machine" if self.expected else "the first start here: 1-2 min"
        self.started = time.monotonic()
        self.progress = ProgressLine(f"starting vLLM on {host} ({about})", self.expected or FIRST_GUESS_S, "s",
                                     every=every, transient=True).start()

    def tick(self) -> None:
        waited = int(time.monotonic() - self.started)
        if waited >= self.progress.total:  # slower than usual: the estimate grows rather than stalls at 100%
            self.progress.total = waited + 10
            if self.progress.bar is not None:
                self.progress.bar.update(self.progress.task, total=self.progress.total)
        self.progress.update(waited)

    def ready(self) -> float:
        seconds = time.monotonic() - self.started
        self.progress.total = max(1, int(seconds))
        self.progress.update(self.progress.total)
        self.stop()
        try:
            path = _record_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"seconds": [*_recorded(), round(seconds, 1)][-KEEP:]}))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home only loses the estimate
        return seconds

    def stop(self) -> None:
        self.progress.stop()
