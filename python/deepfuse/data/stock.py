"""Daily prices from Yahoo Finance CSVs, as people really have them, and their windows for next-day forecasting.

Formats read (a file, or every ``*.csv`` directly inside a folder — one ticker or several):
- the finance.yahoo.com download: ``Date,Open,High,Low,Close,Adj Close,Volume``; ``null`` in every field on days
  without a quote (holidays, exchange outages); often no newline after the last row; the ticker is the file name
  (``^GSPC.csv`` → ``^GSPC``).
- ``yfinance``'s ``download(...).to_csv()``: three header lines — ``Price,<fields>``, ``Ticker,<tickers>``,
  ``Date,,,...`` — columns in alphabetical order, with or without ``Adj Close``, empty fields for missing values,
  one or several tickers per file.
Rows whose prices are ``null`` / empty / ``nan`` are skipped and counted. A value that is not a number, or a date
that is not ``YYYY-MM-DD`` (a time of day after it is accepted), is a ``DataError`` naming the file and the line.
Rows are sorted by date; the same date twice is an error.

Features of day t (all from that day and the one before, scale-free so tickers at $20 and at $60,000 share one
model): the close's log return ``log(C_t / C_{t-1})``, the day's shape ``log(H_t / C_t)``, ``log(L_t / C_t)``,
``log(O_t / C_t)``, and the volume's change ``log1p(V_t) - log1p(V_{t-1})``.

Target: the next day's log return of the close, ``log(C_{t+1} / C_t)``, not the close itself. Prices wander far
outside the range seen in training (AAPL went from $24 to $210 over the yfinance sample), so a network fitted to
scaled prices of the training years must extrapolate on the test years, while returns keep roughly one
distribution over time and across tickers. The predicted close is ``C_t * exp(predicted return)``, and a predicted
return of 0 is exactly the naive last-value forecast, which makes the comparison with that baseline direct. The
close is Yahoo's ``Close`` (split-adjusted; ``Adj Close`` is not used, so the metrics are on the quoted price).

Splits are chronological and shared by every ticker: the target dates of all windows are pooled and cut at two
dates, so training targets all precede validation targets, which all precede test targets — no shuffle across
time, and no test-period value in any training input. The normaliser (per-feature mean and standard deviation,
and the target's scale) is fitted on days before the validation cut only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from deepfuse.data.errors import DataError

REQUIRED = ("Open", "High", "Low", "Close", "Volume")
KNOWN = (*REQUIRED, "Adj Close")
FEATURES = ("return", "high", "low", "open", "volume")
MISSING = {"null", "", "nan", "NaN", "NA", "N/A"}
CLASSIC_HEADER = "Date,Open,High,Low,Close,Adj Close,Volume"


@dataclass
class PriceTable:
    """One ticker's daily rows, ascending by date."""

    path: Path
    ticker: str
    dates: np.ndarray  # datetime64[D]
    columns: dict[str, np.ndarray]  # float64, one entry per REQUIRED column (and Adj Close when present)
    lines: np.ndarray  # the line of each row in the file
    skipped: int = 0  # rows skipped for null / missing prices

    def __len__(self) -> int:
        return len(self.dates)


# --- reading -----------------------------------------------------------------------------------------------
def _fields(line: str) -> list[str]:
    return [f.strip() for f in line.rstrip("\r").split(",")]


def _parse_date(text: str, path: Path, line: int) -> np.datetime64:
    try:
        day = dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text).date()
    except ValueError:
        raise DataError(path, f"bad date {text!r} (expected YYYY-MM-DD)", line=line) from None
    return np.datetime64(day, "D")


def _header(rows: list[tuple[int, list[str]]], path: Path) -> tuple[list[tuple[str, str]], int]:
    """([(field, ticker) per data column], index of the first data row) from either Yahoo header."""
    number, first = rows[0]
    if first[0] == "Price" and len(rows) > 1 and rows[1][1][0] == "Ticker":
        tickers = rows[1][1]
        if len(tickers) != len(first):
            raise DataError(
                path, f"the Ticker line has {len(tickers)} fields, the Price line {len(first)}", line=rows[1][0]
            )
        start = 2
        if len(rows) > 2 and rows[2][1][0] == "Date" and not any(rows[2][1][1:]):
            start = 3
        return list(zip(first[1:], tickers[1:], strict=True)), start
    if first[0].lower() != "date":
        raise DataError(
            path,
            f"not a Yahoo Finance CSV: the first line is {','.join(first)[:80]!r}, expected "
            f"{CLASSIC_HEADER!r} or yfinance's Price/Ticker/Date header lines",
            line=number,
        )
    return [(name, path.stem) for name in first[1:]], 1


