"""The name a model folder is served under: the ``model_name`` its model card declares (dermvlm's pipeline writes
the run's name there), else the folder's own name."""

from __future__ import annotations

from pathlib import Path


def folder_model_name(model: str) -> str:
    """``model_name`` (or the model-index name) of ``MODEL/README.md``'s metadata, else the folder's name."""
    card = Path(model) / "README.md"
    if card.is_file():
        import yaml
        from huggingface_hub import metadata_load

        try:
            meta = metadata_load(card) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):  # an unreadable card names nothing
            meta = {}
        index = meta.get("model-index") or [{}]
        name = meta.get("model_name") or (index[0].get("name") if isinstance(index[0], dict) else None)
        if isinstance(name, str) and name.strip():
            return name.strip()
    return Path(model).name or str(model)
