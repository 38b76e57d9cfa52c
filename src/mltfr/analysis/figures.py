"""Study figures (seaborn, Agg backend) written as PNG and PDF under figures/.

Every figure of outputs.FIGURES is always written: a block without runs gives a figure with a
centred "no runs for this block" note, so workflow outputs exist whatever the config runs.
Error bars: 95% CIs are seaborn's bootstrap over seeds (seed=0, so redrawing is reproducible);
"sd" bars are the standard deviation of per-seed paired gains.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mltfr.analysis.blocks import ABLATIONS, BASE, FULL, display_name, parse_variant  # noqa: E402
from mltfr.analysis.collect import diagnostics_frame, sensitivity_runs  # noqa: E402
from mltfr.analysis.demonstration import demonstration_label  # noqa: E402
from mltfr.analysis.null_gains import THRESHOLDS, faithful_runs  # noqa: E402
from mltfr.analysis.tables import NO_RUNS, paired_gain, protocol_table  # noqa: E402
from mltfr.io import atomic_path  # noqa: E402

CI95 = ("ci", 95)
FACET = {"height": 3.0, "aspect": 1.3}
TOP_TOKENS = 10
BANNER_POINTS = 9   # font size of the demonstration banner
TOKEN_FONT = "DejaVu Sans"   # the figures' font; installed system fonts are its fallbacks for tokens


def save_figure(fig: plt.Figure, folder: str | Path, name: str) -> list[Path]:
    """<folder>/<name>.png and .pdf, atomically; the PDF carries no date so reruns are identical."""
    paths = [Path(folder) / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        with atomic_path(path) as tmp:
            meta = {"CreationDate": None} if path.suffix == ".pdf" else {}
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight", metadata=meta)
    plt.close(fig)
    return paths


def stamp_demonstration(fig: plt.Figure, runs: pd.DataFrame) -> plt.Figure:
    """A red banner above the figure with the demonstration label of the runs it draws, if any
    (a saved figure's tight bounding box takes the banner in)."""
    label = demonstration_label(runs)
    if label:
        width = max(40, int(fig.get_figwidth() * 72 / (BANNER_POINTS * 0.62)))   # characters per line
        fig.text(0.5, 1.0, textwrap.fill(label, width), ha="center", va="bottom", color="red",
                 fontsize=BANNER_POINTS, fontweight="bold")
    return fig


def empty_figure(title: str) -> plt.Figure:
    """A small figure that says its block has no runs."""
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.text(0.5, 0.5, f"{title}\n{NO_RUNS}", ha="center", va="center", fontsize=12)
    ax.set_axis_off()
    return fig


def _titles(grid) -> None:
    """Panel titles as bare names ('corrected · alpha'), not 'protocol = corrected | ...'."""
    parts = (["{row_name}"] if grid.row_names else []) + (["{col_name}"] if grid.col_names else [])
    template = " · ".join(parts)
    grid.set_titles(template=template, row_template=template, col_template=template)


def _zero_line(grid) -> None:
    for ax in grid.axes.flat:
        ax.axhline(0, color="0.3", lw=0.8, zorder=0)


def _rotate(grid) -> None:
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


@contextlib.contextmanager
def seeded_global_numpy(seed: int = 0):
    """seaborn's stripplot jitters with NumPy's global RNG (it takes no seed): seed it for the
    drawing, then give back the caller's state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def single_llm_gains_figure(runs: pd.DataFrame) -> plt.Figure:
    """Relative NDCG@10 gain of each single LLM over base: bars (sd over seeds) + per-seed points."""
    single = runs[runs["block"].isin(["direct", "filter"])]
    data = paired_gain(runs, single, BASE).dropna(subset=["gain_pct"])
    if data.empty:
        return empty_figure("Single-LLM injection gains")
    data["panel"] = data["backbone"] + " · " + data["block"]
    order, hue_order = sorted(data["llm"].unique()), sorted(data["dataset"].unique())
    grid = sns.catplot(data, x="llm", y="gain_pct", hue="dataset", col="panel", row="protocol",
                       kind="bar", errorbar="sd", order=order, hue_order=hue_order, alpha=0.6,
                       sharey=False, **FACET)
    with seeded_global_numpy():   # the points' jitter: the same figure bytes on every rebuild
        grid.map_dataframe(sns.stripplot, x="llm", y="gain_pct", hue="dataset", order=order,
                           hue_order=hue_order, dodge=True, palette="dark:0.2", size=3, legend=False)
    _zero_line(grid)
    grid.set_axis_labels("LLM", "NDCG@10 gain over base (%)")
    _titles(grid)
    return grid.figure


def main_comparison_figure(runs: pd.DataFrame) -> plt.Figure:
    """Test NDCG@10 of base, single-LLM and MLTFR variants, mean with 95% CI over seeds; a
    backbone run only as base (pop, sasrec-ce) is a reference line in every panel of its dataset,
    so the popularity floor reads on the same axis as the models it is a floor for."""
    data = runs[runs["block"].isin(["base", "direct", "filter", "mltfr"])]
    if data.empty:
        return empty_figure("Main comparison")
    has_llm = data.groupby("backbone")["variant"].transform(lambda v: bool((v != BASE).any()))
    panels, references = (data[has_llm], data[~has_llm]) if has_llm.any() else (data, data.iloc[:0])
    protocols = sorted(data["protocol"].unique())
    palette = dict(zip(protocols, sns.color_palette(n_colors=len(protocols))))
    grid = sns.catplot(panels, x="variant", y="test_ndcg@10", hue="protocol", col="dataset",
                       row="backbone", kind="point", errorbar=CI95, seed=0,
                       # seaborn divides by (levels - 1) when dodging: no dodge for one protocol
                       dodge=0.3 if panels["protocol"].nunique() > 1 else False,
                       linestyle="none", order=sorted(panels["variant"].unique()),
                       hue_order=protocols, palette=palette, sharey=False, **FACET)
    _reference_lines(grid, references, palette)
    _rotate(grid)
    grid.set_axis_labels("", "test NDCG@10")
    _titles(grid)
    return grid.figure


REFERENCE_STYLES = ("--", ":", "-.")   # one line style per reference backbone


def _reference_lines(grid, references: pd.DataFrame, palette: dict) -> None:
    """A labelled horizontal line at each reference backbone's mean over seeds, per protocol
    (its colour), in every panel of the dataset (the grid's columns)."""
    means = references.groupby(["dataset", "backbone", "protocol"])["test_ndcg@10"].mean()
    styles = dict(zip(sorted(references["backbone"].unique()), itertools.cycle(REFERENCE_STYLES)))
    for (_, dataset), ax in grid.axes_dict.items():
        for (ref_dataset, backbone, protocol), mean in means.items():
            if ref_dataset == dataset:
                ax.axhline(mean, color=palette[protocol], ls=styles[backbone], lw=1, zorder=0)
                # at the left edge, above the line: left of the first variant, clear of the legend
                ax.text(0.01, mean, backbone, transform=ax.get_yaxis_transform(), ha="left",
                        va="bottom", fontsize=7, color=palette[protocol])


def ablations_figure(runs: pd.DataFrame) -> plt.Figure:
    """Change of NDCG@10 of each ablation relative to full MLTFR (%), paired by seed."""
    data = paired_gain(runs, runs[runs["variant"].isin(ABLATIONS)], FULL).dropna(subset=["gain_pct"])
    if data.empty:
        return empty_figure("Ablations")
    grid = sns.catplot(data, x="variant", y="gain_pct", hue="dataset", col="backbone",
                       row="protocol", kind="bar", errorbar="sd", order=sorted(data["variant"].unique()),
                       hue_order=sorted(data["dataset"].unique()), sharey=False, **FACET)
    _zero_line(grid)
    _rotate(grid)
    grid.set_axis_labels("", "NDCG@10 change vs MLTFR (%)")
    _titles(grid)
    return grid.figure


def sensitivity_figure(runs: pd.DataFrame) -> plt.Figure:
    """NDCG@10 against each sensitivity parameter's value (one panel per parameter), 95% CI."""
    data = sensitivity_runs(runs)
    if data.empty:
        return empty_figure("Sensitivity")
    grid = sns.relplot(data, x="value", y="test_ndcg@10", hue="dataset", style="protocol",
                       col="param", row="backbone", kind="line", errorbar=CI95, seed=0,
                       marker="o", hue_order=sorted(data["dataset"].unique()),
                       col_order=sorted(data["param"].unique()),
                       facet_kws={"sharex": False, "sharey": False}, **FACET)
    grid.set_axis_labels("parameter value", "test NDCG@10")
    _titles(grid)
    return grid.figure


def router_weights_figure(interp: list[tuple[dict, dict]]) -> plt.Figure:
    """Mean router weight per LLM in full MLTFR runs (sd over seeds)."""
    rows = [{**keys, "llm": llm, "weight": float(w)} for keys, item in interp
            if keys["variant"] == FULL for llm, w in (item.get("router_weights") or {}).items()]
    if not rows:
        return empty_figure("Router weight per LLM")
    data = pd.DataFrame(rows)
    grid = sns.catplot(data, x="llm", y="weight", hue="dataset", col="backbone", row="protocol",
                       kind="bar", errorbar="sd", order=sorted(data["llm"].unique()),
                       hue_order=sorted(data["dataset"].unique()), **FACET)
    _rotate(grid)
    grid.set_axis_labels("LLM", "mean router weight")
    _titles(grid)
    return grid.figure


@functools.cache
def token_fonts() -> tuple[tuple[str, ...], frozenset[int]]:
    """Font families for token labels (DejaVu Sans, then every font installed on the system, as
    fallbacks) and the code points they cover. Matplotlib's other bundled fonts are left out: the
    TeX and STIX ones map code points to symbols, Last Resort draws boxes."""
    from matplotlib import font_manager

    bundled = Path(matplotlib.get_data_path()) / "fonts"
    fonts = [f for f in font_manager.fontManager.ttflist
             if f.name == TOKEN_FONT or not Path(f.fname).is_relative_to(bundled)]
    covered: set[int] = set()
    for font in fonts:
        try:
            covered.update(font_manager.get_font(font.fname).get_charmap())
        except (OSError, RuntimeError):   # an unreadable font file: it covers nothing
            continue
    families = dict.fromkeys([TOKEN_FONT, *sorted(f.name for f in fonts)])
    return tuple(families), frozenset(covered)


def printable_token(token: str) -> str:
    """A token string the figure can draw: word-start markers shown as '_', every character no
    installed font has written as its code point ('U+09AE'), never as a Python escape."""
    text = str(token).replace("Ġ", "_").replace("▁", "_").replace("Ċ", "\\n")
    covered = token_fonts()[1]
    label = "".join(ch if ord(ch) in covered else f"\0U+{ord(ch):04X}\0" for ch in text)
    return re.sub("\0+", " ", label.strip("\0")) or "''"   # one space between code points


def top_tokens_frame(interp: list[tuple[dict, dict]], top: int = TOP_TOKENS) -> pd.DataFrame:
    """Selection counts per (dataset, llm, token) summed over full-MLTFR runs; top `top` each."""
    rows = [{"dataset": keys["dataset"], "llm": llm, "token": printable_token(tok), "count": int(n)}
            for keys, item in interp if keys["variant"] == FULL
            for llm, pairs in (item.get("top_tokens") or {}).items() for tok, n, *_ in pairs]
    if not rows:
        return pd.DataFrame(columns=["dataset", "llm", "token", "count"])
    data = pd.DataFrame(rows).groupby(["dataset", "llm", "token"], as_index=False)["count"].sum()
    data = data.sort_values(["dataset", "llm", "count", "token"], ascending=[True, True, False, True])
    return data.groupby(["dataset", "llm"], sort=False).head(top).reset_index(drop=True)


def top_tokens_figure(interp: list[tuple[dict, dict]]) -> plt.Figure:
    """Most selected tokens per LLM (rows: datasets), horizontal bars of selection counts."""
    data = top_tokens_frame(interp)
    if data.empty:
        return empty_figure("Most selected tokens per LLM")
    datasets, llms = sorted(data["dataset"].unique()), sorted(data["llm"].unique())
    fig, axes = plt.subplots(len(datasets), len(llms), squeeze=False,
                             figsize=(3.2 * len(llms), 0.28 * TOP_TOKENS * len(datasets) + 1))
    for (i, ds), (j, llm) in ((a, b) for a in enumerate(datasets) for b in enumerate(llms)):
        part, ax = data[(data["dataset"] == ds) & (data["llm"] == llm)], axes[i, j]
        sns.barplot(part, x="count", y="token", ax=ax, color="C0")
        for label in ax.get_yticklabels():   # fallback fonts for scripts DejaVu Sans lacks
            label.set_fontfamily(token_fonts()[0])
        ax.set_title(f"{ds} · {llm}", fontsize=9)
        ax.set_ylabel("")
        ax.set_xlabel("times selected" if i == len(datasets) - 1 else "")
    fig.tight_layout()
    return fig


def training_curves_figure(epochs: pd.DataFrame) -> plt.Figure:
    """Loss and NDCG@10 per epoch of base and MLTFR (mean and 95% CI over seeds)."""
    measures = [c for c in ("loss", "valid_ndcg@10", "test_ndcg@10") if c in epochs.columns]
    keep = epochs["variant"].isin([BASE, FULL]) if len(epochs) else []
    data = epochs[keep] if len(epochs) and keep.any() else epochs
    if data.empty or not measures:
        return empty_figure("Training curves")
    long = data.melt(id_vars=["dataset", "backbone", "variant", "protocol", "seed", "epoch"],
                     value_vars=measures, var_name="measure").dropna(subset=["value"])
    long["model"] = long["backbone"] + "/" + long["variant"]
    grid = sns.relplot(long, x="epoch", y="value", hue="model", style="protocol", col="dataset",
                       row="measure", kind="line", errorbar=CI95, seed=0,
                       hue_order=sorted(long["model"].unique()), row_order=measures,
                       facet_kws={"sharey": False}, **FACET)
    _titles(grid)
    return grid.figure


def protocols_figure(runs: pd.DataFrame) -> plt.Figure:
    """Each variant's mean NDCG@10 under the faithful (x) and the corrected (y) protocol."""
    table = protocol_table(runs).tidy
    data = table[table["metric"] == "ndcg@10"] if len(table) else table
    if data.empty:
        return empty_figure("Faithful vs corrected protocol")
    data = data.assign(block=[parse_variant(v).block for v in data["variant"]])
    grid = sns.relplot(data, x="faithful", y="corrected", hue="block", style="backbone",
                       col="dataset", kind="scatter", s=50,
                       facet_kws={"sharex": False, "sharey": False}, **FACET)
    for ax in grid.axes.flat:  # points below the diagonal lose NDCG under the clean protocol
        lo, hi = min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", zorder=0)
    grid.set_axis_labels("faithful NDCG@10", "corrected NDCG@10")
    _titles(grid)
    return grid.figure


def _ladder_panel(ax_ndcg, ax_gain, part: pd.DataFrame) -> None:
    """One dataset/backbone of the ladder figure: NDCG@10 per rung as steps through faithful and
    the cumulative rungs (single-factor rungs as lone markers), and the gain over base with CIs."""
    rungs = list(dict.fromkeys(part.sort_values("rung_pos")["rung"]))
    x = pd.Series(range(len(rungs)), index=rungs)
    steps = [r for r in rungs if not r.startswith("alone-")]
    for i, (variant, rows) in enumerate(part.groupby("variant", sort=True)):
        y = rows.set_index("rung")["ndcg@10"]
        on = [r for r in steps if r in y.index]
        ax_ndcg.step(x[on], y[on], where="mid", marker="o", color=f"C{i}", label=variant)
        alone = [r for r in rungs if r not in steps and r in y.index]
        ax_ndcg.plot(x[alone], y[alone], "D", color=f"C{i}", mfc="none")
        g = rows.dropna(subset=["gain"]).set_index("rung")
        if len(g):
            err = [g["gain"] - g["gain_ci_low"], g["gain_ci_high"] - g["gain"]]
            dodge = 0.1 * (i - 1.5)   # the variants' CIs side by side, not on top of each other
            ax_gain.errorbar(x[g.index] + dodge, g["gain"], yerr=err, marker="o", capsize=3, color=f"C{i}",
                             ls="none", label=f"{variant} - {g['gain_reference'].iloc[0]}")
    ax_gain.axhline(0, color="0.3", lw=0.8, zorder=0)
    ax_gain.set_xticks(range(len(rungs)), rungs, rotation=45, ha="right")
    ax_ndcg.legend(fontsize=7)
    if ax_gain.get_legend_handles_labels()[0]:
        ax_gain.legend(fontsize=7)
    else:   # a ladder of base alone (config/cpu.yaml's budget) measures no gain
        ax_gain.text(0.5, 0.5, "no MLTFR rung:\ngain not measured", ha="center", va="center",
                     transform=ax_gain.transAxes, color="0.4")
        ax_gain.set_yticks([])


def ladder_figure(ladder: pd.DataFrame) -> plt.Figure:
    """Per dataset/backbone (columns): test NDCG@10 per rung of each variant (top) and the gain
    over base per rung with its 95% bootstrap CI over users (bottom), from the ladder table."""
    if ladder.empty:
        return empty_figure("Protocol ladder")
    panels = ladder[["dataset", "backbone"]].drop_duplicates().sort_values(["dataset", "backbone"])
    width = 0.45 * ladder["rung"].nunique() + 1.5
    fig, axes = plt.subplots(2, len(panels), squeeze=False, sharex="col", figsize=(width * len(panels), 6))
    for j, (dataset, backbone) in enumerate(panels.itertuples(index=False)):
        part = ladder[(ladder["dataset"] == dataset) & (ladder["backbone"] == backbone)]
        _ladder_panel(axes[0, j], axes[1, j], part)
        axes[0, j].set_title(f"{dataset} · {backbone}")
    axes[0, 0].set_ylabel("test NDCG@10")
    axes[1, 0].set_ylabel("gain over base (NDCG@10)")
    fig.tight_layout()
    return fig


def null_gains_figure(pairs: pd.DataFrame) -> plt.Figure:
    """Per dataset/backbone (columns) and null comparison (rows): the share of pairs whose apparent
    relative gain is at least x (complementary ECDF), NDCG@10 and HR@10, with the 1/2/5% marks."""
    if pairs.empty:
        return empty_figure("How often the authors' reporting finds a gain in nothing")
    data = pairs.assign(panel=pairs["dataset"] + " · " + pairs["backbone"], metric=pairs["metric"].str.upper())
    grid = sns.displot(data, x="gain_pct", hue="metric", col="panel", row="comparison", kind="ecdf",
                       complementary=True, facet_kws={"sharex": False}, **FACET)
    for ax in grid.axes.flat:
        for t in THRESHOLDS:
            ax.axvline(t, color="0.4", lw=0.8, ls="--", zorder=0)
        ax.axvline(0, color="0.3", lw=0.8, zorder=0)
    grid.set_axis_labels("apparent relative gain (%)", "share of pairs with gain >= x")
    _titles(grid)
    return grid.figure


DIAG_MEASURES = {"effective_share": "effective tokens / |V|", "argmax_agreement": "argmax agreement"}


def diagnostics_figure(runs: pd.DataFrame) -> plt.Figure:
    """Per dataset (columns) and variant (x): effective tokens as a share of |V| and the argmax
    agreement of training picks (rows), one bar per LLM; mean and sd over runs (seeds, backbones,
    protocols pooled)."""
    data = diagnostics_frame(runs)
    data = data.assign(effective_share=data["effective_tokens"] / data["vocab"])
    long = data.melt(id_vars=["dataset", "variant", "llm"], value_vars=list(DIAG_MEASURES),
                     var_name="measure").dropna(subset=["value"])
    if long.empty:
        return empty_figure("Filter diagnostics")
    long["measure"] = long["measure"].map(DIAG_MEASURES)
    long["variant"] = long["variant"].map(display_name)             # a positive control says so
    grid = sns.catplot(long, x="variant", y="value", hue="llm", col="dataset", row="measure",
                       kind="bar", errorbar="sd", order=sorted(long["variant"].unique()),
                       hue_order=sorted(long["llm"].unique()), col_order=sorted(long["dataset"].unique()),
                       row_order=list(DIAG_MEASURES.values()), **FACET)
    grid.set(ylim=(0, 1.1))
    for ax in grid.axes.flat:   # the values, so that a zero bar reads as 0.00, not as missing
        for bars in ax.containers:
            ax.bar_label(bars, fmt="%.2f", fontsize=6)
    _rotate(grid)
    grid.set_axis_labels("", "share")
    _titles(grid)
    return grid.figure


def figure_runs(runs: pd.DataFrame, ladder_runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The runs each figure of outputs.FIGURES draws (its demonstration label is theirs)."""
    block, variant = runs["block"], runs["variant"]
    return {
        "single_llm_gains": runs[block.isin(["base", "direct", "filter"])],
        "main_comparison": runs[block.isin(["base", "direct", "filter", "mltfr"])],
        "ablations": runs[variant.isin([FULL, *ABLATIONS])],
        "sensitivity": sensitivity_runs(runs),
        "router_weights": runs[variant == FULL],
        "top_tokens": runs[variant == FULL],
        "training_curves": runs[variant.isin([BASE, FULL])],
        "protocols": runs,
        "diagnostics": runs[variant.isin(diagnostics_frame(runs)["variant"])],
        "ladder": ladder_runs,
        "null_gains": faithful_runs(runs),
    }


def draw_figures(runs: pd.DataFrame, epochs: pd.DataFrame, interp: list, folder: str | Path,
                 ladder: pd.DataFrame | None = None, ladder_runs: pd.DataFrame | None = None,
                 null_pairs: pd.DataFrame | None = None) -> list[Path]:
    """Every figure of outputs.FIGURES into `folder`, each with a red banner when its runs are a
    demonstration; `ladder` is the ladder table's tidy frame and `ladder_runs` its runs
    (mltfr.analysis.ladder.ladder_frame), `null_pairs` the null-gain pairs
    (mltfr.analysis.null_gains.null_pairs), `runs` the protocol runs (no ladder runs)."""
    sns.set_theme(style="whitegrid", context="paper")
    figures = {
        "single_llm_gains": lambda: single_llm_gains_figure(runs),
        "main_comparison": lambda: main_comparison_figure(runs),
        "ablations": lambda: ablations_figure(runs),
        "sensitivity": lambda: sensitivity_figure(runs),
        "router_weights": lambda: router_weights_figure(interp),
        "top_tokens": lambda: top_tokens_figure(interp),
        "training_curves": lambda: training_curves_figure(epochs),
        "protocols": lambda: protocols_figure(runs),
        "diagnostics": lambda: diagnostics_figure(runs),
        "ladder": lambda: ladder_figure(ladder if ladder is not None else pd.DataFrame()),
        "null_gains": lambda: null_gains_figure(null_pairs if null_pairs is not None else pd.DataFrame()),
    }
    drawn = figure_runs(runs, ladder_runs if ladder_runs is not None else runs.iloc[:0])
    return [p for name, draw in figures.items()
            for p in save_figure(stamp_demonstration(draw(), drawn[name]), folder, name)]
