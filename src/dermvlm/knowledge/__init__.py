"""The dermatology knowledge graph and the KG scorer (imports nothing else of the package but leaf utilities)."""

from dermvlm.knowledge.graph import KnowledgeGraph, UnknownLabelError, load_graph
from dermvlm.knowledge.scorer import KGScorer, ScoreBreakdown, score

__all__ = ["KGScorer", "KnowledgeGraph", "ScoreBreakdown", "UnknownLabelError", "load_graph", "score"]
