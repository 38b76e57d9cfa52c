"""MLTFR's own protocol factors on top of the corrected protocol, and the whole faithful protocol,
as changes of a variant's gain over base on matched seeds (table protocol_factors).

Settings (the `setting` column, mltfr.spec.rungs):
- with-<factor>[+<factor>...]: the corrected protocol with those factors set back to their
  faithful values (study block protocol_factors), e.g. evaluation noise on, batch pooling;
- faithful: every factor faithful at once (the ordinary faithful runs).

Per dataset, backbone, variant (other than base) and setting, over the seeds that the variant and
base ran both under the setting and under corrected, with the same backbone settings on each side
(matched seeds; stats.alike_seeds: a base retrained with the authors' backbone never meets an
older variant run, and the note says which seeds left):
- gain = per-user test NDCG@10 of the variant minus base (seeds averaged per user, users paired
  by id: stats.pooled_users), under corrected and under the setting, with bootstrap CIs;
- Δ gain = gain(setting) - gain(corrected) per user, with a paired bootstrap CI over users, a
  Wilcoxon test over users and a paired t-test over seeds of the per-seed gains (Holm per
  dataset/backbone).
Base has no LLM branch, so a setting whose factors act only inside it (evaluation noise, pooling)
leaves base unchanged: where base has no runs of its own there, its corrected runs stand in
(`reference_setting` says which runs were used); Δ gain is then the variant's own change.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from mltfr.analysis.blocks import BASE
from mltfr.analysis.collect import is_ladder_run, load_user_ndcg, run_setting
from mltfr.analysis.ladder import ci_text
from mltfr.analysis.stats import (
    StatsConfig,
    add_holm,
    alike_seeds,
    bootstrap_ci,
    format_p,
    pooled_users,
    seed_means,
    seed_ttest,
    wilcoxon_test,
)
from mltfr.analysis.tables import Table, empty_table, with_run_settings
from mltfr.spec.rungs import CORRECTED, FAITHFUL, FAITHFUL_VALUES, WITH, acts_on, default_order

CELL = ["dataset", "backbone"]
NO_SETTINGS = "no variant ran under corrected and under a faithful factor or the faithful protocol"
COLUMNS = [*CELL, "variant", "setting", "factors", "reference", "reference_setting", "n_seeds", "n_users",
           "gain_corrected", "gain_corrected_ci_low", "gain_corrected_ci_high", "gain", "gain_ci_low",
           "gain_ci_high", "delta_gain", "delta_gain_ci_low", "delta_gain_ci_high", "p_wilcoxon", "p_ttest",
           "note"]


def setting_factors(setting: str) -> tuple:
    """The factors a setting sets to their faithful values (faithful: every one)."""
    return tuple(FAITHFUL_VALUES) if setting == FAITHFUL else default_order(setting)


def settings_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """The corrected and faithful runs and the protocol-factor runs (not the ladder's), with their
    `setting`: the protocol, or the with-<factor> name."""
    kept = runs[~is_ladder_run(runs)]
    return kept.assign(setting=run_setting(kept))


def reference_runs(cell: pd.DataFrame, setting: str) -> tuple[pd.DataFrame, str]:
    """Base's runs under `setting` and the setting they ran under: its own runs, else (for
    branch-only factors, which base lacks) its corrected runs."""
    base = cell[cell["variant"] == BASE]
    own = base[base["setting"] == setting]
    if len(own) or acts_on(setting_factors(setting), has_branch=False):
        return own, setting
    return base[base["setting"] == CORRECTED], CORRECTED


def user_gain(variant_runs: pd.DataFrame, base_runs: pd.DataFrame, seeds: list[int], load) -> pd.Series:
    """Per-user NDCG@10 of the variant minus base, seeds averaged per user, users paired by id."""
    variant = variant_runs["variant"].iloc[0]
    a, b = pooled_users(variant_runs, variant, seeds, load).align(pooled_users(base_runs, BASE, seeds, load),
                                                                  join="inner")
    return a - b


def seed_gain(variant_runs: pd.DataFrame, base_runs: pd.DataFrame, seeds: list[int]) -> np.ndarray:
    """Per-seed test NDCG@10 of the variant minus base, in seed order."""
    variant = variant_runs["variant"].iloc[0]
    return (seed_means(variant_runs, variant)[seeds] - seed_means(base_runs, BASE)[seeds]).to_numpy(float)


def setting_row(cell: pd.DataFrame, variant: str, setting: str, load, cfg: StatsConfig) -> dict:
    """One variant under one setting against corrected, on the seeds all four cells have."""
    mine = cell[cell["variant"] == variant]
    now_v, before_v = mine[mine["setting"] == setting], mine[mine["setting"] == CORRECTED]
    now_b, ref_setting = reference_runs(cell, setting)
    before_b = cell[(cell["variant"] == BASE) & (cell["setting"] == CORRECTED)]
    seeds = sorted(set.intersection(*(set(r["seed"]) for r in (now_v, before_v, now_b, before_b))))
    # a gain pairs only runs that trained the backbone alike (a retrained base never meets an older variant)
    seeds, unlike_now = alike_seeds(pd.concat([now_v, now_b]), variant, BASE, seeds)
    seeds, unlike_before = alike_seeds(pd.concat([before_v, before_b]), variant, BASE, seeds)
    unlike = "; ".join(n for n in (unlike_now, unlike_before) if n)
    row = {"variant": variant, "setting": setting, "factors": "+".join(setting_factors(setting)),
           "reference": BASE, "reference_setting": ref_setting, "n_seeds": len(seeds)}
    if not seeds:
        return {**row, "n_users": 0,
                "note": unlike or "no seed of the variant and base under both this setting and corrected"}
    now, before = user_gain(now_v, now_b, seeds, load).align(user_gain(before_v, before_b, seeds, load), join="inner")
    _, p_w, note_w = wilcoxon_test(now.to_numpy(), before.to_numpy())
    _, p_t, note_t = seed_ttest(seed_gain(now_v, now_b, seeds), seed_gain(before_v, before_b, seeds))
    zeros = np.zeros(len(now))
    return {**row, "n_users": len(now), "gain_corrected": before.mean(),
            **dict(zip(("gain_corrected_ci_low", "gain_corrected_ci_high"), bootstrap_ci(before, zeros, cfg))),
            "gain": now.mean(), **dict(zip(("gain_ci_low", "gain_ci_high"), bootstrap_ci(now, zeros, cfg))),
            "delta_gain": (now - before).mean(),
            **dict(zip(("delta_gain_ci_low", "delta_gain_ci_high"), bootstrap_ci(now, before, cfg))),
            "p_wilcoxon": p_w, "p_ttest": p_t, "note": "; ".join(n for n in (unlike, note_w, note_t) if n)}


def cell_settings(cell: pd.DataFrame) -> list[str]:
    """The settings compared with corrected in one dataset/backbone: with-<factor> in the order the
    runs recorded (rung_index), then faithful."""
    ranked = cell[cell["setting"].str.startswith(WITH)].sort_values(["rung_index", "setting"], kind="stable")
    found = list(dict.fromkeys(ranked["setting"]))
    return found + ([FAITHFUL] if (cell["setting"] == FAITHFUL).any() else [])


def protocol_factors_tidy(runs: pd.DataFrame, cfg: StatsConfig = StatsConfig()) -> pd.DataFrame:
    """Every row of the protocol_factors table (see the module docstring)."""
    frame = settings_frame(runs)
    rows = []
    for (dataset, backbone), cell in frame.groupby(CELL, sort=True):
        load = functools.cache(lambda run_dir: load_user_ndcg(run_dir, cfg.k))
        for setting in cell_settings(cell):
            variants = sorted(set(cell.loc[(cell["setting"] == setting) & (cell["variant"] != BASE), "variant"]))
            rows += [{"dataset": dataset, "backbone": backbone, **setting_row(cell, v, setting, load, cfg)}
                     for v in variants if ((cell["variant"] == v) & (cell["setting"] == CORRECTED)).any()]
    tidy = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return add_holm(tidy, family=tuple(CELL)) if len(tidy) else tidy


def protocol_factors_table(runs: pd.DataFrame, cfg: StatsConfig = StatsConfig()) -> Table:
    """The protocol_factors table (see the module docstring); empty when no variant ran under
    corrected and under another setting."""
    tidy = protocol_factors_tidy(runs, cfg)
    title = "MLTFR's own protocol factors on top of the corrected protocol"
    if tidy.empty:
        return empty_table("protocol_factors", tidy.reindex(columns=[*COLUMNS, "p_wilcoxon_holm", "p_ttest_holm",
                                                                     "mark"]), title, NO_SETTINGS)
    display = tidy[[*CELL, "variant", "setting"]].astype(str)
    display["n"] = [f"{n:.0f}" for n in tidy["n_seeds"]]
    display["base runs"] = tidy["reference_setting"]
    for label, col in (("gain, corrected", "gain_corrected"), ("gain, setting", "gain"), ("Δ gain", "delta_gain")):
        display[f"{label} [95% CI]"] = [ci_text(*v) for v in
                                        tidy[[col, f"{col}_ci_low", f"{col}_ci_high"]].astype(float).to_numpy()]
    display["p Wilcoxon (Holm)"] = [format_p(p, m) for p, m in zip(tidy["p_wilcoxon_holm"], tidy["mark"])]
    display["p t-test (Holm)"] = [format_p(p) for p in tidy["p_ttest_holm"]]
    display["note"] = tidy["note"].fillna("").astype(str)
    caption = with_run_settings(
        f"{title}: each setting (with-<factor>: the corrected protocol with that factor set back to its "
        "faithful value; faithful: every factor at once) against the corrected protocol, on the n seeds "
        "the variant and base ran under both (matched seeds). gain = variant - base in per-user test "
        "NDCG@10 (seeds averaged per user, users paired by id); Δ gain = gain(setting) - gain(corrected) "
        "per user; 95% bootstrap CIs resample users; Wilcoxon over users and paired t-test over the "
        "per-seed gains, Holm-corrected per dataset/backbone. base runs: the setting base ran under; "
        "evaluation noise and pooling act only inside the LLM branch, which base lacks, so base's "
        "corrected runs stand in for them (its runs would be the same) and Δ gain is the variant's own "
        "change.", compared_runs(runs, tidy))
    return Table("protocol_factors", tidy, display, None, caption)


def compared_runs(runs: pd.DataFrame, tidy: pd.DataFrame) -> pd.DataFrame:
    """The runs the rows of `tidy` compare: their variants and base, under corrected and the settings."""
    frame = settings_frame(runs)
    cells = tidy[CELL].drop_duplicates()
    frame = frame.merge(cells, on=CELL)
    keep = frame["variant"].isin({*tidy["variant"], BASE}) & frame["setting"].isin({*tidy["setting"], CORRECTED})
    return frame[keep]
