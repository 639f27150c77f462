"""Run a config end to end: data recipe → base model → stages (pretrain, GRPO++, SFT, DPO, in the configured order)
→ a merged, servable model with a model card.

Artifacts under ``<output_dir>/<name>/``: ``data/`` (the built recipe), ``base/`` (the built nano model), one folder
per stage (``model/``, ``adapter/``, ``checkpoints/``, ``log_history.json``, ``curves.png``, ``done.json``) and
``manifest.json`` (config and its hash, versions, seeds, input hashes, metrics per stage). A rerun skips every stage
whose ``done.json`` matches its settings and inputs and resumes an interrupted stage from its last checkpoint
(kill -9 included); a changed stage reruns, and so does everything after it.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from dermvlm.config import ConfigError, RunConfig, StageSpec
from dermvlm.devices import GpuPeak, release_memory
from dermvlm.distributed import barrier, init_processes
from dermvlm.io import atomic_write_text
from dermvlm.manifest import Manifest, sha256_text
from dermvlm.models.pixels import budget_side, image_side, write_pixels_file
from dermvlm.ranks import is_main_process
from dermvlm.run_lock import hold, locked_run
from dermvlm.run_pixels import recorded_budget, run_processor, with_image_side
from dermvlm.tracking import Tracker

log = logging.getLogger(__name__)


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 0.2 s from /proc)."""

    def __enter__(self) -> PeakRSS:
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


# ---------------------------------------------------------------------- data and base model


def build_data(cfg: RunConfig, source: str = "<config>", side: int | None = None) -> tuple[Path, str]:
    """Build the run's data (``recipes.run_data``: the recipe and what ``data:`` names) once, rebuilt when it
    changes, its images no smaller than ``side`` (the longest side the pixel budget uses); return (dir, key). The
    key names the split rule when a source has no official split."""
    from dermvlm.datasets.adapters import SOURCES
    from dermvlm.recipes.build import build, recipe_hash
    from dermvlm.recipes.run_data import run_recipe

    recipe, base = run_recipe(cfg, source)
    recipe = with_image_side(recipe, side)
    derived = any(not SOURCES[s.name].official_splits for s in recipe.sources)
    key = sha256_text(recipe_hash(recipe) + json.dumps(None) + ("|split: sha256(seed:group)" if derived else ""))[:16]
    out = run_dir(cfg) / "data"
    stats = out / "stats.json"
    built = stats.exists() and (out / "key.txt").exists() and (out / "key.txt").read_text() == key
    if not built and is_main_process():
        log.info("building the run's data (%s) into %s", cfg.data.recipe or "your images", out)
        result = build(recipe, out, base=base)
        if result.skipped:
            log.warning("left out %d image(s): %s; see %s", len(result.skipped), ", ".join(
                f"{k} ({v})" for k, v in result.stats["skipped_by_reason"].items()), out / "skipped.csv")
        for line in [result.split_change, *result.stats["warnings"]]:
            if line:
                log.warning(line)
        atomic_write_text(out / "key.txt", key)
    barrier("the data recipe")
    return out, key


def base_model(cfg: RunConfig) -> Path:
    """The starting checkpoint: the built nano model (built once) or ``model.name_or_path``."""
    if cfg.model.nano is None:
        return Path(cfg.model.name_or_path)  # type: ignore[arg-type]
    from dermvlm.models.nano import build_nano

    out = run_dir(cfg) / "base"
    info = out / "dermvlm_nano.json"
    n = cfg.model.nano
    want = n.model_dump() | {"family": n.family or "qwen2_5_vl"}
    if n.like:  # a real-shape build: the shape names family and sizes
        from dermvlm.models.real_shapes import build_like, get_shape

        want |= {"family": get_shape(n.like).family, "preset": "like", "layers": n.layers or 1}
    have = json.loads(info.read_text()) if info.exists() else None
    if have is not None:
        have.setdefault("family", "qwen2_5_vl")  # Qwen2.5-VL builds predate the field
    if is_main_process() and not (have and all(have.get(k) == v for k, v in want.items() if v is not None)):
        log.info("building the %s %s model (seed %d) in %s", want["family"], n.like or n.preset, n.seed, out)
        if n.like:
            build_like(out, n.like, n.layers or 1, n.seed, n.min_pixels, n.max_pixels)
        else:
            build_nano(out, n.preset, n.seed, n.min_pixels, n.max_pixels, patch_size=n.patch_size,
                       family=want["family"])
    barrier("the base model")
    return out