def _canonical(name: str) -> str | None:
    for known in KNOWN:
        if name.lower().replace("_", " ") == known.lower():
            return known
    return None


def read_csv(path: str | Path) -> list[PriceTable]:
    """The tickers of one Yahoo / yfinance CSV file, one table each."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise DataError(path, f"cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise DataError(
            path, f"not a text (UTF-8) file: byte 0x{error.object[error.start]:02x} at offset {error.start}"
        ) from None
    rows = [(number, _fields(line)) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not rows:
        raise DataError(path, "empty file")
    columns, start = _header(rows, path)
    header_line = rows[start - 1][0]
    tickers: dict[str, dict[str, int]] = {}
    for index, (name, ticker) in enumerate(columns, start=1):
        canonical = _canonical(name)
        if canonical is not None:
            tickers.setdefault(ticker, {})[canonical] = index
    if not tickers:
        raise DataError(path, f"no price columns: found {[name for name, _ in columns]}", line=header_line)
    tables = []
    for ticker, where in tickers.items():
        missing = [c for c in REQUIRED if c not in where]
        if missing:
            raise DataError(
                path, f"no {', '.join(missing)} column for {ticker}: expected {', '.join(REQUIRED)}", line=header_line
            )
        tables.append(_read_rows(path, ticker, where, rows[start:], len(columns) + 1))
    return tables


def _read_rows(path: Path, ticker: str, where: dict[str, int], rows, width: int) -> PriceTable:
    dates, lines, values, skipped = [], [], {name: [] for name in where}, 0
    for number, fields in rows:
        if len(fields) != width:
            raise DataError(path, f"{len(fields)} fields, the header has {width}", line=number)
        day = _parse_date(fields[0], path, number)
        row = {}
        for name, index in where.items():
            text = fields[index]
            if text in MISSING:
                row = None
                break
            try:
                value = float(text)
            except ValueError:
                raise DataError(path, f"{name} is {text!r}, not a number", line=number) from None
            if not np.isfinite(value) or (value <= 0 and name != "Volume") or value < 0:
                raise DataError(path, f"{name} is {text}: prices must be positive numbers, volumes >= 0", line=number)
            row[name] = value
        if row is None:
            skipped += 1
            continue
        dates.append(day)
        lines.append(number)
        for name, value in row.items():
            values[name].append(value)
    dates, lines = np.array(dates, dtype="datetime64[D]"), np.array(lines, dtype=np.int64)
    order = np.argsort(dates, kind="stable")
    dates, lines = dates[order], lines[order]
    repeated = np.nonzero(dates[1:] == dates[:-1])[0]
    if len(repeated):
        i = repeated[0]
        raise DataError(
            path, f"{ticker}: date {dates[i + 1]} appears twice (also on line {lines[i]})", line=int(lines[i + 1])
        )
    columns = {name: np.asarray(v, dtype=np.float64)[order] for name, v in values.items()}
    return PriceTable(path, ticker, dates, columns, lines, skipped)


def read_prices(path: str | Path) -> list[PriceTable]:
    """A CSV file, or every ``*.csv`` directly inside a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and not p.name.startswith("."))
        if not files:
            raise DataError(path, "holds no .csv files (expected Yahoo Finance downloads, one or more)")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(path, "no such file or folder (expected a Yahoo Finance CSV or a folder of them)")
    tables = [table for file in files for table in read_csv(file)]
    names = [t.ticker for t in tables]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(
            path,
            f"ticker {twice[0]} comes from more than one file: "
            f"{', '.join(str(t.path) for t in tables if t.ticker == twice[0])}",
        )
    return tables


# --- features, windows, splits -----------------------------------------------------------------------------
def daily_features(table: PriceTable) -> np.ndarray:
    """(len(table), 5) features of each day (FEATURES); row 0 is NaN (it has no day before)."""
    c = table.columns
    close = c["Close"]
    features = np.full((len(table), len(FEATURES)), np.nan)
    features[1:, 0] = np.log(close[1:] / close[:-1])
    features[:, 1] = np.log(c["High"] / close)
    features[:, 2] = np.log(c["Low"] / close)
    features[:, 3] = np.log(c["Open"] / close)
    features[1:, 4] = np.diff(np.log1p(c["Volume"]))
    features[0, :] = np.nan
    return features


