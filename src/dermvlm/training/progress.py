"""A clean training display: one progress display per stage (``dermvlm.progress``: a bar with an ETA on a terminal,
plain periodic lines in a log) with loss, reward and learning rate, and the raw per-step metric dicts in the stage's
``train_log.jsonl`` instead of the terminal (transformers prints each dict)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from dermvlm.progress import ProgressLine

LOG_FILE = "train_log.jsonl"


def _fmt(value: Any) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{x:.2e}" if x and abs(x) < 1e-3 else f"{x:.4g}"


class StepProgress(TrainerCallback):
    """The stage's progress (main process only: ``dermvlm.progress``, a bar with an ETA on a terminal, periodic
    plain lines otherwise) and the JSON-lines metric log of one stage."""

    def __init__(self, output_dir: str | Path, title: str) -> None:
        self.log_file = Path(output_dir) / LOG_FILE
        self.title = title
        self.progress: ProgressLine | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.progress = ProgressLine(self.title, state.max_steps, "steps", completed=state.global_step).start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        with self.log_file.open("a") as fh:
            fh.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")
        if self.progress is not None:
            shown = [f"{k} {_fmt(logs[k])}" for k in ("loss", "reward", "learning_rate") if k in logs]
            if shown:
                self.progress.update(info="  ".join(shown).replace("learning_rate", "lr"))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(state.global_step)
            self.progress.stop()
            self.progress = None


def show_progress(trainer, output_dir: str | Path, title: str) -> None:
    """Replace the trainer's tqdm bar and printed dicts with ``StepProgress``."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepProgress(output_dir, title))
