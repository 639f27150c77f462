"""Recipes: canonical records (+ the knowledge graph) → training and evaluation datasets."""
