"""Yahoo Finance CSVs as people have them (web download, yfinance's three-line header with and without Adj Close,
several tickers), errors that name the line, and chronological splits that never let the future into training."""

import numpy as np
import pytest

from deepfuse.data import DataError
from deepfuse.data.stock import (
    FEATURES,
    daily_features,
    fit_normaliser,
    make_windows,
    read_csv,
    read_prices,
    split_dates,
)


def random_walk(days: int, seed: int = 0, start: float = 100.0):
    """(dates, open, high, low, close, volume) of a business-day random walk."""
    rng = np.random.default_rng(seed)
    dates = np.busday_offset("2020-01-01", np.arange(days), roll="forward")
    close = start * np.exp(np.cumsum(rng.normal(0, 0.02, days)))
    open_ = close * np.exp(rng.normal(0, 0.01, days))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.01, days)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.01, days)))
    volume = rng.integers(1_000_000, 9_000_000, days)
    return dates, open_, high, low, close, volume


def write_web_export(path, days=80, seed=0, null_rows=(), start=100.0):
    """finance.yahoo.com's download: 6 decimals, `null` rows, no newline at the end."""
    dates, o, h, low, c, v = random_walk(days, seed, start)
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    for i in range(days):
        if i in null_rows:
            lines.append(f"{dates[i]},null,null,null,null,null,null")
        else:
            lines.append(f"{dates[i]},{o[i]:.6f},{h[i]:.6f},{low[i]:.6f},{c[i]:.6f},{c[i] * 0.98:.6f},{v[i]}")
    path.write_text("\n".join(lines))
    return path


def write_yfinance(path, tickers=("AAPL",), days=80, adj_close=False):
    """yf.download(...).to_csv(): Price / Ticker / Date header lines, fields in alphabetical order, full repr
    floats, empty fields for missing values, a trailing newline."""
    fields = (["Adj Close"] if adj_close else []) + ["Close", "High", "Low", "Open", "Volume"]
    series = {t: random_walk(days, seed) for seed, t in enumerate(tickers)}
    columns = [(f, t) for f in fields for t in tickers]
    lines = [
        "Price," + ",".join(f for f, _ in columns),
        "Ticker," + ",".join(t for _, t in columns),
        "Date" + "," * len(columns),
    ]
    for i in range(days):
        values = []
        for f, t in columns:
            dates, o, h, low, c, v = series[t]
            value = {
                "Adj Close": c[i] * 0.97,
                "Close": c[i],
                "High": h[i],
                "Low": low[i],
                "Open": o[i],
                "Volume": v[i],
            }[f]
            values.append("" if (t != tickers[0] and i < 3) else repr(float(value)) if f != "Volume" else str(value))
        lines.append(f"{series[tickers[0]][0][i]}," + ",".join(values))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_web_export_with_null_rows_and_no_final_newline(tmp_path):
    path = write_web_export(tmp_path / "^GSPC.csv", days=40, null_rows=(5, 39))
    (table,) = read_csv(path)
    assert table.ticker == "^GSPC" and len(table) == 38 and table.skipped == 2
    assert table.lines[0] == 2 and table.lines[5] == 8  # line numbers of the file, after the skipped row
    assert sorted(table.columns) == ["Adj Close", "Close", "High", "Low", "Open", "Volume"]
    assert np.all(np.diff(table.dates.astype(np.int64)) > 0)


@pytest.mark.parametrize("adj_close", [False, True], ids=["auto_adjust", "adj_close"])
def test_yfinance_three_line_header(tmp_path, adj_close):
    (table,) = read_csv(write_yfinance(tmp_path / "AAPL.csv", adj_close=adj_close))
    dates, o, h, low, c, v = random_walk(80, 0)
    assert table.ticker == "AAPL" and len(table) == 80 and table.skipped == 0
    assert np.array_equal(table.columns["Close"], c) and np.array_equal(table.columns["Open"], o)
    assert ("Adj Close" in table.columns) == adj_close
    assert table.lines[0] == 4


def test_yfinance_several_tickers_in_one_file(tmp_path):
    tables = read_csv(write_yfinance(tmp_path / "prices.csv", tickers=("MSFT", "AAPL")))
    assert [t.ticker for t in tables] == ["MSFT", "AAPL"]
    assert [len(t) for t in tables] == [80, 77] and tables[1].skipped == 3  # AAPL's first rows are empty


