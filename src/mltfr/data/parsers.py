"""Parsers for the raw interaction formats, vectorised with pandas.

Every parser returns an `interactions` frame, one row per interaction in file order:
    user (str), item (str), rating (float64, NaN when the format has none),
    timestamp (float64, NaN when the format has none; exact for integers below 2**53)
Files ending in .gz are read transparently; a .zip is read through its `member`.
A malformed line raises DataError naming the file, the 1-based line number and the fix.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
import re
import zipfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import pandas as pd

from mltfr.errors import DataError

RECBOLE_FIELDS = {"user_id": "user", "item_id": "item", "rating": "rating", "timestamp": "timestamp"}


def parse_file(path: str | Path, fmt: str, columns: list[str] | None = None,
               member: str | None = None) -> pd.DataFrame:
    """Parse one raw file of format `fmt` into an interactions frame."""
    parsers = {"amazon-csv": lambda f, n: _parse_amazon_csv(f, n, columns),
               "movielens-dat": _parse_movielens_dat, "recbole-inter": _parse_recbole_inter,
               "user-item-pairs": _parse_user_item_pairs, "mltfr-pair": _parse_mltfr_pair}
    if fmt not in parsers:
        raise DataError(f"{path}: unknown format {fmt!r}; use one of {', '.join(parsers)}")
    name = str(path)
    try:
        with open_raw(Path(path), member) as (fh, name):
            frame = parsers[fmt](fh, name)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:      # corrupt .gz / .zip, read error
        raise DataError(f"{name}: cannot read ({exc}); if it was downloaded, delete it and rerun "
                        f"`mltfr prepare`, otherwise restore the file") from None
    if frame.empty:
        raise DataError(f"{name}: no interactions (empty file); check the file or the source")
    return frame


@contextlib.contextmanager
def open_raw(path: Path, member: str | None) -> Iterator[tuple[IO[bytes], str]]:
    """A binary stream of the file (decompressing .gz, or a .zip member) and its display name."""
    if not path.is_file():
        raise DataError(f"{path}: raw file not found; check the registry's `source`")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            member = _zip_member(zf, path, member)
            with zf.open(member) as fh:
                yield fh, f"{path}!{member}"
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        yield fh, str(path)


def _zip_member(zf: zipfile.ZipFile, path: Path, member: str | None) -> str:
    names = [n for n in zf.namelist() if not n.endswith("/")]
    if member is None and len(names) == 1:
        return names[0]
    if member not in names:
        raise DataError(f"{path}: zip member {member!r} not found; set `source.member` to one "
                        f"of: {', '.join(names[:20])}")
    return member


def read_fields(fh: IO[bytes], name: str, sep: str, n_fields: int, first_line: int = 1,
                required: list[int] | None = None) -> pd.DataFrame:
    """Split the remaining lines into exactly `n_fields` string columns; index = 1-based line
    number (`first_line` = the number of the stream's next line, 2 after a consumed header).

    Blank lines are dropped; a line with too few or too many fields, or an empty field among
    `required` (default: all), is a DataError.
    """
    try:
        # dtype=object: plain Python strings, much faster here than pandas' Arrow strings
        df = pd.read_csv(fh, sep=sep, header=None, dtype=object, keep_default_na=False, na_values=[],
                         skip_blank_lines=False, quoting=csv.QUOTE_NONE,
                         encoding="utf-8")
    except pd.errors.EmptyDataError:
        return pd.DataFrame({i: pd.Series(dtype=object) for i in range(n_fields)})
    except pd.errors.ParserError as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f"line {int(line.group(1)) + first_line - 1}" if line else "a line"
        raise DataError(f"{name}: {where}: malformed ({str(exc).split('error: ')[-1]}); "
                        f"expected {n_fields} fields; fix or delete the line") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text ({exc}); re-encode the file as UTF-8") from None
    df.index = np.arange(first_line, len(df) + first_line)
    df = df[~_empty(df, range(df.shape[1])).all(axis=1)]          # drop blank lines
    _check_field_count(df, name, n_fields, list(range(n_fields)) if required is None else required)
    return df.iloc[:, :n_fields]


def _check_field_count(df: pd.DataFrame, name: str, n_fields: int, required: list[int]) -> None:
    if df.empty:
        return
    if df.shape[1] > n_fields:
        extra = ~_empty(df, range(n_fields, df.shape[1])).all(axis=1)
        if extra.any():
            line = int(df.index[np.argmax(extra)])
            raise DataError(f"{name}: line {line}: more than {n_fields} fields; fix or delete the line")
    short = _empty(df, required).any(axis=1) if df.shape[1] >= n_fields else None
    if short is None or short.any():
        line = int(df.index[0] if short is None else df.index[np.argmax(short)])
        raise DataError(f"{name}: line {line}: fewer than {n_fields} fields (or an empty field); "
                        f"fix or delete the line")


def _empty(df: pd.DataFrame, columns) -> np.ndarray:
    """(rows, len(columns)) bool: which fields are empty strings (numpy, fast on object columns)."""
    return np.stack([df.iloc[:, c].to_numpy() == "" for c in columns], axis=1)


def to_number(col: pd.Series, name: str, what: str) -> np.ndarray:
    """Parse a string column as float64; the first non-number is a DataError with its line."""
    try:
        values = col.to_numpy().astype(np.float64)             # fast path: all numbers
    except (ValueError, TypeError):
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{name}: line {col.index[i]}: {what} {col.iloc[i]!r} is not a number; "
                        f"fix or delete the line")
    return values


def _frame(user, item, rating=None, timestamp=None) -> pd.DataFrame:
    n = len(user)
    nan = np.full(n, np.nan)
    return pd.DataFrame({"user": np.asarray(user, dtype=object), "item": np.asarray(item, dtype=object),
                         "rating": nan if rating is None else rating,
                         "timestamp": nan if timestamp is None else timestamp})


def _parse_amazon_csv(fh, name: str, columns: list[str] | None) -> pd.DataFrame:
    if not columns or "user" not in columns or "item" not in columns:
        raise DataError(f"{name}: amazon-csv needs `columns` naming user and item, e.g. "
                        f"[user, item, rating, timestamp] (2014) or [item, user, rating, timestamp] (2018)")
    df = read_fields(fh, name, ",", len(columns))
    col = {c: df.iloc[:, i] for i, c in enumerate(columns) if c != "skip"}
    return _frame(col["user"], col["item"],
                  to_number(col["rating"], name, "rating") if "rating" in col else None,
                  to_number(col["timestamp"], name, "timestamp") if "timestamp" in col else None)


def _parse_movielens_dat(fh, name: str) -> pd.DataFrame:
    # `::` needs pandas' slow python engine; splitting on `:` keeps the C engine, and the
    # empty fields between the doubled colons must then be empty.
    df = read_fields(fh, name, ":", 7, required=[0, 2, 4, 6])
    if (df.iloc[:, [1, 3, 5]] != "").to_numpy().any():
        line = int(df.index[np.argmax((df.iloc[:, [1, 3, 5]] != "").to_numpy().any(axis=1))])
        raise DataError(f"{name}: line {line}: expected UserID::MovieID::Rating::Timestamp; "
                        f"fix or delete the line")
    return _frame(df.iloc[:, 0], df.iloc[:, 2], to_number(df.iloc[:, 4], name, "rating"),
                  to_number(df.iloc[:, 6], name, "timestamp"))


def _parse_recbole_inter(fh, name: str) -> pd.DataFrame:
    header = fh.readline().decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
    fields = [h.split(":")[0] for h in header]
    if "user_id" not in fields or "item_id" not in fields:
        raise DataError(f"{name}: line 1: header {header} lacks user_id:token and item_id:token; "
                        f"fix the header, e.g. `user_id:token<TAB>item_id:token<TAB>timestamp:float`")
    df = read_fields(fh, name, "\t", len(fields), first_line=2)
    col = {RECBOLE_FIELDS[f]: df.iloc[:, i] for i, f in enumerate(fields) if f in RECBOLE_FIELDS}
    return _frame(col["user"], col["item"],
                  to_number(col["rating"], name, "rating") if "rating" in col else None,
                  to_number(col["timestamp"], name, "timestamp") if "timestamp" in col else None)


def _parse_user_item_pairs(fh, name: str) -> pd.DataFrame:
    df = read_fields(fh, name, r"\s+", 2)
    return _frame(df.iloc[:, 0], df.iloc[:, 1])


def _parse_mltfr_pair(fh, name: str) -> pd.DataFrame:
    """`uid<TAB>:<TAB>item<TAB>item...`: one user per line, items in time order."""
    users, items = [], []
    text = io.TextIOWrapper(fh, encoding="utf-8")
    try:
        for lineno, line in enumerate(text, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 3 or parts[1] != ":":
                raise DataError(f"{name}: line {lineno}: expected `uid<TAB>:<TAB>item...` with at "
                                f"least one item; fix or delete the line")
            users.extend([parts[0]] * (len(parts) - 2))
            items.extend(parts[2:])
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text ({exc}); re-encode the file as UTF-8") from None
    return _frame(users, items)