# ---------------------------------------------------------------------- stages


def check_stages(cfg: RunConfig, source: str = "<config>") -> None:
    """Validate every stage's TRL settings (fields, values, batch geometry) before anything trains."""
    import tempfile

    from dermvlm.training.dpo import dpo_config
    from dermvlm.training.grpo import grpo_config
    from dermvlm.training.sft import sft_config
    from dermvlm.training.vision import vision_config

    build = {"sft": sft_config, "align": sft_config, "grpo": grpo_config, "dpo": dpo_config, "vision": vision_config}
    from dermvlm.launch import launch_problems, sharding_from_env

    problems = launch_problems(cfg, sharding_from_env(), source)
    if problems:
        raise ConfigError(problems[0])
    with tempfile.TemporaryDirectory() as tmp:
        for i, stage in enumerate(cfg.stages):
            args = build[stage.kind](stage, Path(tmp), cfg.seed, f"{source}: stages[{i}] ({stage.name}).trl")
            if stage.kind == "grpo":
                from dermvlm.training.rewards import get_rewards

                if args.use_vllm and stage.use_lora and cfg.model.quantization.load_in_4bit:
                    raise ConfigError(
                        f"{source}: stages[{i}] ({stage.name}): 4-bit QLoRA with trl.use_vllm cannot sync weights to "
                        "vLLM (TRL merges the adapter into packed 4-bit weights that vLLM's bitsandbytes loader "
                        "rejects: huggingface/trl#4973); set trl.use_vllm: false for this stage, or drop "
                        "model.quantization to train bf16 LoRA with vLLM generation")

                try:
                    get_rewards(stage.rewards or {}, args.max_completion_length, stage.overlong_buffer)
                except KeyError as err:
                    raise ConfigError(f"{source}: stages[{i}].rewards: {err.args[0]}") from None


def stage_dataset(stage: StageSpec, data_dir: Path, where: str):
    """The stage's training rows (for ``vision``: every split the recipe built, by split name)."""
    from dermvlm.training.common import recipe_dataset

    kinds = stage.data_kinds()
    if stage.kind == "vision":
        splits = {"train": recipe_dataset(data_dir, kinds, "train", where)}
        ssl = getattr(stage, "self_supervised", None)
        if ssl is not None and ssl.recipe:  # labels dropped: the stage sees only images
            from dermvlm.unlabelled import unlabelled_pool

            splits["unlabelled"] = unlabelled_pool(ssl.recipe, data_dir.parent, splits["train"], where)
        for split in ("val", "test"):
            try:
                splits[split] = recipe_dataset(data_dir, kinds, split, where)
            except ConfigError:
                continue
        return splits
    if stage.kind == "dpo":
        kinds = ["grpo_prompt"] if stage.pairs_from == "policy" else ["preference_pair"]
    return recipe_dataset(data_dir, kinds, "train", where)


def run_stage(stage: StageSpec, cfg: RunConfig, model_path: Path, data_dir: Path, out: Path, where: str,
              report_to: list[str] | str = "none"):
    from dermvlm.training.dpo import run_dpo
    from dermvlm.training.grpo import run_grpo
    from dermvlm.training.sft import run_sft
    from dermvlm.training.vision import run_vision

    dataset = stage_dataset(stage, data_dir, where)
    runner = {"sft": run_sft, "align": run_sft, "grpo": run_grpo, "dpo": run_dpo, "vision": run_vision}[stage.kind]
    if getattr(stage, "self_supervised", None) is not None:
        from dermvlm.training.ssl_vision import run_ssl_vision as runner
    return runner(stage, cfg.model, model_path, dataset, out, cfg.seed, where=where, report_to=report_to)


