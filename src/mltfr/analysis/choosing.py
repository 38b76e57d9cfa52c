"""Does user-guided selection help once the filter chooses? (the findings' section on the filters
that choose, mltfr.spec.variants.CHOOSING_FILTERS)

The authors' filter draws its pick from a near-uniform law (argmax agreement ~0%, effective tokens
~all of |V|: diagnostics.csv), so mltfr against mltfr-randomselect cannot say whether choosing
tokens by the user helps. A filter that chooses can: per cell, this section says whether it chose
(at the last epoch, mean over seeds, every table: argmax agreement >= MIN_AGREEMENT and effective
tokens <= MAX_SHARE of the vocabulary, the bar docs/method.md states), then its comparisons with
tokens drawn uniformly per user (the answer), with the authors' filter and with base
(stats/comparisons.csv).
"""
from __future__ import annotations

import pandas as pd

from mltfr.analysis.blocks import BASE, FULL
from mltfr.analysis.tables import CELL
from mltfr.analysis.verdicts import diff_text, verdict_rows
from mltfr.spec.variants import CHOOSING_FILTERS, SELECTION_CONTROL

MIN_AGREEMENT = 0.5    # share of training picks equal to the noiseless top-K
MAX_SHARE = 0.10       # effective tokens / |V|
REFERENCES = {SELECTION_CONTROL: "tokens drawn uniformly per user", FULL: "the authors' filter", BASE: "base"}
TITLE = "## Does user-guided selection help once the filter chooses?"


def spread(values: pd.Series, fmt: str) -> str:
    """'<v>' or '<min>-<max>' of one diagnostic over a cell's tables."""
    low, high = fmt.format(values.min()), fmt.format(values.max())
    return low if low == high else f"{low}-{high}"


def choice_words(diag: pd.DataFrame) -> tuple[str, bool]:
    """Whether one filter chose in one cell (its diagnostics rows, one per table), in words."""
    detail = (f"argmax agreement {spread(diag['argmax_agreement'], '{:.0%}')}, effective tokens "
              f"{spread(diag['effective_tokens'], '{:,.1f}')} ({spread(diag['effective_share'], '{:.2%}')} of "
              f"the vocabulary) over its {len(diag)} table(s), last epoch, mean over seeds")
    chose = bool((diag["argmax_agreement"] >= MIN_AGREEMENT).all() and (diag["effective_share"] <= MAX_SHARE).all())
    if chose:
        return f"it chooses ({detail})", True
    return (f"it does not choose by the bar of at least {MIN_AGREEMENT:.0%} agreement and at most "
            f"{MAX_SHARE:.0%} of the vocabulary ({detail})"), False


def comparison_rows(comparisons: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The filter against each reference of REFERENCES, oriented (> 0: the filter scores higher)."""
    return verdict_rows(comparisons, [(variant, r, r) for r in REFERENCES])


def answer(row, chose: bool) -> str:
    """The cell's answer, from the comparison with uniform selection."""
    if row is None:
        return f"{SELECTION_CONTROL} did not run beside it, so the question is open here."
    if not chose:
        return "So this cell does not test user-guided selection."
    return {"better": "So user-guided selection helps here, once the filter chooses.",
            "worse": "So here user-guided selection hurts, once the filter chooses.",
            "equivalent": "So here user-guided selection does not help, even once the filter chooses: "
                          "it is equivalent to tokens drawn at random within the margin."}.get(
        row.verdict, "So the data do not say whether user-guided selection helps here.")


def cell_paragraph(variant: str, diag: pd.DataFrame, rows: pd.DataFrame) -> str:
    """Whether the filter chose in one cell, its comparisons, and the answer they give."""
    words, chose = choice_words(diag) if len(diag) else ("its diagnostics were not recorded", False)
    by_ref = {r.comparison: r for r in rows.itertuples()}
    against = [f"against {REFERENCES[r]} ({r}): **{by_ref[r].verdict}** ({diff_text(by_ref[r])})"
               for r in REFERENCES if r in by_ref]
    said = "; ".join(against)
    said = f"{said[:1].upper()}{said[1:]}. " if against else ""
    return f"{variant}: {words}. {said}{answer(by_ref.get(SELECTION_CONTROL), chose)}"


def choosing_filters(comparisons: pd.DataFrame, diag: pd.DataFrame) -> str:
    """The findings section: one paragraph per filter that chooses and cell, or a line saying none ran."""
    head = (f"{TITLE}\n\nThe authors' filter picks a near-random token (see the filter diagnostics), so "
            f"MLTFR against {SELECTION_CONTROL} cannot answer this. A filter that chooses can "
            "(docs/method.md, \"The sharp filter\"): does it beat tokens drawn uniformly per user?\n\n")
    paragraphs = []
    for variant in CHOOSING_FILTERS:
        rows = comparison_rows(comparisons, variant)
        for cell, part in (rows.groupby(CELL, sort=True) if len(rows) else []):
            own = diag[(diag[CELL] == list(cell)).all(axis=1) & (diag["variant"] == variant)] if len(diag) else diag
            paragraphs.append(f"- {'/'.join(cell[:2])}, {cell[2]}: {cell_paragraph(variant, own, part)}")
    if not paragraphs:
        return head + f"A filter that chooses ({', '.join(CHOOSING_FILTERS)}): not run in this study.\n"
    return head + "\n".join(paragraphs) + "\n"
