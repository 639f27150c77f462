"""One config for one dataset: the recipe a run config's ``data:`` describes.

``data.recipe`` (default ``data_recipes/sample.yaml``; with ``data.labels`` and no recipe, every dataset kind of
your own images) with what ``data:`` names merged in: your images folder and labels CSV, its columns, the group
column, ``label_map``, ``on_unknown_label``, exclusions, split fractions, stored image size, duplicate handling. A
field replaces only what it names: the recipe's ``label_map`` and other options survive. The command line
(``--images``, ``--labels``, ``--group-col`` ... of ``data build``, ``data audit``, ``eval``, ``pipeline``) goes
through the same merge.

Relative paths in a run config are read from **the config file's folder**; a path that is not there is also
looked for from the working directory and from the folder above the config's (so ``configs/x.yaml`` may name
``data_recipes/y.yaml``), and ``../shared/data/...`` goes under the data root when one is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermvlm.config import ConfigError, DataSpec, RecipeConfig, RunConfig, load_config, validate
from dermvlm.data_root import rerooted

SAMPLE_RECIPE = "data_recipes/sample.yaml"
CSV_OPTIONS = ("images", "labels", "image_col", "label_col", "group_col", "site_col", "fitzpatrick_col", "modality")
ADAPTER_OPTIONS = (*CSV_OPTIONS, "allow_outside_images")  # what the command line may set on the csv source
PATH_OPTIONS = ("images", "labels")
# your own images, every kind (the vision stage's labels and captions, every SFT kind, GRPO prompts, preference pairs
# and the held-out evaluation items); graph distractors, so two classes are enough
OWN_IMAGES_KINDS: dict[str, dict[str, Any]] = {
    "image_label": {}, "caption": {}, "mcq": {"options": 4}, "open_diagnosis": {}, "yes_no": {}, "attribute": {},
    "reasoning_trace": {}, "conversation": {"turns": 2}, "grpo_prompt": {"question": "open"}, "preference_pair": {},
    "eval_item": {"types": ["mcq", "open"], "options": 4, "distractors": "graph"},
}


def config_path(value: str, config_file: str | Path | None) -> Path:
    """A path from a run config, read from the config file's folder (see the module's docstring for the
    fallbacks); a path found nowhere comes back relative to the config's folder, so errors name that place."""
    if rerooted(value) != value:
        return Path(rerooted(value))
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    folder = Path(config_file).resolve().parent if config_file and config_file != "<config>" else Path.cwd()
    for candidate in (folder / p, Path.cwd() / p, folder.parent / p):
        if candidate.exists():
            return candidate.resolve()
    return (folder / p).resolve()


def merged_sources(sources: list[dict[str, Any]], given: dict[str, Any]) -> list[dict[str, Any]]:
    """``sources`` (dumped ``SourceSpec``s) with what ``given`` names: ``source``/``root`` replace them with that
    adapter; CSV options (``images``, ``labels``, columns, ``modality``) go into the first ``csv`` source, or, when
    there is none and ``labels`` is given, a csv source replaces the recipe's sources (your images alone);
    ``label_map`` entries are added, ``on_unknown_label`` replaced. Nothing else changes."""
    given = {k: v for k, v in given.items() if v not in (None, {}, [])}
    if not given:
        return sources
    carried = {k: v for k, v in (sources[0] if sources else {}).items() if k in ("label_map", "on_unknown_label")}
    if "source" in given:
        out = [{"name": given["source"], "root": given.get("root"), **carried}]
    elif any(k in given for k in ADAPTER_OPTIONS):
        out = [dict(s) for s in sources]
        csv_at = next((i for i, s in enumerate(out) if s["name"] == "csv"), None)
        if csv_at is None:
            if "labels" not in given:
                named = ", ".join(k for k in given if k in ADAPTER_OPTIONS)
                raise ConfigError(f"{named}: the recipe has no csv source to apply it to; give the labels CSV too "
                                  "(--labels / data.labels)")
            out, csv_at = [{"name": "csv", **carried}], 0
        out[csv_at] = {**out[csv_at], "options": {**(out[csv_at].get("options") or {}),
                                                  **{k: given[k] for k in ADAPTER_OPTIONS if k in given}}}
    else:
        out = [dict(s) for s in sources]
    for s in out[:1]:
        if "label_map" in given:
            s["label_map"] = {**(s.get("label_map") or {}), **given["label_map"]}
        if "on_unknown_label" in given:
            s["on_unknown_label"] = given["on_unknown_label"]
    return out


