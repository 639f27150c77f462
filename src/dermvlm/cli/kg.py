"""``dermvlm kg``: the knowledge graph's stats, nodes, paths, export, scoring and derivation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from dermvlm.cli.common import fail

kg_app = typer.Typer(help="The dermatology knowledge graph: stats, nodes, paths, export, scoring.",
                     no_args_is_help=True)


def _kg():
    from dermvlm.knowledge import load_graph
    from dermvlm.knowledge.curated import CuratedError

    try:
        return load_graph()
    except CuratedError as err:
        fail(str(err))


def _node(kg, label: str) -> str:
    from dermvlm.knowledge import UnknownLabelError

    try:
        return label if kg.has(label) else kg.resolve(label)
    except UnknownLabelError as err:
        fail(str(err))
    raise AssertionError


@kg_app.command("stats")
def kg_stats(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Node and edge counts by kind, coverage of each dataset's labels, curation checks."""
    import json as _json

    from dermvlm.knowledge.coverage import coverage_report

    report = coverage_report(_kg())
    if as_json:
        typer.echo(_json.dumps(report, indent=2))
        return
    typer.echo(f"nodes: {report['nodes']}, edges: {report['edges']}")
    for k, v in report["nodes_by_kind"].items():
        typer.echo(f"  {k:<14} {v}")
    for k, v in report["edges_by_relation"].items():
        typer.echo(f"  {k:<26} {v}")
    for ds, c in report["dataset_coverage"].items():
        typer.echo(f"  {ds:<16} {c['covered']}/{c['labels']} labels resolve")
    d = report["diseases"]
    typer.echo(f"diseases: {d['count']} (>=3 features: {d['with_3_features']}, >=2 differentials: "
               f"{d['with_2_differentials']})")


@kg_app.command("show")
def kg_show(
    node: Annotated[str, typer.Argument(help="Node id or any label (e.g. 'BCC', 'seborrheic keratosis').")],
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the node's neighbourhood.")] = None,
) -> None:
    """A node: its category path, malignancy, features, differentials and sources."""
    kg = _kg()
    nid = _node(kg, node)
    data = kg.node(nid)
    typer.echo(f"{data['name']} ({nid}) [{data['kind']}]")
    typer.echo("path: " + " > ".join(kg.name(n) for n in kg.category_path(nid)))
    if data["kind"] in ("disease", "category"):
        typer.echo(f"malignancy: {kg.malignancy(nid)}")
    for key in ("synonyms", "abbreviations", "icd10", "age_bands", "referral", "red_flags", "description"):
        if data.get(key):
            typer.echo(f"{key}: {data[key]}")
    if data["kind"] == "disease":
        from dermvlm.knowledge.curated import FEATURE_KINDS

        for kind in FEATURE_KINDS:
            feats = kg.features(nid, kind)
            if feats:
                typer.echo(f"{kind}: {', '.join(kg.name(f) for f in feats)}")
        if kg.lacks(nid):
            typer.echo(f"argues against: {', '.join(kg.name(f) for f in kg.lacks(nid))}")
        typer.echo("differentials: " + ", ".join(f"{kg.name(d)} ({w:.2f})" for d, w in kg.differentials(nid)))
    if plot:
        from dermvlm.knowledge.export import plot_neighbourhood

        typer.echo(f"plot: {plot_neighbourhood(kg, nid, plot)}")


@kg_app.command("path")
def kg_path(a: Annotated[str, typer.Argument()], b: Annotated[str, typer.Argument()]) -> None:
    """Taxonomy path between two nodes through their lowest common ancestor."""
    kg = _kg()
    na, nb = _node(kg, a), _node(kg, b)
    c = kg.lca(na, nb)
    up = kg.category_path(na)[kg.category_path(na).index(c):]
    down = kg.category_path(nb)[kg.category_path(nb).index(c) + 1:]
    typer.echo(" < ".join(kg.name(n) for n in reversed(up)) + (" > " if down else "")
               + " > ".join(kg.name(n) for n in down))
    typer.echo(f"lowest common ancestor: {kg.name(c)}; taxonomy distance: {kg.taxonomy_distance(na, nb)}")


