"""Evaluation against any OpenAI-compatible endpoint: items, answer parsing, metrics, reports."""
