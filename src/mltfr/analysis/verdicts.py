"""The verdict rule and the oriented comparison rows the findings report states (from
stats/comparisons.csv): better / worse / equivalent / inconclusive, and their one-line texts."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mltfr.analysis.demonstration import MIN_SEEDS
from mltfr.analysis.stats import ALPHA, format_p

NOT_TESTABLE = f"not testable (n<{MIN_SEEDS} seeds)"


def verdict(p_holm: float, p_tost_holm: float, mean_diff: float, n_seeds: float) -> str:
    """The verdict of one comparison with >= MIN_SEEDS common seeds (NOT_TESTABLE with fewer):
    'better' / 'worse' (the sign of the mean per-user difference) when the Holm-adjusted p of
    the paired t-test over users is < ALPHA; else 'equivalent' when the Holm-adjusted TOST p at
    the declared margin is < ALPHA; else 'inconclusive' (neither a difference nor equivalence)."""
    if not n_seeds >= MIN_SEEDS:
        return NOT_TESTABLE
    if np.isfinite(p_holm) and p_holm < ALPHA and mean_diff != 0:
        return "better" if mean_diff > 0 else "worse"
    if np.isfinite(p_tost_holm) and p_tost_holm < ALPHA:
        return "equivalent"
    return "inconclusive"


VERDICTS = ("better", "worse", "equivalent", "inconclusive", NOT_TESTABLE)

# comparisons.csv columns an oriented row keeps unchanged (the p-values are symmetric; the margin,
# MDE and seed_mean_reference stay those of comparisons.csv's reference)
KEPT = ["dataset", "backbone", "protocol", "n_seeds", "p_ttest_users_holm", "p_tost_holm", "p_wilcoxon_holm",
        "p_ttest_holm", "margin", "margin_relative", "mde", "mde_holm", "seed_mean_reference", "note"]


def oriented(rows: pd.DataFrame, label: str, sign: int) -> pd.DataFrame:
    """Comparison rows as '<label>' with differences signed so that > 0 favours its left side."""
    out = rows.reindex(columns=KEPT)          # a hand-made table may lack the note column
    out["comparison"] = label
    for col in ("mean_diff", "rank_biserial"):
        out[col] = sign * rows[col] + 0.0          # + 0.0: a flipped 0 prints as +0.0000, not -0.0000
    low, high = sign * rows["ci_low"] + 0.0, sign * rows["ci_high"] + 0.0
    out["ci_low"], out["ci_high"] = np.minimum(low, high), np.maximum(low, high)
    return out


def verdict_rows(comparisons: pd.DataFrame, pairs) -> pd.DataFrame:
    """The comparisons of `pairs` ((variant, reference, label) each), oriented so that > 0 favours
    the variant, with their verdicts; an empty frame when none of them ran."""
    if comparisons.empty:
        return pd.DataFrame()
    variant, ref = comparisons["variant"], comparisons["reference"]
    rows = pd.concat([oriented(comparisons[(variant == v) & (ref == r)], label, 1) for v, r, label in pairs],
                     ignore_index=True)
    return with_verdicts(rows) if len(rows) else rows


def with_verdicts(rows: pd.DataFrame) -> pd.DataFrame:
    """Oriented comparison rows with a `verdict` column (the verdict rule above)."""
    rows["verdict"] = [verdict(*v) for v in rows[["p_ttest_users_holm", "p_tost_holm", "mean_diff",
                                                  "n_seeds"]].to_numpy(float)]
    return rows


def diff_text(row) -> str:
    """'Δ NDCG@10 +0.0123 [+0.0050, +0.0200], t-test Holm p 0.003, margin ±0.0006 (TOST Holm p
    0.500), MDE 0.0009, 3 seed(s)' of one oriented row; without a common seed, why (its note:
    e.g. the two sides trained the backbone differently)."""
    if not row.n_seeds > 0:
        return f"no seed to compare: {row.note}" if has_note(row.note) else "no common seed"
    p, p_tost = format_p(row.p_ttest_users_holm) or "none", format_p(row.p_tost_holm) or "none"
    return (f"Δ NDCG@10 {ci_cell(row) or 'none'}, t-test Holm p {p}, margin ±{number(row.margin)} "
            f"(TOST Holm p {p_tost}), MDE {number(row.mde)}, {row.n_seeds:.0f} seed(s)")


def has_note(note) -> bool:
    """Whether a table's note cell says something (a CSV's empty cell reads as NaN)."""
    return isinstance(note, str) and note != ""


def number(value: float) -> str:
    return f"{value:.4f}" if np.isfinite(value) else "none"


def ci_cell(row) -> str:
    """'+0.0123 [+0.0050, +0.0200]' (the CI when there is one), '' without a difference."""
    return with_ci(row.mean_diff, row.ci_low, row.ci_high)


def with_ci(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return ""
    return f"{value:+.4f} [{low:+.4f}, {high:+.4f}]" if np.isfinite(low) else f"{value:+.4f}"
