"""The protocol ladder: from the faithful to the corrected protocol one factor at a time.

Ladder runs lie in results/runs/{dataset}/{backbone}/{variant}/{rung}/seed{S}/ and record
`rung` = {name, index, factors, previous, order}; rung 0 is the ordinary faithful run. Rungs:
`rung-<factor>` (cumulative: every factor up to <factor> in the configured order) and
`alone-<factor>` (only that factor changed from faithful). Two tables:

- ladder: per dataset, backbone, variant and rung (ladder order), test NDCG@10 over the seeds
  common to all rungs of the variant, its change from the previous rung with a Wilcoxon test over
  users (paired by user id) and a paired t-test over seeds (stats.py), and for mltfr and
  mltfr-randomselect the gain over base and its change from the previous rung, with bootstrap
  CIs over users (per-user gains paired by user id across the four cells).
- optimism (mltfr.analysis.optimism): the epochs the authors' rule picks on the test traces; the
  ladder's selection rung reports another epoch of the previous rung's trajectories, so the
  findings cite the optimism table there.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from mltfr.analysis.blocks import BASE, FULL
from mltfr.analysis.collect import FAITHFUL_RUNG, is_ladder_run, load_user_ndcg
from mltfr.analysis.stats import (
    FEW_SEEDS,
    MIN_SEEDS,
    StatsConfig,
    add_holm,
    bootstrap_ci,
    compare_pair,
    format_p,
    pooled_users,
)
from mltfr.analysis.tables import Table, empty_table, mean_std, with_run_settings
from mltfr.errors import DataError
from mltfr.spec.rungs import DEFAULT_ORDER

FACTORS = DEFAULT_ORDER   # the ladder's default factor order (mltfr.spec.rungs)
GAIN_PAIRS = ((FULL, BASE), ("mltfr-randomselect", BASE))   # (variant, reference) of a claimed gain
LADDER_CELL = ["dataset", "backbone"]
NO_LADDER = "no ladder runs (study block protocol_ladder)"
Loader = Callable[[str], pd.Series]


# ---------------------------------------------------------------- rungs
def ladder_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """The ladder runs plus the faithful rung-0 runs of every (dataset, backbone, variant) that has
    ladder runs."""
    ladder = runs[is_ladder_run(runs)]
    cells = ladder[[*LADDER_CELL, "variant"]].drop_duplicates()
    rung0 = runs[runs["rung"] == FAITHFUL_RUNG].merge(cells, on=[*LADDER_CELL, "variant"])
    return pd.concat([rung0, ladder], ignore_index=True)


def rung_order(cell_runs: pd.DataFrame) -> list[str]:
    """The rungs of one dataset/backbone in ladder order: faithful, the cumulative rungs in the
    factor order the runs recorded (`rung.order`), then the single-factor rungs."""
    orders = cell_runs["rung_order"].dropna().unique()
    where = "/".join(map(str, cell_runs[LADDER_CELL].iloc[0]))
    if len(orders) > 1:
        raise DataError(f"{where}: ladder runs record different factor orders ({' | '.join(orders)}); "
                        "rerun the ladder with one config")
    factors = orders[0].split(",") if len(orders) else list(FACTORS)
    names = [FAITHFUL_RUNG] + [f"rung-{f}" for f in factors] + [f"alone-{f}" for f in factors]
    unknown = sorted(set(cell_runs["rung"]) - set(names))
    if unknown:
        raise DataError(f"{where}: rung(s) {', '.join(unknown)} are not in the recorded factor order "
                        f"{','.join(factors)}; rerun them with the current config")
    return [name for name in names if name in set(cell_runs["rung"])]


def previous_rung(rung: str, cell_runs: pd.DataFrame, order: list[str]) -> str | None:
    """The rung `rung` is compared with: as recorded (`rung.previous`), else the cumulative rung
    before it (faithful for the first one and for every single-factor rung)."""
    if rung == FAITHFUL_RUNG:
        return None
    recorded = cell_runs.loc[cell_runs["rung"] == rung, "rung_previous"].dropna().unique()
    if len(recorded):
        return str(recorded[0])
    cumulative = [r for r in order if not r.startswith("alone-")]
    return cumulative[cumulative.index(rung) - 1] if rung in cumulative else FAITHFUL_RUNG


def seeds_in_every_rung(variant_runs: pd.DataFrame) -> list[int]:
    """The seeds a variant ran at every one of its rungs."""
    per_rung = variant_runs.groupby("rung")["seed"].apply(set)
    return sorted(set.intersection(*per_rung)) if len(per_rung) else []


# ---------------------------------------------------------------- the ladder table
def variant_rows(variant_runs: pd.DataFrame, order: list[str], load: Loader, cfg: StatsConfig) -> list[dict]:
    """One row per rung of one variant: NDCG@10 over the seeds common to all its rungs, and the
    change from the previous rung with its tests (compare_pair with the rung as the 'variant')."""
    seeds = seeds_in_every_rung(variant_runs)
    frame = variant_runs[variant_runs["seed"].isin(seeds)].assign(variant=variant_runs["rung"])
    rows = []
    for rung in (r for r in order if r in set(frame["rung"])):
        previous = previous_rung(rung, variant_runs, order)
        values = frame.loc[frame["rung"] == rung, "test_ndcg@10"]
        row = {"rung": rung, "rung_index": frame.loc[frame["rung"] == rung, "rung_index"].iloc[0],
               "previous": previous, "n_seeds": len(seeds), "ndcg@10": values.mean(),
               "ndcg@10_std": values.std(ddof=1), "cell": mean_std(values)}
        if previous in set(frame["rung"]):
            test = compare_pair(frame, rung, previous, load, cfg)
            row.update(delta=test["seed_mean_variant"] - test["seed_mean_reference"], **{
                k: test[k] for k in ("n_users", "p_wilcoxon", "p_ttest", "note")})
        elif previous is not None:
            row["note"] = f"previous rung {previous} has no runs common to every rung"
        rows.append(row)
    return rows


def per_user_gains(cell_runs: pd.DataFrame, variant: str, reference: str, seeds: list[int],
                   load: Loader) -> dict[str, pd.Series]:
    """rung -> per-user NDCG@10 of `variant` minus `reference` (seeds averaged per user first,
    users paired by id: only users both have), sorted by user id."""
    gains = {}
    for rung in sorted(set(cell_runs["rung"])):
        at = cell_runs[cell_runs["rung"] == rung]
        if {variant, reference} <= set(at["variant"]):
            a, b = pooled_users(at, variant, seeds, load).align(pooled_users(at, reference, seeds, load),
                                                                join="inner")
            gains[rung] = (a - b).sort_index()
    return gains


def gain_rows(cell_runs: pd.DataFrame, variant: str, reference: str, order: list[str], load: Loader,
              cfg: StatsConfig) -> list[dict]:
    """Per rung: the gain of `variant` over `reference` with a bootstrap CI over users, and the
    change of the gain from the previous rung, delta_gain(r) = gain(r) - gain(r-1), with a
    bootstrap CI resampling the users all four cells have (paired by user id)."""
    pair = cell_runs[cell_runs["variant"].isin([variant, reference])]
    seeds = sorted(set(seeds_in_every_rung(pair[pair["variant"] == variant]))
                   & set(seeds_in_every_rung(pair[pair["variant"] == reference])))
    gains = per_user_gains(pair, variant, reference, seeds, load) if seeds else {}
    rows = []
    for rung in (r for r in order if r in gains):
        g = gains[rung]
        lo, hi = bootstrap_ci(g.to_numpy(), np.zeros(len(g)), cfg)
        row = {"variant": variant, "rung": rung, "gain_reference": reference, "gain_n_seeds": len(seeds),
               "gain": g.mean(), "gain_ci_low": lo, "gain_ci_high": hi, "gain_n_users": len(g)}
        previous = previous_rung(rung, cell_runs, order)
        if previous in gains:
            now, before = g.align(gains[previous], join="inner")
            d_lo, d_hi = bootstrap_ci(now.to_numpy(), before.to_numpy(), cfg)
            row.update(delta_gain=(now - before).mean(), delta_gain_ci_low=d_lo, delta_gain_ci_high=d_hi,
                       delta_gain_n_users=len(now))
        rows.append(row)
    return rows


def ladder_tidy(runs: pd.DataFrame, cfg: StatsConfig) -> pd.DataFrame:
    """Every number of the ladder table, rows in ladder order; Holm within each dataset/backbone."""
    frame = ladder_frame(runs)
    parts = []
    for cell, cell_runs in frame.groupby(LADDER_CELL, sort=True):
        order, cache = rung_order(cell_runs), {}

        def load(run_dir: str) -> pd.Series:
            if run_dir not in cache:
                cache[run_dir] = load_user_ndcg(run_dir, cfg.k)
            return cache[run_dir]

        rows = [{"variant": v, **row} for v, vr in cell_runs.groupby("variant", sort=True)
                for row in variant_rows(vr, order, load, cfg)]
        gains = [row for v, ref in GAIN_PAIRS for row in gain_rows(cell_runs, v, ref, order, load, cfg)]
        table = pd.DataFrame(rows).reindex(columns=LADDER_ROW)
        if gains:
            table = table.merge(pd.DataFrame(gains), on=["variant", "rung"], how="left")
        table["rung_pos"] = table["rung"].map({r: i for i, r in enumerate(order)})
        parts.append(table.assign(**dict(zip(LADDER_CELL, cell))))
    if not parts:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    tidy = pd.concat(parts, ignore_index=True).reindex(columns=TIDY_COLUMNS)
    tidy = tidy.sort_values([*LADDER_CELL, "variant", "rung_pos"], kind="stable").reset_index(drop=True)
    return add_holm(tidy, family=tuple(LADDER_CELL))


LADDER_ROW = ["variant", "rung", "rung_index", "previous", "n_seeds", "ndcg@10", "ndcg@10_std", "cell",
              "delta", "n_users", "p_wilcoxon", "p_ttest", "note"]
GAIN_COLUMNS = ["gain_reference", "gain_n_seeds", "gain_n_users", "gain", "gain_ci_low", "gain_ci_high",
                "delta_gain", "delta_gain_ci_low", "delta_gain_ci_high", "delta_gain_n_users"]
TIDY_COLUMNS = [*LADDER_CELL, *LADDER_ROW, "rung_pos", *GAIN_COLUMNS]


def ci_text(value: float, low: float, high: float) -> str:
    """'+0.0012 [-0.0003, +0.0030]', or '' when there is no value."""
    if not np.isfinite(value):
        return ""
    return f"{value:+.4f} [{low:+.4f}, {high:+.4f}]" if np.isfinite(low) else f"{value:+.4f}"


def ladder_table(runs: pd.DataFrame, cfg: StatsConfig = StatsConfig()) -> Table:
    """The ladder table (see the module docstring); empty when the runs hold no ladder."""
    tidy = ladder_tidy(runs, cfg)
    if tidy.empty:
        return empty_table("ladder", tidy.drop(columns=["cell", "rung_pos"]), "Protocol ladder", NO_LADDER)
    display = tidy[[*LADDER_CELL, "variant", "rung"]].astype(str)
    display["n"] = [f"{n:.0f}" for n in tidy["n_seeds"]]
    display["NDCG@10"] = tidy["cell"]
    display["Δ previous"] = [f"{d:+.4f}" if np.isfinite(d) else "" for d in tidy["delta"].astype(float)]
    display["p Wilcoxon (Holm)"] = [format_p(p, m) for p, m in zip(tidy["p_wilcoxon_holm"], tidy["mark"])]
    display["p t-test (Holm)"] = [format_p(p) for p in tidy["p_ttest_holm"]]
    display["gain vs base [95% CI]"] = [ci_text(*v) for v in tidy[["gain", "gain_ci_low", "gain_ci_high"]]
                                        .astype(float).to_numpy()]
    display["Δ gain [95% CI]"] = [ci_text(*v) for v in tidy[["delta_gain", "delta_gain_ci_low",
                                                             "delta_gain_ci_high"]].astype(float).to_numpy()]
    display["note"] = tidy["note"].fillna("").astype(str)
    caption = with_run_settings(
        "Protocol ladder: test NDCG@10 per rung (faithful = the authors' protocol; rung-<factor>: "
        "every factor up to <factor> switched to the corrected setting, in the configured order; "
        "alone-<factor>: only that factor), mean ± std over the n seeds common to all rungs of the "
        "variant; Δ previous = change from the previous rung (alone-*: from faithful), Wilcoxon "
        "signed-rank over users paired by user id and paired t-test over seeds (only with >= "
        f"{MIN_SEEDS} seeds), Holm-corrected per dataset/backbone; * p<0.05, ** p<0.01, *** p<0.001 "
        f"({FEW_SEEDS}: too few seeds for a mark). gain = variant - base per user (seeds averaged "
        "per user, users paired by id); Δ gain = gain(rung) - gain(previous rung); 95% bootstrap "
        "CIs resample users.", ladder_frame(runs))
    return Table("ladder", tidy.drop(columns=["cell", "rung_pos"]), display, None, caption)


def ladder_tables(runs: pd.DataFrame, cfg: StatsConfig = StatsConfig()) -> list[Table]:
    """The ladder and optimism tables, in the order of outputs.TABLES."""
    from mltfr.analysis.optimism import optimism_table

    return [ladder_table(runs, cfg), optimism_table(runs)]