def recipe_inputs(recipe: RecipeConfig, base: Path) -> list[Path]:
    """What a build of ``recipe`` reads from the user's disk: each source's root, images folder and labels CSV, and
    an exclude file; relative paths from ``base`` and from the working directory, as the sources read them. An
    output folder may not replace any of them (nor the folder holding a labels CSV, which holds the CSV)."""
    named: list[str] = [*([recipe.exclude] if isinstance(recipe.exclude, str) else [])]
    for s in recipe.sources:
        options = s.options or {}
        named += [v for v in (s.root, options.get("images"), options.get("labels")) if v]
    return [p for v in named for p in ([Path(v)] if Path(v).is_absolute() else [base / v, Path(v)])]


def with_sources(recipe: RecipeConfig, given: dict[str, Any], where: str = "<recipe>") -> RecipeConfig:
    """The recipe with ``given`` merged into its sources (``merged_sources``), validated again."""
    data = recipe.model_dump()
    data["sources"] = merged_sources(data["sources"], given)
    return validate(data, RecipeConfig, where)  # type: ignore[return-value]


def recipe_file(cfg: RunConfig, config_file: str | Path | None) -> Path | None:
    """The recipe file a run names (or the sample's by default); None for your own images without a recipe."""
    if cfg.data.recipe is None and cfg.data.labels is not None:
        return None
    path = config_path(cfg.data.recipe or SAMPLE_RECIPE, config_file)
    if not path.is_file():
        raise ConfigError(f"{config_file or '<config>'}: data.recipe: recipe file not found: "
                          f"{cfg.data.recipe or SAMPLE_RECIPE} (looked in {path.parent})")
    return path


def run_recipe(cfg: RunConfig, config_file: str | Path | None = None) -> tuple[RecipeConfig, Path]:
    """The recipe a run builds and the folder its own relative paths are read from."""
    where = f"{config_file or '<config>'}: data"
    path = recipe_file(cfg, config_file)
    if path is None:
        data: dict[str, Any] = {"name": f"{cfg.name}-data", "sources": [{"name": "csv"}], "kinds": OWN_IMAGES_KINDS}
        base = Path(config_file).resolve().parent if config_file and config_file != "<config>" else Path.cwd()
    else:
        data = load_config(path, RecipeConfig).model_dump()
        base = path.resolve().parent
    spec: DataSpec = cfg.data
    given = spec.model_dump(include={"source", "root", "label_map", "on_unknown_label", *CSV_OPTIONS})
    for key in PATH_OPTIONS:
        if given.get(key):
            given[key] = str(config_path(given[key], config_file))
    if given.get("root"):
        given["root"] = str(config_path(given["root"], config_file))
    data["sources"] = merged_sources(data["sources"], given)
    if spec.exclude:
        data["exclude"] = (str(config_path(spec.exclude, config_file)) if isinstance(spec.exclude, str)
                           else list(spec.exclude))
    for key in ("split", "image", "dedup"):
        if getattr(spec, key) is not None:
            data[key] = getattr(spec, key).model_dump()
    try:
        return validate(data, RecipeConfig, where), base  # type: ignore[return-value]
    except ConfigError as err:
        raise ConfigError(str(err).replace("invalid RecipeConfig", "the data it describes is not a valid recipe")
                          ) from None


def recipe_or_run(path: str | Path) -> tuple[RecipeConfig, Path, RunConfig | None]:
    """A recipe file, or a run config (a file with ``stages:``) and the recipe its ``data:`` describes; with the
    folder the recipe's relative paths are read from, and the run config when it was one."""
    from dermvlm.config import read_yaml

    raw = read_yaml(path)
    if isinstance(raw, dict) and "stages" in raw:
        cfg: RunConfig = validate(raw, RunConfig, str(path))  # type: ignore[assignment]
        recipe, base = run_recipe(cfg, path)
        return recipe, base, cfg
    return validate(raw, RecipeConfig, str(path)), Path(path).resolve().parent, None  # type: ignore[return-value]


def with_data(cfg: RunConfig, given: dict[str, Any]) -> RunConfig:
    """The run config with ``given`` (the command line's data options) set in its ``data:``: only what is named
    changes; paths are taken as given (the command line makes them absolute)."""
    if not given:
        return cfg
    data = cfg.data.model_dump(exclude_unset=True) | given
    if "labels" in given:
        data.pop("source", None)  # your CSV replaces an adapter the config named
        data.pop("root", None)
    return cfg.model_copy(update={"data": validate(data, DataSpec, "the command line's data options")})
