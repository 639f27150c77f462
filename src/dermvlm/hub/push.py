"""``dermvlm model push``: a run's final model (or any model or adapter folder) with its processor and its card —
now carrying the evaluation's results — to the Hugging Face Hub in one commit (all files or none)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dermvlm.hub.card import run_evaluations, with_results

SKIPPED = ("checkpoints", "training_args.bin")  # training state, not the model (nor dermvlm's .dermvlm* markers)


class PushError(RuntimeError):
    """The push cannot happen (no token, offline, not a model folder, the Hub refused); ``str()`` is one line."""


@dataclass
class PushPlan:
    model_dir: Path
    files: list[tuple[str, Path]]  # (path in the repository, local file)
    card: str  # README.md as it will be uploaded
    evaluations: list[str]

    def describe(self, repo: str, private: bool) -> str:
        size = sum(p.stat().st_size for _, p in self.files) + len(self.card.encode())
        lines = [f"would upload to {repo} ({'private' if private else 'public'} model repository), one commit, "
                 f"{len(self.files) + 1} files, {size / 2**20:.1f} MiB:"]
        lines += [f"  {name}  ({p.stat().st_size:,} bytes)" for name, p in self.files]
        lines.append(f"  README.md  (model card, {len(self.card.encode()):,} bytes; evaluation results: "
                     f"{', '.join(self.evaluations) or 'none found'})")
        return "\n".join(lines)


def resolve_model(run_or_dir: Path) -> tuple[Path, Path | None, str | None]:
    """(model folder, its run folder or None, the final model's key or None) for a run folder or a model folder."""
    manifest = Path(run_or_dir) / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        final = data.get("final_model")
        if not final:
            raise PushError(f"{run_or_dir}: the run has no final model yet (run `dermvlm pipeline` to its end)")
        model = Path(final)
        if not model.is_dir():  # the manifest's path is relative to where the pipeline ran: RUN/STAGE/model
            model = Path(run_or_dir).joinpath(*Path(final).parts[-2:])
        return model, Path(run_or_dir), data.get("final_model_key")
    folder = Path(run_or_dir)
    if not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
        raise PushError(f"{folder}: neither a run folder (manifest.json) nor a model or adapter folder (config.json "
                        "or adapter_config.json)")
    run = next((p for p in folder.resolve().parents if (p / "manifest.json").is_file()), None)
    return folder, run, None


def plan(run_or_dir: Path, repo: str) -> PushPlan:
    model_dir, run, key = resolve_model(run_or_dir)
    if not model_dir.is_dir():
        raise PushError(f"{model_dir}: model folder not found")
    files = sorted((str(p.relative_to(model_dir)), p) for p in model_dir.rglob("*")
                   if p.is_file() and p.name != "README.md" and not p.name.startswith(".dermvlm")
                   and not any(part in SKIPPED for part in p.relative_to(model_dir).parts))
    card_file = model_dir / "README.md"
    card = (card_file.read_text(encoding="utf-8") if card_file.is_file()
            else f"---\nlibrary_name: transformers\n---\n\n# {repo}\n")
    evaluations = run_evaluations(run, key) if run is not None else {}
    return PushPlan(model_dir, files, with_results(card, evaluations, repo.split("/")[-1]), list(evaluations))


def push(run_or_dir: Path, repo: str, private: bool = False, dry_run: bool = False) -> str:
    """Upload (or with ``dry_run`` describe) what ``plan`` lists; return the line to show."""
    import re

    if not re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", repo):
        raise PushError(f"--repo {repo!r}: expected ORG/NAME")
    p = plan(run_or_dir, repo)
    if dry_run:
        return p.describe(repo, private)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise PushError("HF_HUB_OFFLINE is set: this machine is offline for the Hub; unset it where the Hub is "
                        "reachable, or use --dry-run to see what would be uploaded")
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if not token:
        raise PushError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)")
    api = HfApi(token=token, endpoint=os.environ.get("HF_ENDPOINT") or None)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in p.files]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=p.card.encode()))
    try:
        api.create_repo(repo, private=private, repo_type="model", exist_ok=True)
        info = api.create_commit(repo, operations, commit_message="dermvlm model push", repo_type="model")
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PushError(f"the Hub refused or could not be reached ({type(err).__name__}: {first}); nothing was "
                        "committed") from None
    return f"pushed {len(operations)} files to {info.commit_url}"