@kg_app.command("export")
def kg_export(
    out: Annotated[Path, typer.Option(help="Output file.")],
    fmt: Annotated[Literal["graphml", "json"], typer.Option("--format", help="Export format.")] = "json",
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Export the whole graph."""
    from dermvlm.io import OutputError, check_output_file
    from dermvlm.knowledge.export import export
    from dermvlm.knowledge.graph import DATA

    if fmt not in ("graphml", "json"):
        fail(f"--format: {fmt!r} is not one of graphml, json")
    try:
        check_output_file(out, force, inputs={"inside the graph's own data": DATA})
    except OutputError as err:
        fail(str(err))
    typer.echo(f"wrote {export(_kg(), out, fmt)}")


@kg_app.command("score")
def kg_score(
    gold: Annotated[str, typer.Option(help="Gold label (node id or any resolvable label).")],
    response: Annotated[str | None, typer.Option(help="The response text.")] = None,
    response_file: Annotated[Path | None, typer.Option(help="Read the response from a file.")] = None,
    site: Annotated[str | None, typer.Option(help="Image metadata: body site id.")] = None,
    fitzpatrick: Annotated[int | None, typer.Option(help="Image metadata: Fitzpatrick type 1-6.")] = None,
    reported: Annotated[list[str] | None, typer.Option(
        help="Record fact: a symptom the record reports (itch, grew, hurt, changed, bleed, elevation; repeat).")
    ] = None,
    denied: Annotated[list[str] | None, typer.Option(help="Record fact: a symptom the record reports absent.")
                      ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The full breakdown as JSON.")] = False,
) -> None:
    """Score a response against a gold label (and the record's facts) with the KG scorer."""
    import json as _json

    from dermvlm.knowledge import KGScorer

    if (response is None) == (response_file is None):
        fail("give exactly one of --response and --response-file")
    if response_file is not None:
        try:
            response = response_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            fail(f"--response-file: cannot read {response_file}: {err}")
    from dermvlm.knowledge.grounding import PAD_UFES_FIELDS, RecordFacts

    for name in [*(reported or []), *(denied or [])]:
        if name not in PAD_UFES_FIELDS:
            fail(f"--reported/--denied: {name!r} is not one of {', '.join(PAD_UFES_FIELDS)}")
    facts = RecordFacts.from_meta({"symptoms": reported or [], "symptoms_absent": denied or []})
    kg = _kg()
    result = KGScorer(kg).score(response, _node(kg, gold), site=site, fitzpatrick=fitzpatrick, facts=facts)
    if as_json:
        typer.echo(_json.dumps(result.to_dict(), indent=2))
        return
    typer.echo(f"score: {result.score:.3f}" + (f" ({result.reason})" if result.reason else ""))
    typer.echo(f"answered: {result.answered} ({result.diagnosis_relation}, credit {result.diagnosis_credit})")
    typer.echo(f"supported: {result.supported}\ncontradicted: {result.contradicted}\nunverified: {result.unverified}")
    typer.echo(f"stereotypes stated as findings: {result.consistent}\nclass knowledge: supported "
               f"{result.typical_supported}, contradicted {result.typical_contradicted}")
    typer.echo(f"differentials: {result.differentials} (plausible: {result.plausible_differentials})")
    typer.echo(f"unknown diseases: {result.unknown_diseases}; malignancy in play: {result.malignancy_in_play}, "
               f"referral advised: {result.referral_advised}")


@kg_app.command("derive")
def kg_derive(
    sources: Annotated[Path | None, typer.Option(help="Folder of knowledge sources (default: the data root's "
                                                 "knowledge/, ../shared/data/knowledge).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output JSON; default: the package's derived.json.")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Regenerate the ontology-derived facts (derived.json) from the raw knowledge sources."""
    import json as _json

    from dermvlm.data_root import rerooted
    from dermvlm.io import OutputError, atomic_write_text, check_output_file
    from dermvlm.knowledge.derive import derive
    from dermvlm.knowledge.graph import DERIVED

    sources = sources or Path(rerooted("../shared/data/knowledge"))
    try:
        if out is not None:
            check_output_file(out, force, example="derived.json", inputs={"inside the knowledge sources": sources})
    except OutputError as err:
        fail(str(err))

    facts = derive(sources)
    path = atomic_write_text(out or DERIVED, _json.dumps(facts, indent=1, sort_keys=True) + "\n")
    typer.echo(f"wrote {path}: " + ", ".join(f"{k} {v}" for k, v in facts["sources"].items()))