def summarize(result, stage: StageSpec) -> dict[str, Any]:
    """The numbers the manifest keeps per stage."""
    losses = result.losses()
    info: dict[str, Any] = {"kind": stage.kind, "steps": len(losses), "seconds": round(result.seconds, 2),
                            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
    rewards = result.series("reward")
    if rewards:
        k = max(1, len(rewards) // 4)
        info["reward_start"] = round(sum(rewards[:k]) / k, 4)
        info["reward_end"] = round(sum(rewards[-k:]) / k, 4)
        zv = result.series("frac_reward_zero_std")
        info["frac_zero_std_mean"] = round(sum(zv) / len(zv), 4) if zv else None
    info.update({k: v for k, v in result.extra.items() if k in ("pairs", "probe", "trained_parameters", "merge")})
    return info


@locked_run
def run_pipeline(cfg: RunConfig, source: str = "<config>", from_stage: str | None = None,
                 to_stage: str | None = None, evaluate: bool = True) -> Path:
    """Run the config checks, the data build, the checks before training (``held_out``), every stage not yet
    finished and (``evaluate``) the run's evaluation (its held-out test split and suites) on the served final
    model; return the final model folder. The terminal shows one bar per stage (``StepProgress``);
    the libraries' per-file loading and saving bars are off."""
    import datasets
    from transformers.utils import logging as hf_logging

    from dermvlm.run_check import check_run

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    names = [s.name for s in cfg.stages]
    for flag, name in (("--from", from_stage), ("--to", to_stage)):
        if name is not None and name not in names:
            raise ConfigError(f"{flag} {name!r}: no such stage; stages are {', '.join(names)}")
    check_run(cfg, source, plan=False)
    root = run_dir(cfg)
    tracker = Tracker(cfg.trackers() if is_main_process() else [], cfg.name, root, cfg.model_dump())
    tracker.check(source)
    try:
        return _run_stages(cfg, source, from_stage, to_stage, evaluate, tracker)
    finally:
        tracker.close()


def _run_stages(cfg: RunConfig, source: str, from_stage: str | None, to_stage: str | None, evaluate: bool,
                tracker: Tracker) -> Path:
    from dermvlm.held_out import check_before_training

    root = run_dir(cfg)
    init_processes()
    claim_run_dir(root)
    current = base_model(cfg)
    processor = run_processor(cfg, current)
    data_dir, data_key = build_data(cfg, source, budget_side(processor))
    targets = check_before_training(cfg, source, data_dir)  # the held-out split and the suites, before training
    manifest = Manifest(root, write=is_main_process())
    manifest.start(cfg.model_dump(), cfg.seed, {"data_recipe": cfg.data.recipe, "data_key": data_key,
                                                "data_stats_sha256": sha256_text((data_dir / "stats.json")
                                                                                 .read_text())})
    budget, manifest.data["pixels"] = recorded_budget(processor, data_dir)
    from dermvlm.training.preload import preload_trainers

    preload_trainers()  # here, not inside a stage whose frames an import-time traceback would keep alive
    upstream = sha256_text(str(current.resolve()) + data_key + model_identity(current))
    forced = False
    for i, stage in enumerate(cfg.stages):
        stage_dir = root / stage.name
        # the key chains the upstream stage's key *and its run*: retraining a stage invalidates all after it
        key = sha256_text(upstream + json.dumps(stage.model_dump(), sort_keys=True)
                          + json.dumps(cfg.model.key_dump(), sort_keys=True) + str(cfg.seed))
        forced = forced or stage.name == from_stage
        done = stage_dir / "done.json"
        finished = json.loads(done.read_text()) if done.exists() else {}
        if not forced and finished.get("key") == key:
            log.info("stage %s: finished earlier, reusing %s", stage.name, stage_dir / "model")
            run_id = finished.get("run_id", key)
        else:
            key_file = stage_dir / "key.txt"
            if is_main_process():
                if stage_dir.exists() and not key_file.exists() and any(stage_dir.iterdir()):
                    raise ConfigError(f"{stage_dir}: the folder exists and was not written by the pipeline (no "
                                      f"key.txt); move it away or rename the stage")
                if stage_dir.exists() and (forced or not key_file.exists() or key_file.read_text() != key):
                    log.info("stage %s: settings, inputs or an upstream stage changed; training it again",
                             stage.name)
                    shutil.rmtree(stage_dir)  # no stale checkpoint may be resumed
                stage_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(key_file, key)
            barrier(f"stage {stage.name}'s folder")
            where = f"{source}: stages[{i}] ({stage.name})"
            log.info("stage %s (%s, %s): training from %s", stage.name, stage.kind,
                     "LoRA" if stage.use_lora else "full", current)
            with PeakRSS() as mem, GpuPeak() as gpu, tracker.stage(stage.name, stage.kind, stage_dir) as report_to:
                result = run_stage(stage, cfg, current, data_dir, stage_dir, where, report_to)
            release_memory()  # nothing of the stage's model, trainer or optimizer is referenced any more
            run_id = uuid.uuid4().hex
            info = {"key": key, "run_id": run_id, **summarize(result, stage), "peak_rss_mb": round(mem.peak / 2**20),
                    **gpu.record()}
            if is_main_process():
                write_pixels_file(stage_dir / "model", budget)  # serving, evaluation and the chat page read it
                atomic_write_text(done, json.dumps(info, indent=2) + "\n")
                manifest.stage_done(stage.name, info)
            barrier(f"stage {stage.name}'s done.json")
            run_id = json.loads(done.read_text())["run_id"]
        current, upstream = stage_dir / "model", sha256_text(key + run_id)
        if stage.name == to_stage:
            break
    if is_main_process() and (to_stage is None or to_stage == cfg.stages[-1].name):
        write_model_card(cfg, current, manifest)
        manifest.data["final_model"] = str(current)
        manifest.data["final_model_key"] = upstream
        manifest.save()
        if evaluate and targets:
            reports, _ = serve_and_evaluate(cfg, current, upstream, source, tracker=tracker)
            manifest.data["evaluation"] = reports
            manifest.save()
            add_results_to_card(current, root, upstream, cfg.name)
    return current


def model_identity(path: Path) -> str:
    """What identifies a starting checkpoint beyond its path: its config and weight files' names, sizes, times."""
    if not path.is_dir():
        return str(path)
    parts = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(path.iterdir())
             if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name.endswith(".json"))]
    return "|".join(parts)