def test_folder_of_files_one_ticker_each(tmp_path):
    write_web_export(tmp_path / "BTC-USD.csv", seed=1)
    write_yfinance(tmp_path / "AAPL.csv")
    (tmp_path / "notes.txt").write_text("not a csv")
    assert [t.ticker for t in read_prices(tmp_path)] == ["AAPL", "BTC-USD"]
    with pytest.raises(DataError, match="no such file"):
        read_prices(tmp_path / "missing.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .csv"):
        read_prices(tmp_path / "empty")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("2020-01-08,101.5,abc,100.1,101.0,101.0,1200", r"line 6: High is 'abc', not a number"),
        ("2020/01/08,101.5,102.0,100.1,101.0,101.0,1200", r"line 6: bad date '2020/01/08' \(expected YYYY-MM-DD\)"),
        ("2020-01-08,101.5,102.0,100.1,-3,101.0,1200", r"line 6: Close is -3: prices must be positive"),
        ("2020-01-08,101.5,102.0,100.1,101.0", r"line 6: 5 fields, the header has 7"),
        (
            "2020-01-06,101.5,102.0,100.1,101.0,101.0,1200",
            r"line 6: AAPL: date 2020-01-06 appears twice \(also on line 5\)",
        ),
    ],
    ids=["number", "date", "negative", "fields", "duplicate"],
)
def test_a_malformed_row_names_the_file_and_line(tmp_path, bad, message):
    path = write_web_export(tmp_path / "AAPL.csv", days=8)
    lines = path.read_text().split("\n")
    lines[5] = bad  # line 6 of the file
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"AAPL\.csv, " + message):
        read_csv(path)


def test_unknown_header_and_missing_columns(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("Time,Price\n2020-01-01,3\n")
    with pytest.raises(DataError, match=r"other\.csv, line 1: not a Yahoo Finance CSV"):
        read_csv(other)
    no_volume = tmp_path / "X.csv"
    no_volume.write_text("Date,Open,High,Low,Close\n2020-01-01,1,1,1,1\n")
    with pytest.raises(DataError, match=r"X\.csv, line 1: no Volume column"):
        read_csv(no_volume)


def test_reads_every_real_sample(realdata):
    folder = realdata / "stock"
    expected = {  # data rows with prices, null rows skipped (SOURCES.md)
        "yahoo_web_export/AAPL.csv": (354, 0),
        "yahoo_web_export/^GSPC.csv": (1259, 0),
        "yahoo_web_export/^NSEI.csv": (882, 1),
        "yahoo_web_export/BTC-USD.csv": (1178, 5),
        "yfinance_multiheader/AAPL.csv": (2650, 0),
        "yfinance_multiheader_adjclose/AAPL.csv": (2513, 0),
    }
    for name, (rows, skipped) in expected.items():
        (table,) = read_csv(folder / name)
        assert (len(table), table.skipped) == (rows, skipped), name
        assert not np.isnan(daily_features(table)[1:]).any()
    (btc,) = read_csv(folder / "yahoo_web_export" / "BTC-USD.csv")
    assert str(btc.dates[-1]) == "2021-09-24"  # the last line is a null row without a newline after it
    tickers = [t.ticker for t in read_prices(folder / "yahoo_web_export")]
    assert tickers == ["AAPL", "BTC-USD", "^GSPC", "^NSEI"]


def test_windows_stay_within_a_ticker_and_target_the_next_day(tmp_path):
    (table,) = read_csv(write_web_export(tmp_path / "A.csv", days=30))
    windows = make_windows([table], window=5)
    close, features = table.columns["Close"], daily_features(table)
    assert len(windows.target) == 30 - 1 - 5  # day 0 has no return, the last day no next day
    first = windows.inputs[0]
    assert np.array_equal(first, features[1:6])
    assert windows.target[0] == pytest.approx(np.log(close[6] / close[5]))
    assert (windows.last_close[0], windows.next_close[0], windows.dates[0]) == (close[5], close[6], table.dates[6])
    assert FEATURES[0] == "return" and np.allclose(features[1:, 0], np.diff(np.log(close)))
    with pytest.raises(DataError, match="too few rows"):
        make_windows([table], window=29)


def test_split_dates_checks_fractions():
    dates = np.arange(np.datetime64("2020-01-01"), np.datetime64("2020-01-11"))
    assert split_dates(dates, 0.2, 0.3) == (np.datetime64("2020-01-06"), np.datetime64("2020-01-08"))
    with pytest.raises(ValueError, match="fractions"):
        split_dates(dates, 0.5, 0.5)


def test_normaliser_uses_days_before_the_cut_only(tmp_path):
    (table,) = read_csv(write_web_export(tmp_path / "A.csv", days=50))
    cut = table.dates[30]
    normaliser = fit_normaliser([table], cut)
    features = daily_features(table)[1:30]
    assert np.allclose(normaliser.mean, features.mean(0)) and np.allclose(normaliser.std, features.std(0))
    assert normaliser.target_scale == pytest.approx(features[:, 0].std())
