"""Export the graph (GraphML or node-link JSON) and draw a node's neighbourhood (PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx

from dermvlm.io import atomic_write_text
from dermvlm.knowledge.graph import FEATURE_RELS, KnowledgeGraph

KIND_COLOURS = {"disease": "#d62728", "category": "#7f7f7f", "morphology": "#1f77b4", "colour": "#ff7f0e",
                "border": "#8c564b", "distribution": "#9467bd", "site": "#2ca02c", "symptom": "#e377c2",
                "dermoscopic": "#17becf"}


def _flat(value):
    return value if isinstance(value, str | int | float | bool) else json.dumps(value, sort_keys=True)


def export(kg: KnowledgeGraph, out: str | Path, fmt: str = "json") -> Path:
    """Write the graph as ``graphml`` (attributes flattened to JSON strings) or ``json`` (node-link)."""
    out = Path(out)
    if fmt == "json":
        data = nx.node_link_data(kg.g, edges="links")
        return atomic_write_text(out, json.dumps(data, sort_keys=True, default=str) + "\n")
    if fmt == "graphml":
        flat = nx.MultiDiGraph()
        for n, d in kg.g.nodes(data=True):
            flat.add_node(n, **{k: _flat(v) for k, v in d.items() if v is not None})
        for a, b, d in kg.g.edges(data=True):
            flat.add_edge(a, b, **{k: _flat(v) for k, v in d.items() if v is not None})
        return atomic_write_text(out, "\n".join(nx.generate_graphml(flat)) + "\n")
    raise ValueError(f"unknown export format {fmt!r}; choose graphml or json")


def plot_neighbourhood(kg: KnowledgeGraph, node: str, out: str | Path) -> Path:
    """A PNG of ``node`` with its parent, features and differentials, coloured by kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kg.node(node)
    sub = nx.DiGraph()
    sub.add_node(node)
    for _, other, rel in kg.g.out_edges(node, data="rel"):
        if rel in FEATURE_RELS or rel in ("is_a", "differential_of", "member_of", "lacks_feature"):
            sub.add_edge(node, other, rel=rel)
    for other, _, rel in kg.g.in_edges(node, data="rel"):
        if rel in ("is_a", "member_of"):
            sub.add_edge(other, node, rel=rel)
    pos = nx.spring_layout(sub, seed=0, k=1.2)
    fig, ax = plt.subplots(figsize=(12, 9))
    colours = [KIND_COLOURS.get(kg.kind(n), "#000000") for n in sub.nodes]
    nx.draw_networkx_nodes(sub, pos, node_color=colours, node_size=[1400 if n == node else 500 for n in sub.nodes],
                           alpha=0.85, ax=ax)
    styles = ["dashed" if d["rel"] == "lacks_feature" else "solid" for *_, d in sub.edges(data=True)]
    nx.draw_networkx_edges(sub, pos, alpha=0.4, arrows=True, ax=ax, style=styles)
    nx.draw_networkx_labels(sub, pos, labels={n: kg.name(n) for n in sub.nodes}, font_size=8, ax=ax)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in KIND_COLOURS.items()]
    ax.legend(handles=handles, loc="lower left", fontsize=8)
    ax.set_title(f"{kg.name(node)} ({node}): neighbourhood (dashed: argues against)")
    ax.axis("off")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out