def claim_run_dir(root: Path) -> None:
    """Create the run folder, or refuse one that exists with content the pipeline did not write."""
    from dermvlm.io import OutputError, mark_output, written_by

    if root.exists() and any(root.iterdir()) and written_by(root) != "pipeline" \
            and not (root / "manifest.json").exists():
        raise OutputError(f"{root}: the run folder exists and was not written by `dermvlm pipeline`; change the "
                          f"config's name or output_dir")
    hold(root)  # one process per run: a second one stops here, naming the first
    if is_main_process():
        root.mkdir(parents=True, exist_ok=True)
        if written_by(root) is None:
            mark_output(root, "pipeline")


def serve_and_evaluate(cfg: RunConfig, model_dir: Path, model_key: str, source: str = "<config>", during=None,
                       tracker: Tracker | None = None) -> tuple[dict[str, Any], Any]:
    """Serve ``model_dir`` with vLLM once, run what the run evaluates against it (``held_out``: its own test split
    and the suites of ``evaluate:``; outputs in ``runs/<name>/eval/<suite>/``, reset when the model changes) and
    call ``during(server)`` while it is up."""
    from dermvlm.evaluation.runner import EndpointOptions
    from dermvlm.evaluation.suite import run_suite
    from dermvlm.held_out import evaluated_suites
    from dermvlm.serving.server import ServeOptions, VLLMServer

    suites = evaluated_suites(cfg, source, run_dir(cfg) / "data")
    s = cfg.serve
    root = run_dir(cfg) / "eval"
    options = ServeOptions(
        model=str(model_dir), host=s.host, port=s.port, api_key=s.api_key, dtype=s.dtype,
        max_model_len=s.max_model_len, kv_cache_memory=s.kv_cache_memory, startup_timeout=s.startup_timeout,
        served_model_name=cfg.name, seed=cfg.seed, log_file=str(run_dir(cfg) / "serve.log"))
    reports: dict[str, Any] = {}
    side = image_side(model_dir)  # suites send images at the side the run stored them at
    log.info("serving %s with vLLM for evaluation", model_dir)
    with VLLMServer(options) as server:
        endpoint = EndpointOptions(base_url=server.base_url, model=server.model_name, api_key=s.api_key or "EMPTY")
        for base, suite in suites:
            out = root / suite.name
            key_file = out / "model_key.txt"
            if out.exists() and (not key_file.exists() or key_file.read_text() != model_key):
                shutil.rmtree(out)  # answers of an earlier model must not be mixed in
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(key_file, model_key)
            result = run_suite(with_image_side(suite, side), out, endpoint=endpoint, base=base,
                               train_data=run_dir(cfg) / "data")  # a suite must not ask about training images
            if tracker is not None:
                tracker.evaluation(suite.name, result, out)
            reports[suite.name] = {
                "report": str(out / "report.md"),
                **{kind: {k: t.get(k) for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}
                   for kind, t in result["metrics"]["types"].items()}}
        extra = during(server) if during else None
    return reports, extra


