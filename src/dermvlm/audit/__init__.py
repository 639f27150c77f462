"""Data audit (DESIGN.md: ``audit/``): ranked duplicates, off-topic images and label-error candidates of a recipe's
images, and the exclude list a recipe consumes. Uses datasets and recipes' record collection; never training."""

from dermvlm.audit.ranking import audit, blank_or_clipped

__all__ = ["audit", "blank_or_clipped"]
