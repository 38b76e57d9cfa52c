"""A study table written out: tidy CSV, Markdown and LaTeX views (bold where marked), and the
per-run table as CSV and Parquet."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from mltfr.analysis.tables import Table
from mltfr.io import atomic_path, atomic_write_text

_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def tex_escape(text: str) -> str:
    """LaTeX-safe text; ± becomes $\\pm$."""
    escaped = "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))
    return escaped.replace("±", r"$\pm$")


def _styled(table: Table, style) -> pd.DataFrame:
    """Display strings with `style(text, bold)` applied to every cell."""
    display = table.display.astype(object).fillna("").astype(str)  # pandas 3 keeps NaN through astype(str)
    bold = table.bold if table.bold is not None else pd.DataFrame(False, display.index, display.columns)
    out = display.copy()
    for col in display.columns:
        flags = bold[col] if col in bold.columns else pd.Series(False, index=display.index)
        out[col] = [style(t, bool(b) and t != "") for t, b in zip(display[col], flags)]
    return out


def render_markdown(table: Table) -> str:
    """A Markdown table (GitHub pipes) preceded by its caption."""
    if table.display.empty:
        return f"**{table.name}**: {table.caption}\n"
    body = _styled(table, lambda t, b: f"**{t}**" if b else t).to_markdown(index=False, disable_numparse=True)
    notes = "".join(f"\n> {n}\n" for n in table.notes)
    return f"**{table.name}**: {table.caption}\n\n{body}\n{notes}"


def render_latex(table: Table) -> str:
    """A LaTeX tabular (booktabs) inside a table environment with the caption."""
    if table.display.empty:
        return f"% {table.name}: {tex_escape(table.caption)}\n"
    body = _styled(table, lambda t, b: rf"\textbf{{{tex_escape(t)}}}" if b else tex_escape(t))
    body.columns = [tex_escape(c) for c in body.columns]
    tabular = body.to_latex(index=False, escape=False, column_format="l" * body.shape[1])
    return ("\\begin{table}[t]\n\\centering\n\\small\n" + tabular +
            f"\\caption{{{tex_escape(table.caption)}}}\n\\label{{tab:{table.name}}}\n\\end{{table}}\n")


def write_table(table: Table, folder: str | Path) -> list[Path]:
    """<folder>/<name>.csv (tidy numbers), .md and .tex (formatted), each written atomically."""
    folder = Path(folder)
    paths = [folder / f"{table.name}.{ext}" for ext in ("csv", "md", "tex")]
    atomic_write_text(paths[0], table.tidy.to_csv(index=False))
    atomic_write_text(paths[1], render_markdown(table))
    atomic_write_text(paths[2], render_latex(table))
    return paths


def write_runs(runs: pd.DataFrame, folder: str | Path) -> list[Path]:
    """The per-run table as <folder>/runs.csv and runs.parquet."""
    folder = Path(folder)
    csv, parquet = folder / "runs.csv", folder / "runs.parquet"
    atomic_write_text(csv, runs.to_csv(index=False))
    with atomic_path(parquet) as tmp:
        runs.to_parquet(tmp, index=False)
    return [csv, parquet]
