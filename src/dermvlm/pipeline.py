"""Run a config's stages in order: base model → each training stage → a servable model folder.

Artifacts go to ``<output_dir>/<name>/``: ``base/`` (the built nano model), one folder per stage (``model/``,
``adapter/`` with LoRA, ``log_history.json``, ``done.json``) and ``manifest.json``. A stage whose ``done.json``
matches its current settings and input is skipped, so a rerun after an interruption resumes at the first
unfinished stage; a changed stage reruns it and everything after it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dermvlm.config import RunConfig
from dermvlm.io import atomic_write_text
from dermvlm.manifest import Manifest, hash_files, sha256_text

log = logging.getLogger(__name__)


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def base_model(cfg: RunConfig) -> Path:
    """The starting checkpoint: the built nano model (built once) or ``model.name_or_path``."""
    if cfg.model.nano is None:
        return Path(cfg.model.name_or_path)  # type: ignore[arg-type]
    from dermvlm.models.nano import build_nano

    out = run_dir(cfg) / "base"
    info = out / "dermvlm_nano.json"
    want = cfg.model.nano.model_dump()
    if info.exists():
        have = json.loads(info.read_text())
        if all(have.get(k) == v for k, v in want.items() if v is not None):
            return out
    n = cfg.model.nano
    log.info("building the %s model (seed %d) in %s", n.preset, n.seed, out)
    return build_nano(out, n.preset, n.seed, n.min_pixels, n.max_pixels)


def training_records(cfg: RunConfig):
    from dermvlm.datasets.sample import load_sample_records

    return load_sample_records(cfg.data.limit)


def check_stages(cfg: RunConfig, source: str = "<config>") -> None:
    """Validate every stage's TRL fields before anything trains (a typo in the last stage fails first)."""
    from trl import SFTConfig

    from dermvlm.config import check_dataclass_kwargs

    for i, stage in enumerate(cfg.stages):
        check_dataclass_kwargs(SFTConfig, stage.trl, f"{source}: stages[{i}].trl")


def run_stages(cfg: RunConfig, source: str = "<config>") -> Path:
    """Run every stage not yet finished; return the final model folder."""
    from dermvlm.recipes.basic import diagnosis_sft_dataset
    from dermvlm.training.sft import run_sft

    check_stages(cfg, source)
    root = run_dir(cfg)
    records = training_records(cfg)
    data_hash = hash_files([r.image for r in records])
    manifest = Manifest(root)
    manifest.start(cfg.model_dump(), cfg.seed, {"training_images": data_hash, "n_images": str(len(records))})
    current = base_model(cfg)
    dataset = None
    upstream = sha256_text(str(current.resolve()) + data_hash)
    for i, stage in enumerate(cfg.stages):
        stage_dir = root / stage.name
        key = sha256_text(upstream + json.dumps(stage.model_dump(), sort_keys=True)
                          + json.dumps(cfg.model.model_dump(), sort_keys=True) + str(cfg.seed))
        done = stage_dir / "done.json"
        if done.exists() and json.loads(done.read_text()).get("key") == key:
            log.info("stage %s: finished earlier, reusing %s", stage.name, stage_dir / "model")
            current, upstream = stage_dir / "model", key
            continue
        if dataset is None:
            dataset = diagnosis_sft_dataset(records)
        log.info("stage %s (%s, %s): training", stage.name, stage.kind, "LoRA" if stage.use_lora else "full")
        result = run_sft(
            stage, cfg.model, current, dataset, stage_dir, cfg.seed, where=f"{source}: stages[{i}].trl"
        )
        losses = result.losses()
        info = {
            "key": key, "kind": stage.kind, "seconds": round(result.seconds, 2),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "steps": len(losses),
        }
        atomic_write_text(done, json.dumps(info, indent=2) + "\n")
        manifest.stage_done(stage.name, info)
        current, upstream = result.model_dir, key
    return current
