"""Next-day stock prices: an LSTM regressor over windows of daily features (``deepfuse.data.stock``).

Network: ``deepfuse.nn.LSTM`` (``layers`` x ``hidden_size``) over the past ``window`` days' features (return,
high/low/open against the close, volume change), its last output → ``FusedLinear`` → the next day's log return
of the close, in units of the training period's return standard deviation. Loss: mean squared error.

Metrics (on the close, across every ticker of the split): RMSE and MAE of the predicted close
``C_t * exp(predicted return)`` and directional accuracy (up vs not up), each beside the naive last-value forecast
— tomorrow's close = today's (``naive_rmse``, ``naive_mae``; its direction is persistence: tomorrow moves the way
today did) — and their ratio (< 1 beats it). ``always_up_accuracy`` is the share of up days. Most published LSTM
stock predictors do not beat the last-value forecast, and a ratio of 0.99 over a thousand days is well inside
noise, so the comparison is tested (``deepfuse.training.significance``): Diebold-Mariano with the
Harvey-Leybourne-Newbold correction on the squared and on the absolute errors (``dm_squared_*``, ``dm_absolute_*``:
statistic, two-sided p-value, days; negative: the model's losses are smaller), and an exact McNemar test of the
model's up/down calls against always-up (``direction_vs_always_up_*``). ``verdict`` says "beats" only when p < 0.05
and the model is the better one, "not distinguishable" otherwise; ``beats_naive`` is that for the squared errors.
A period whose close never moves makes the ratios ``null`` (``ratio_reason`` says why); a training period whose
close never moves is an error (nothing to learn). A PNG shows predicted and actual closes over the test period.

Expectation: next-day returns are close to unpredictable from past prices, so an RMSE ratio near 1.0 is the honest
outcome; a ratio well below 1 on a held-out period would be a surprise worth checking for a leak.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepfuse.data import DataError
from deepfuse.data.stock import (
    FEATURES,
    Normaliser,
    WindowDataset,
    daily_features,
    fit_normaliser,
    make_windows,
    read_prices,
    split_dates,
)
from deepfuse.nn import LSTM, FusedLinear
from deepfuse.training.metrics import regression_metrics
from deepfuse.training.plots import pyplot, save_png
from deepfuse.training.significance import diebold_mariano, mcnemar_exact, verdict
from deepfuse.training.task import Data, Option, Task


class StockLSTM(nn.Module):
    def __init__(self, features: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.lstm = LSTM(features, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0)
        self.dropout = nn.Dropout(dropout)
        self.head = FusedLinear(hidden, 1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:  # (B, window, F) → (B,)
        out, _ = self.lstm(windows)
        return self.head(self.dropout(out[:, -1])).squeeze(-1)


def _ratio(value: float, baseline: float) -> float | None:
    return value / baseline if baseline > 0 else None


def close_metrics(predicted_return: np.ndarray, targets: np.ndarray) -> dict:
    """The model's and the naive forecast's errors on the close, and whether the differences are more than noise;
    targets columns: (scaled return, previous close, last close, next close). Every value is a number, a string
    or None (with a reason): never NaN."""
    previous, last, actual = targets[:, 1], targets[:, 2], targets[:, 3]
    predicted = last * np.exp(predicted_return)
    ours, naive = regression_metrics(predicted, actual), regression_metrics(last, actual)
    up, says_up = actual > last, predicted_return > 0
    direction = float((says_up == up).mean())
    persistence = float(((last > previous) == up).mean())
    metrics = {
        "rmse": ours["rmse"],
        "naive_rmse": naive["rmse"],
        "rmse_ratio": _ratio(ours["rmse"], naive["rmse"]),
        "mae": ours["mae"],
        "naive_mae": naive["mae"],
        "mae_ratio": _ratio(ours["mae"], naive["mae"]),
        "directional_accuracy": direction,
        "naive_directional_accuracy": persistence,
        "directional_ratio": _ratio(direction, persistence),
        "always_up_accuracy": float(up.mean()),
    }
    if naive["rmse"] == 0:
        metrics["ratio_reason"] = "the close never moves in this period: the naive forecast is exact, no ratio to it"
    # the same errors as the RMSE / MAE ratios (price units); at horizon 1 the test ignores the days' order, so
    # several tickers' days pooled are fine
    squared = diebold_mariano(actual - predicted, actual - last, "squared")
    absolute = diebold_mariano(actual - predicted, actual - last, "absolute")
    versus_up = mcnemar_exact(says_up == up, up)  # statistic: days only the model called right
    metrics |= squared.to_dict("dm_squared") | absolute.to_dict("dm_absolute")
    metrics |= versus_up.to_dict("direction_vs_always_up")
    metrics["beats_naive"] = squared.better == "first" and squared.p_value is not None and squared.p_value < 0.05
    # picks the checkpoint: scale-free, so one expensive ticker does not decide alone; the RMSE itself when the
    # validation closes never move (the ratio is undefined there)
    metrics["checkpoint_score"] = metrics["rmse_ratio"] if metrics["rmse_ratio"] is not None else ours["rmse"]
    metrics["verdict"] = "; ".join(
        [
            f"{verdict(squared, 'the model', 'the naive last-value forecast')} on squared errors "
            f"(Diebold-Mariano, HLN-corrected; RMSE ratio {_shown(metrics['rmse_ratio'])})",
            f"{verdict(absolute, 'it', 'naive')} on absolute errors (MAE ratio {_shown(metrics['mae_ratio'])})",
            f"{verdict(versus_up, 'its direction', 'always-up')} (accuracy {direction:.3f} vs "
            f"{metrics['always_up_accuracy']:.3f} always-up, exact McNemar; persistence {persistence:.3f})",
        ]
    )
    return metrics


def _shown(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


class StockTask(Task):
    name = "stock"
    description = "next-day stock prices (LSTM on windows of daily features), against the naive last-value forecast"
    data_help = "a Yahoo Finance CSV (web download or yfinance) or a folder of them, one or several tickers"
    metric = "checkpoint_score"  # the RMSE ratio to the naive forecast (close_metrics)
    maximize = False
    defaults = {"epochs": 20, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4}
    options = {
        "window": Option(30, "past trading days the model sees"),
        "hidden_size": Option(64, "LSTM hidden units"),
        "layers": Option(2, "LSTM layers"),
        "dropout": Option(0.2, "dropout between LSTM layers and before the head"),
        "val_fraction": Option(0.15, "share of windows (the latest before the test period) for validation"),
        "test_fraction": Option(0.15, "share of windows (the latest) for the test"),
    }

    def load_data(self, path: Path | None, config: dict, state: dict | None = None) -> Data:
        if path is None:
            raise DataError(None, f"--data is required: {self.data_help}")
        s = self.with_defaults(config)
        tables = read_prices(path)
        windows = make_windows(tables, s["window"])
        try:
            val_start, test_start = split_dates(windows.dates, s["val_fraction"], s["test_fraction"])
        except ValueError as error:
            raise DataError(None, f"--val-fraction / --test-fraction: {error}") from None
        if state is None:
            state = {
                "normaliser": fit_normaliser(tables, val_start).to_state(),
                "window": s["window"],
                "features": list(FEATURES),
            }
        normaliser = Normaliser.from_state(state["normaliser"])
        masks = {
            "train": windows.dates < val_start,
            "val": (windows.dates >= val_start) & (windows.dates < test_start),
            "test": windows.dates >= test_start,
        }
        splits = {name: WindowDataset(windows.select(mask), normaliser) for name, mask in masks.items()}
        for name, dataset in splits.items():
            if len(dataset) == 0:
                raise DataError(
                    path,
                    f"the {name} period is empty ({len(windows.dates)} windows in all): give more "
                    "rows, or a shorter --window",
                )
        if not splits["train"].targets[:, 0].any():
            dates = splits["train"].dates
            raise DataError(
                path,
                f"the close never changes over the training period ({dates.min()}..{dates.max()}): "
                "nothing to learn (a halted ticker?)",
            )
        skipped = sum(t.skipped for t in tables)
        if skipped:
            per_file = ", ".join(f"{t.ticker} {t.skipped}" for t in tables if t.skipped)
            print(f"{path}: skipped {skipped} rows without prices (null / empty): {per_file}", file=sys.stderr)
        periods = " / ".join(f"{len(d)} {k} ({d.dates.min()}..{d.dates.max()})" for k, d in splits.items())
        summary = (
            f"{len(tables)} ticker(s) ({', '.join(t.ticker for t in tables)}) from {path}: {periods}; "
            f"{skipped} null rows skipped"
        )
        return Data(splits["train"], splits["val"], splits["test"], state=state, summary=summary)

    def build(self, config: dict, state: dict) -> nn.Module:
        s = self.with_defaults(config)
        return StockLSTM(len(state["features"]), s["hidden_size"], s["layers"], s["dropout"])

    def example(self, batch_size: int, config: dict):
        s = self.with_defaults(config)
        state = {
            "normaliser": {"mean": [0.0] * len(FEATURES), "std": [1.0] * len(FEATURES), "target_scale": 0.01},
            "window": s["window"],
            "features": list(FEATURES),
        }
        targets = torch.ones(batch_size, 4, dtype=torch.float64)
        targets[:, 0] = torch.randn(batch_size, dtype=torch.float64)
        return state, torch.randn(batch_size, s["window"], len(FEATURES)), targets

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(outputs.dtype, torch.float32)
        return F.mse_loss(outputs.to(dtype), targets[:, 0].to(dtype))

    def metrics(self, outputs, targets, state, split):
        scale = state["normaliser"]["target_scale"]
        return close_metrics(outputs.double().numpy() * scale, targets.double().numpy())

    def validate(self, run, split):
        metrics, outputs, targets = super().validate(run, split)
        if split == "test" and metrics and run.place.is_main:
            print(f"{self.name} test: {metrics['verdict']}")
        return metrics, outputs, targets

    def plots(self, outputs, targets, state, out_dir, data):
        plt = pyplot()
        dataset = data.test if data.test is not None and len(data.test) else data.val
        scale = state["normaliser"]["target_scale"]
        predicted = targets[:, 2].numpy() * np.exp(outputs.double().numpy() * scale)
        tickers = sorted(set(dataset.tickers))
        figure, axes = plt.subplots(len(tickers), 1, figsize=(10, 3.2 * len(tickers)), squeeze=False)
        for axis, ticker in zip(axes[:, 0], tickers, strict=True):
            rows = np.array([t == ticker for t in dataset.tickers])
            dates = dataset.dates[rows].astype("datetime64[D]").astype(object)
            axis.plot(dates, targets[rows, 3].numpy(), label="actual close", color="black", linewidth=1)
            axis.plot(
                dates,
                targets[rows, 2].numpy(),
                label="naive (previous close)",
                color="tab:orange",
                linewidth=0.8,
                linestyle="--",
            )
            axis.plot(dates, predicted[rows], label="predicted (model)", color="tab:blue", linewidth=1)
            axis.set(title=f"{ticker}: next-day close, test period", ylabel="close")
            axis.legend(loc="best", fontsize=8)
        figure.autofmt_xdate()
        return [save_png(figure, out_dir / "predicted_vs_actual.png")]

    def predict_inputs(self, model, inputs, config, state, out_dir):
        window, normaliser = state["window"], Normaliser.from_state(state["normaliser"])
        device = next(model.parameters()).device
        lines = []
        for item in inputs:
            for table in read_prices(item):
                if len(table) < window + 1:
                    raise DataError(
                        table.path,
                        f"{table.ticker}: {len(table)} rows with prices, the model needs the latest {window + 1}",
                    )
                features = normaliser.apply(daily_features(table)[-window:])
                x = torch.from_numpy(features.astype(np.float32))[None].to(device)
                change = float(model(x).double().cpu()[0]) * normaliser.target_scale
                close = table.columns["Close"][-1]
                forecast = close * np.exp(change)
                lines.append(
                    f"{table.ticker} ({table.path.name}): close {close:.4f} on {table.dates[-1]} -> next "
                    f"trading day {forecast:.4f} ({np.expm1(change) * 100:+.2f} %)"
                )
        return lines


TASK = StockTask()
