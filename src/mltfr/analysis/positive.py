"""The positive control in words: can the branch carry a table's content, and would the tests see it?

The planted table (`planted-<dataset>`, mltfr.llm.planted) holds every user's held-out items: it is
leaky by construction and never a finding. It reaches the branch three ways (mltfr.spec.variants):
handed over by user id (`mltfr-planted-lookup`: each user its own row, no filter), through the
authors' filter (`mltfr-planted`) and through the sharp filter (`mltfr-planted-sharp`). Each is compared with base
(stats/comparisons.csv; their Holm family is their own). The lookup says whether the branch and the
tests can show a gain at all; each filter route then says whether that filter transmits what the
table holds.
"""
from __future__ import annotations

import pandas as pd

from mltfr.analysis.blocks import BASE
from mltfr.analysis.verdicts import diff_text, verdict_rows

LOOKUP, AUTHORS, SHARP = "mltfr-planted-lookup", "mltfr-planted", "mltfr-planted-sharp"
ROUTES = {LOOKUP: "handed to the branch by user id (no filter)", AUTHORS: "through the authors' filter",
          SHARP: "through the sharp filter"}
TITLE = "## Can the study see a gain? The positive control"


def positive_rows(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Each planted route vs base, oriented (> 0: the route scores higher), with its verdict."""
    return verdict_rows(comparisons, [(v, BASE, v) for v in ROUTES])


def lookup_sentence(row) -> str:
    """Whether the branch can carry the planted table at all, from the lookup route."""
    if row is None:
        return f"The lookup route ({LOOKUP}) did not run here, so whether the branch can carry a table is untested."
    if row.verdict == "better":
        return (f"The branch can carry a table's content and the tests see it: the planted rows {ROUTES[LOOKUP]} "
                f"beat base (**better**; {diff_text(row)}).")
    return (f"Even the planted rows {ROUTES[LOOKUP]} show no gain over base (**{row.verdict}**; {diff_text(row)}): "
            "here the study cannot see a gain, so an equivalent or inconclusive MLTFR verdict says nothing "
            "about the LLM tables.")


def route_sentence(variant: str, row, carries: bool) -> str:
    """Whether one filter transmits the planted table (`carries`: the lookup route showed a gain)."""
    route = ROUTES[variant]
    if row.verdict == "better":
        return (f"{route[0].upper()}{route[1:]} the planted table beats base too (**better**; {diff_text(row)}): "
                "that filter transmits a table's content.")
    if not carries:
        return f"{route[0].upper()}{route[1:]}: **{row.verdict}** ({diff_text(row)})."
    ending = (": the authors' filter cannot transmit a table's content, whatever the table holds"
              if variant == AUTHORS else ": this filter does not transmit what the table holds either")
    return f"{route[0].upper()}{route[1:]} it shows no gain (**{row.verdict}**; {diff_text(row)}){ending}."


def cell_paragraph(cell: pd.DataFrame) -> str:
    """The sentences of one dataset/backbone/protocol: the lookup first, then each filter route."""
    by_route = {r.comparison: r for r in cell.itertuples()}
    lookup = by_route.get(LOOKUP)
    carries = lookup is not None and lookup.verdict == "better"
    sentences = [lookup_sentence(lookup)]
    sentences += [route_sentence(v, by_route[v], carries) for v in (AUTHORS, SHARP) if v in by_route]
    return " ".join(sentences)


def positive_control(comparisons: pd.DataFrame) -> str:
    """The findings section (one paragraph per cell), or a line saying the control did not run."""
    rows = positive_rows(comparisons)
    head = (f"{TITLE}\n\nThe planted table holds every user's held-out items: a positive control, leaky by "
            "construction and never a finding (docs/method.md, \"The positive control\"); its comparisons "
            "with base form their own Holm family.\n\n")
    if rows.empty:
        return head + "Positive control: not run in this study.\n"
    paragraphs = [f"- {d}/{b}, {p}: {cell_paragraph(cell)}"
                  for (d, b, p), cell in rows.groupby(["dataset", "backbone", "protocol"], sort=True)]
    return head + "\n".join(paragraphs) + "\n"
