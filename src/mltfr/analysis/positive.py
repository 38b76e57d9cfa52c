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

import numpy as np
import pandas as pd

from mltfr.analysis.blocks import BASE
from mltfr.analysis.verdicts import diff_text, verdict_rows

LOOKUP, AUTHORS, SHARP = "mltfr-planted-lookup", "mltfr-planted", "mltfr-planted-sharp"
ROUTES = {LOOKUP: "handed to the branch by user id (no filter)", AUTHORS: "through the authors' filter",
          SHARP: "through the sharp filter"}
TITLE = "## Can the study see a gain? The positive control"
# a filter route "cannot transmit" the planted table only when its CI's upper end stays below this
# share of what the lookup carries; up to all of it, the route passes on "at most" that share
TRANSMITS_NOTHING = 0.25


def positive_rows(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Each planted route vs base, oriented (> 0: the route scores higher), with its verdict."""
    return verdict_rows(comparisons, [(v, BASE, v) for v in ROUTES])


def lookup_sentence(row) -> str:
    """Whether the branch can carry the planted table at all, from the lookup route."""
    if row is None:
        return f"The lookup route ({LOOKUP}) did not run here, so whether the branch can carry a table is untested."
    if row.verdict == "better":
        return (f"The branch can carry a table's content and the tests see it: the planted rows {ROUTES[LOOKUP]} "
                f"beat base (**better**; {diff_text(row)}).{unsteady_words(row)}")
    return (f"Even the planted rows {ROUTES[LOOKUP]} show no gain over base (**{row.verdict}**; {diff_text(row)}): "
            "here the study cannot see a gain, so an equivalent or inconclusive MLTFR verdict says nothing "
            "about the LLM tables.")


def unsteady_words(row) -> str:
    """A warning when a gain the t-test over users finds does not hold across seeds: the 95% interval,
    which resamples seeds as well as users, reaches 0 (e.g. a seed whose run stopped early)."""
    if not np.isfinite(row.ci_low) or row.ci_low > 0:
        return ""
    return (f" The gain is not steady across seeds, though: its 95% interval, which resamples seeds as well "
            f"as users, reaches {row.ci_low:+.4f}.")


def route_sentence(variant: str, row, lookup) -> str:
    """Whether one filter transmits the planted table, measured against what the lookup route
    carries (`lookup`: its row when it showed a gain, else None)."""
    route = ROUTES[variant][0].upper() + ROUTES[variant][1:]
    if row.verdict == "better":
        return (f"{route} the planted table beats base too (**better**; {diff_text(row)}): "
                "that filter transmits a table's content.")
    if lookup is None:
        return f"{route}: **{row.verdict}** ({diff_text(row)})."
    share = np.clip(row.ci_high, 0.0, None) / lookup.mean_diff    # NaN without an interval
    bound = (f": its interval's upper end, {row.ci_high:+.4f}, is {share:.0%} of the {lookup.mean_diff:+.4f} "
             "the lookup carries" if np.isfinite(share) else ": without an interval")
    return f"{route} it shows no gain (**{row.verdict}**; {diff_text(row)}){bound}{transmit_words(variant, share)}."


def transmit_words(variant: str, share: float) -> str:
    """What a filter route passes on, from its CI's upper end as a share of the lookup's gain."""
    if not share < 1:                      # as much as the lookup, or no interval (NaN)
        return "; whether this filter transmits what the table holds, the data do not say"
    if share >= TRANSMITS_NOTHING:
        return f"; this filter passes on at most {share:.0%} of what the lookup carries"
    if variant == AUTHORS:
        return "; the authors' filter cannot transmit a table's content, whatever the table holds"
    return "; this filter does not transmit what the table holds either"


def cell_paragraph(cell: pd.DataFrame) -> str:
    """The sentences of one dataset/backbone/protocol: the lookup first, then each filter route."""
    by_route = {r.comparison: r for r in cell.itertuples()}
    lookup = by_route.get(LOOKUP)
    carried = lookup if lookup is not None and lookup.verdict == "better" else None
    sentences = [lookup_sentence(lookup)]
    sentences += [route_sentence(v, by_route[v], carried) for v in (AUTHORS, SHARP) if v in by_route]
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