def write_model_card(cfg: RunConfig, model_dir: Path, manifest: Manifest) -> Path:
    """README.md in the final model folder: what it is, how it was made, how to serve it, its limits."""
    stages = manifest.data.get("stages", {})
    names = {x.name for x in cfg.stages}
    rows = "\n".join(f"| {name} | {s.get('kind')} | {s.get('steps')} | {s.get('seconds')} | {s.get('last_loss')} | "
                     f"{s.get('reward_end', '')} |" for name, s in stages.items() if name in names)
    from huggingface_hub import ModelCard, ModelCardData

    nano = cfg.model.nano
    base = cfg.model.name_or_path or f"dermvlm {nano.preset} (built from scratch, seed {nano.seed})"
    hub_id = cfg.model.name_or_path if is_hub_id(cfg.model.name_or_path) else None
    data = ModelCardData(library_name="transformers", pipeline_tag="image-text-to-text", model_name=cfg.name,
                         tags=["dermatology", "vision-language", "dermvlm", "trl"],
                         **({"base_model": hub_id} if hub_id else {}))  # a local or random start names no hub model
    text = f"""---
{data.to_yaml()}
---

# {cfg.name}

A dermatology vision-language model trained by dermvlm ({', '.join(s.name for s in cfg.stages)}).
It answers in the DermIQ format `<think>observation, differential</think><answer>diagnosis</answer>`.

- base: {base}
- data: `{cfg.data.recipe or cfg.data.labels}` (data key `{manifest.data.get('inputs', {}).get('data_key')}`)
- config hash: `{manifest.data.get('config_hash', '')[:16]}`, seed {cfg.seed}

| stage | kind | steps | seconds | last loss | final reward |
|---|---|---|---|---|---|
{rows}

Serve it: `dermvlm serve {model_dir}` (vLLM, OpenAI-compatible).

**Research use only.** This model is not a medical device and its answers are not diagnoses. It can be wrong,
including about malignancy; anyone with a changing, bleeding or worrying lesion should see a dermatologist.
"""
    return atomic_write_text(model_dir / "README.md", str(ModelCard(text)))


def add_results_to_card(model_dir: Path, root: Path, model_key: str, name: str) -> Path:
    """The final model's card, now with the evaluation's results (``hub.card``: model-index, fairness, robustness)."""
    from dermvlm.hub.card import run_evaluations, with_results

    card = model_dir / "README.md"
    return atomic_write_text(card, with_results(card.read_text(), run_evaluations(root, model_key), name))


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hugging Face Hub model id (``owner/name``) rather than a local folder."""
    import re

    return bool(name) and not Path(name).exists() and re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name) is not None
