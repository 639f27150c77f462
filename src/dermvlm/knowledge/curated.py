"""The curated, reviewed data files of the knowledge graph (``knowledge/data``), loaded and validated.

``categories.yaml`` (the etiology-based tree), ``vocab.yaml`` (feature nodes and their lexicon),
``diseases/*.yaml`` (one entry per disease) and ``dataset_labels.yaml`` (dataset codes → node ids). A malformed
entry fails with the file, the line and the field; cross-references (parents, features, differentials) are
checked when the graph is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dermvlm import safe_yaml

DATA = Path(str(resources.files("dermvlm.knowledge").joinpath("data")))
FEATURE_KINDS = ("morphology", "colour", "border", "distribution", "site", "symptom", "dermoscopic")
DISEASE_FEATURE_FIELDS = {  # disease entry field → (feature kind, edge relation)
    "morphology": ("morphology", "has_morphology"),
    "colour": ("colour", "has_colour"),
    "border": ("border", "has_border"),
    "distribution": ("distribution", "has_distribution"),
    "sites": ("site", "typical_site"),
    "symptoms": ("symptom", "has_symptom"),
    "dermoscopic": ("dermoscopic", "has_dermoscopic_feature"),
}
AGE_BANDS = ("neonate", "infant", "child", "adolescent", "adult", "older_adult")


class CuratedError(ValueError):
    """A curated file is malformed; the message names the file and line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Category(_Strict):
    id: str
    name: str
    parent: str | None = None
    synonyms: list[str] = Field(default_factory=list)


class Feature(_Strict):
    id: str
    name: str
    synonyms: list[str] = Field(default_factory=list)
    hpo: str | None = None
    parent: str | None = None


class Disease(_Strict):
    id: str
    name: str
    parent: str
    synonyms: list[str] = Field(default_factory=list)
    abbreviations: list[str] = Field(default_factory=list)
    malignancy: Literal["benign", "premalignant", "malignant"]
    icd10: str | None = None
    age: list[Literal["neonate", "infant", "child", "adolescent", "adult", "older_adult"]] = Field(
        default_factory=list)
    morphology: list[str] = Field(min_length=1)
    colour: list[str] = Field(default_factory=list)
    border: list[str] = Field(default_factory=list)
    distribution: list[str] = Field(default_factory=list)
    sites: list[str] = Field(default_factory=list)
    symptoms: list[str] = Field(default_factory=list)
    dermoscopic: list[str] = Field(default_factory=list)
    absent: list[str] = Field(default_factory=list)
    differentials: dict[str, float] = Field(min_length=2)
    red_flags: list[str] = Field(default_factory=list)
    referral: Literal["routine", "soon", "urgent"]
    members: list[str] = Field(default_factory=list)
    description: str = ""

    def feature_ids(self) -> list[str]:
        return [f for name in DISEASE_FEATURE_FIELDS for f in getattr(self, name)]


@dataclass
class Curated:
    """Everything curated, with the file and line of each entry for error messages."""

    categories: list[Category]
    features: dict[str, list[Feature]]
    diseases: list[Disease]
    dataset_labels: dict[str, dict[str, str]]
    where: dict[str, str] = field(default_factory=dict)  # entry id → "file:line"


class _LineLoader(safe_yaml.Loader):
    """A YAML loader that records the line of every mapping under the key ``__line__``."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=_LineLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise CuratedError(f"{path}{line}: not valid YAML: {getattr(err, 'problem', err)}") from None


def _validate(model: type[BaseModel], entry: Any, path: Path) -> tuple[Any, str]:
    if not isinstance(entry, dict):
        raise CuratedError(f"{path}: expected a mapping per entry, got {entry!r}")
    line = entry.pop("__line__", "?")
    entry = _strip_lines(entry)
    where = f"{path.name}:{line}"
    try:
        return model.model_validate(entry), where
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise CuratedError(
            f"{path}:{line}: entry {entry.get('id', '?')!r}: {loc}: {first['msg']}"
            + (f" (got {first['input']!r})" if not isinstance(first.get("input"), dict) else "")
        ) from None


def _strip_lines(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_lines(v) for k, v in obj.items() if k != "__line__"}
    if isinstance(obj, list):
        return [_strip_lines(v) for v in obj]
    return obj


def load_curated(data_dir: str | Path = DATA) -> Curated:
    """Read and validate every curated file under ``data_dir``."""
    data_dir = Path(data_dir)
    where: dict[str, str] = {}
    categories = []
    path = data_dir / "categories.yaml"
    for entry in _read(path) or []:
        c, w = _validate(Category, entry, path)
        categories.append(c)
        where[c.id] = w
    features: dict[str, list[Feature]] = {}
    path = data_dir / "vocab.yaml"
    vocab = _read(path) or {}
    vocab.pop("__line__", None)
    unknown = set(vocab) - set(FEATURE_KINDS)
    if unknown:
        raise CuratedError(f"{path}: unknown feature kinds {sorted(unknown)}; allowed: {', '.join(FEATURE_KINDS)}")
    for kind in FEATURE_KINDS:
        features[kind] = []
        for entry in vocab.get(kind) or []:
            f, w = _validate(Feature, entry, path)
            features[kind].append(f)
            where[f"{kind}:{f.id}"] = w
    diseases = []
    files = sorted((data_dir / "diseases").glob("*.yaml"))
    if not files:
        raise CuratedError(f"{data_dir / 'diseases'}: no disease files")
    for path in files:
        for entry in _read(path) or []:
            d, w = _validate(Disease, entry, path)
            diseases.append(d)
            if d.id in where:
                raise CuratedError(f"{w}: id {d.id!r} is already defined at {where[d.id]}")
            where[d.id] = w
    path = data_dir / "dataset_labels.yaml"
    labels = _strip_lines(_read(path)) if path.exists() else {}
    return Curated(categories, features, diseases, labels or {}, where)