@dataclass
class Normaliser:
    """Per-feature mean and standard deviation, and the target's scale (its standard deviation)."""

    mean: list[float]
    std: list[float]
    target_scale: float

    def apply(self, features: np.ndarray) -> np.ndarray:
        return (features - np.asarray(self.mean)) / np.asarray(self.std)

    def to_state(self) -> dict:
        return {
            "mean": list(map(float, self.mean)),
            "std": list(map(float, self.std)),
            "target_scale": float(self.target_scale),
        }

    @classmethod
    def from_state(cls, state: dict) -> Normaliser:
        return cls(state["mean"], state["std"], state["target_scale"])


@dataclass
class Windows:
    """Windows of ``window`` days of features → the next day's return, over every ticker."""

    inputs: np.ndarray  # (N, window, F) raw features
    target: np.ndarray  # (N,) next-day log return
    previous_close: np.ndarray  # (N,) close of the day before the window's last day
    last_close: np.ndarray  # (N,) close of the window's last day
    next_close: np.ndarray  # (N,) close of the target day
    dates: np.ndarray  # (N,) the target day
    tickers: list[str] = field(default_factory=list)

    def select(self, mask: np.ndarray) -> Windows:
        return Windows(
            self.inputs[mask],
            self.target[mask],
            self.previous_close[mask],
            self.last_close[mask],
            self.next_close[mask],
            self.dates[mask],
            [t for t, keep in zip(self.tickers, mask, strict=True) if keep],
        )


def make_windows(tables: list[PriceTable], window: int) -> Windows:
    """Every window of each ticker (never across tickers) with a known next day."""
    parts = []
    for table in tables:
        features, close = daily_features(table), table.columns["Close"]
        ends = np.arange(window, len(table) - 1)  # the window covers days end-window+1 .. end (day 0 has no return)
        if len(ends) == 0:
            continue
        index = ends[:, None] + np.arange(-window + 1, 1)[None, :]
        parts.append(
            Windows(
                features[index],
                np.log(close[ends + 1] / close[ends]),
                close[ends - 1],
                close[ends],
                close[ends + 1],
                table.dates[ends + 1],
                [table.ticker] * len(ends),
            )
        )
    if not parts:
        longest = max((len(t) for t in tables), default=0)
        raise DataError(
            tables[0].path if len(tables) == 1 else None,
            f"too few rows: a window of {window} days needs at least {window + 2} rows per ticker, the "
            f"longest series has {longest}",
        )
    return Windows(
        *(
            np.concatenate([getattr(p, k) for p in parts])
            for k in ("inputs", "target", "previous_close", "last_close", "next_close", "dates")
        ),
        [t for p in parts for t in p.tickers],
    )


def split_dates(dates: np.ndarray, val_fraction: float, test_fraction: float) -> tuple[np.datetime64, np.datetime64]:
    """(validation start, test start): the target dates cut so the last fractions of windows fall after them."""
    if not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val and test fractions must be positive and sum below 1, got {val_fraction}, {test_fraction}"
        )
    ordered = np.sort(dates)
    n = len(ordered)
    return ordered[int(n * (1 - val_fraction - test_fraction))], ordered[int(n * (1 - test_fraction))]


def fit_normaliser(tables: list[PriceTable], val_start: np.datetime64) -> Normaliser:
    """Statistics of the days before ``val_start`` (the training period) only."""
    rows, targets = [], []
    for table in tables:
        features = daily_features(table)
        before = table.dates < val_start
        rows.append(features[before][1:])  # row 0 has no return
        targets.append(features[before][1:, 0])  # the returns of training days = the training targets' scale
    rows, targets = np.concatenate(rows), np.concatenate(targets)
    if len(rows) < 2:
        raise DataError(None, "fewer than two days before the validation period: nothing to fit the normaliser on")
    std = rows.std(0)
    return Normaliser(
        rows.mean(0).tolist(), np.where(std > 0, std, 1.0).tolist(), float(targets.std()) if targets.std() > 0 else 1.0
    )


class WindowDataset(Dataset):
    """Items ``(inputs (window, F) float32 normalised, targets (4,) float64)``; targets hold the scaled return,
    then the previous, last and next close (what the metrics need); ``dates``/``tickers`` say which day."""

    def __init__(self, windows: Windows, normaliser: Normaliser) -> None:
        self.inputs = torch.from_numpy(normaliser.apply(windows.inputs).astype(np.float32))
        self.targets = torch.from_numpy(
            np.stack(
                [
                    windows.target / normaliser.target_scale,
                    windows.previous_close,
                    windows.last_close,
                    windows.next_close,
                ],
                1,
            )
        )
        self.dates, self.tickers = windows.dates, windows.tickers

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        return self.inputs[index], self.targets[index]
