"""driving: NVIDIA's PilotNet, behavioural cloning of steering from Udacity-format driving logs.

Network (Bojarski et al. 2016, "End to End Learning for Self-Driving Cars"): a 66x200 YUV image scaled to
[-1, 1]; five convolutions with ReLU fused in (FusedConv2d) — 24, 36, 48 filters 5x5 stride 2, then 64, 64
3x3 — give 64x1x18 = 1152 features; then FusedLinear 1152 → 100 → 50 → 10 (ReLU) → 1: the steering command.
Loss: mean squared error.

Data: ``--data`` is a ``driving_log.csv`` or a folder holding such logs (``deepfuse.data.driving`` reads the
flavours people have). Without ``--data`` the simulator's expert drives the training tracks (road and narrow
ones, alternately) and its recording is the data (validation and test frames from the validation and test
tracks). Training adds the left and right cameras (steering ± ``--steering-correction``), mirror images and
random brightness / horizontal shift / shadow (``--jitter``). Keyboard recordings (labels mostly exact zeros
with spikes) get their labels smoothed in time (``--smooth-steering auto``: only where a log looks like one;
the run's summary says so) and ``--straight-keep`` of their straight frames in training.

Metrics: MSE beside two baselines, always straight (``straight_mse``) and the training labels' mean
(``mean_mse``), with a ``verdict`` that says plainly when the network loses to either; where labels were
smoothed, the same against the labels as recorded (``recorded_*``). On the test split also closed loop in the
simulator on narrow tracks never trained on (``--closed-loop-tracks``, 0 to skip; ``deepfuse.envs.closed_loop``):
autonomy, metres before first leaving the road, RMS lateral error, for the network and beside it the expert and
the straight, constant, mean-steering and random pilots (``closed_loop_<pilot>_<metric>``). Target, trained on
simulator recordings: >= 95 % autonomy on unseen tracks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfuse.data import DataError
from deepfuse.data import driving as logs_io
from deepfuse.data.driving import Frames, SteeringDataset, block_split, preprocess, read_image, to_tensor
from deepfuse.nn import FusedConv2d, FusedLinear
from deepfuse.training.loops import split_metrics
from deepfuse.training.metrics import regression_metrics
from deepfuse.training.plots import pyplot, save_png
from deepfuse.training.task import Data, Option, Task

IMAGE_SIZE = (66, 200)


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class PilotNet(nn.Module):
    """PilotNet on fused layers. ``image_size`` other than 66x200 (at least 61x61) keeps every layer and only
    changes the flattened width (tests use it to keep the Triton interpreter fast)."""

    def __init__(self, image_size=IMAGE_SIZE, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            FusedConv2d(3, 24, 5, stride=2, activation="relu"),
            FusedConv2d(24, 36, 5, stride=2, activation="relu"),
            FusedConv2d(36, 48, 5, stride=2, activation="relu"),
            FusedConv2d(48, 64, 3, activation="relu"),
            FusedConv2d(64, 64, 3, activation="relu"),
        )
        height, width = image_size
        for kernel, stride in ((5, 2), (5, 2), (5, 2), (3, 1), (3, 1)):
            height, width = _conv_out(height, kernel, stride), _conv_out(width, kernel, stride)
        if height < 1 or width < 1:
            raise ValueError(f"PilotNet needs images of at least 61x61 pixels, got {image_size}")
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            FusedLinear(64 * height * width, 100, activation="relu"),
            FusedLinear(100, 50, activation="relu"),
            FusedLinear(50, 10, activation="relu"),
            FusedLinear(10, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _simulated_frames(rows: int, seed: int, split: str, tracks: int):
    """The expert's drive on ``split``'s tracks (road and narrow ones), preprocessed as a log read from disk
    would be."""
    # the simulator (numba, gymnasium: optional, deepfuse[drive]); driving trains from recorded logs without it
    from deepfuse.envs.recorder import drive_expert

    images, steering = [], []
    episode = max(50, rows // tracks)
    for frame in drive_expert(rows, seed, split=split, tracks=tracks, episode_steps=episode, style="mixed"):
        images.append(np.stack([preprocess(frame[c]) for c in ("center", "left", "right")]))
        steering.append(frame["steering"])
    return Frames(np.stack(images), np.array(steering, dtype=np.float32), np.ones(rows, dtype=bool))


def _read_logs(path: Path, config: dict):
    """Every log under ``path``, its labels smoothed where ``--smooth-steering`` says; returns (frames, logs,
    a line saying what was smoothed or None)."""
    logs, parts, smoothed = logs_io.find_logs(path), [], []
    for log in logs:
        rows = logs_io.read_log(log)
        frames = logs_io.load_frames(rows)
        keyboard, numbers = logs_io.looks_like_keystrokes(frames.steering)
        mode = config["smooth_steering"]
        if mode == "on" or (mode == "auto" and keyboard):
            times = logs_io.frame_times(rows)
            frames.steering = logs_io.smooth_steering(frames.recorded, times, config["smooth_seconds"])
            smoothed.append(f"{log} ({numbers})")
        parts.append(frames)
    note = None
    if smoothed:
        why = "" if config["smooth_steering"] == "on" else " (keyboard-like labels)"
        note = (
            f"steering smoothed in time (Gaussian, {config['smooth_seconds']} s){why} in {len(smoothed)} of "
            f"{len(logs)} logs: " + "; ".join(smoothed)
        )
    return logs_io.Frames.concatenate(parts), logs, note


def steering_metrics(predicted: np.ndarray, truth: np.ndarray, mean_steering: float, prefix: str = "") -> dict:
    """MSE beside always straight and the training mean, with their ratios."""
    mse, straight, mean = (float(np.mean((p - truth) ** 2)) for p in (predicted, 0.0, mean_steering))
    return {
        f"{prefix}mse": mse,
        f"{prefix}straight_mse": straight,
        f"{prefix}mean_mse": mean,
        f"{prefix}mse_vs_straight": mse / straight if straight else float("nan"),
        f"{prefix}mse_vs_mean": mse / mean if mean else float("nan"),
    }


FEW_FRAMES = 100  # 10 s of driving: fewer test frames are a few blocks of one manoeuvre, not evidence


def verdict(metrics: dict, frames: int, prefix: str = "") -> str:
    """One line: does the network beat always-straight and the mean-steering predictor, by how much, and whether
    ``frames`` frames are enough to tell."""
    mse, parts = metrics[f"{prefix}mse"], []
    for name in ("straight", "mean"):
        baseline = metrics[f"{prefix}{name}_mse"]
        label = "always-straight" if name == "straight" else "the mean steering"
        if not baseline:
            parts.append(f"{label} is exact here (MSE 0)")
        elif mse < baseline:
            parts.append(f"beats {label} ({1 - mse / baseline:.0%} lower MSE)")
        else:
            parts.append(f"LOSES to {label} (MSE {mse / baseline:.2f}x)")
    few = f" — only {frames} frames, too few to tell" if frames < FEW_FRAMES else ""
    return f"MSE {mse:.4g}: " + ", ".join(parts) + few


class DrivingTask(Task):
    name = "driving"
    description = "steering from a camera (NVIDIA PilotNet): Udacity simulator logs, or the built-in simulator"
    data_help = "a driving_log.csv (Udacity simulator format, beside its IMG/ folder) or a folder of such logs"
    metric = "mse"
    maximize = False
    defaults = {"epochs": 5, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-5}
    default_patience = 3  # validation MSE on keyboard recordings turns up from the third epoch (issue 22)
    options = {
        "steering_correction": Option(0.2, "steering added for the left camera's images, subtracted for the right's"),
        "side_cameras": Option(True, "train on the left and right cameras' images too"),
        "flip": Option(True, "train on mirror images (steering negated) too"),
        "dropout": Option(0.0, "dropout before the fully connected layers"),
        "jitter": Option(True, "random brightness, horizontal shift (steering corrected) and shadows in training"),
        "smooth_steering": Option(
            "auto",
            "smooth the labels in time: auto = in logs that look like keystrokes "
            "(more than half exact zeros, few distinct values)",
            choices=("auto", "on", "off"),
        ),
        "smooth_seconds": Option(0.3, "the smoothing Gaussian's standard deviation, seconds"),
        "straight_keep": Option(
            0.5, "share of straight frames (|steering| < 0.01) kept in training (1: all)", maximum=1.0
        ),
        "sim_rows": Option(
            4000, "frames the simulator's expert records for training when there is no --data", minimum=10
        ),
        "closed_loop_tracks": Option(3, "unseen simulator tracks driven on the test split (0: none)", minimum=0),
        "closed_loop_steps": Option(1000, "time steps (0.1 s) on each of them"),
    }

    def load_data(self, path: Path | None, config: dict, state: dict | None = None) -> Data:
        config = self.with_defaults(config)
        if path is None:
            rows, seed = config["sim_rows"], config.get("seed", 0)
            splits = {
                "train": _simulated_frames(rows, seed, "train", 16),
                "val": _simulated_frames(max(rows // 8, 5), seed, "val", 4),
                "test": _simulated_frames(max(rows // 8, 5), seed, "test", 4),
            }
            source = f"the simulator's expert ({rows} frames on 16 training tracks)"
            note = None
        else:
            frames, logs, note = _read_logs(path, config)
            train, val, test = block_split(len(frames), seed=0)
            splits = {"train": frames.subset(train), "val": frames.subset(val), "test": frames.subset(test)}
            source = f"{len(logs)} driving log{'s' if len(logs) > 1 else ''} under {path}"
        if len(splits["train"]) == 0:
            raise DataError(path, "no training frames")
        state = state or {"image_size": list(IMAGE_SIZE), "mean_steering": float(splits["train"].steering.mean())}
        augment = {
            "correction": config["steering_correction"],
            "flip": config["flip"],
            "side_cameras": config["side_cameras"],
            "straight_keep": config["straight_keep"],
            "jitter_images": config["jitter"],
            "seed": config.get("seed", 0),
        }
        train = SteeringDataset(splits["train"], augment=True, **augment)
        val, test = (SteeringDataset(splits[k], augment=False) for k in ("val", "test"))
        kept = len(train.rows)
        dropped = f" ({len(splits['train']) - kept} straight frames left out)" if kept < len(splits["train"]) else ""
        summary = f"{source}: {len(train)} training images{dropped}, {len(val)} validation, {len(test)} test"
        if note:
            summary += f"\n{note}"
        return Data(train, val, test, state=state, summary=summary)

    def build(self, config: dict, state: dict) -> nn.Module:
        return PilotNet(tuple(state["image_size"]), self.with_defaults(config)["dropout"])

    def example(self, batch_size: int, config: dict):
        return {"image_size": list(IMAGE_SIZE)}, torch.randn(batch_size, 3, *IMAGE_SIZE), torch.randn(batch_size, 1)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.dtype in (torch.float16, torch.bfloat16):
            outputs = outputs.float()
        return nn.functional.mse_loss(outputs, targets.to(outputs.dtype))

    def metrics(self, outputs, targets, state, split):
        predicted, truth = outputs.double().flatten().numpy(), targets.double().flatten().numpy()
        metrics = steering_metrics(predicted, truth, state.get("mean_steering", 0.0))
        return metrics | regression_metrics(predicted, truth) | {"verdict": verdict(metrics, len(truth))}

    def validate(self, run, split: str):
        metrics, outputs, targets = split_metrics(run, split)
        dataset = getattr(run.data, split)
        frames = getattr(dataset, "frames", None)
        if metrics and frames is not None and not np.array_equal(frames.recorded, frames.steering):
            # the labels were smoothed: the same numbers against the steering as recorded
            predicted = outputs.double().flatten().numpy()
            recorded = np.clip(frames.recorded[dataset.row].astype(np.float64), -1.0, 1.0)
            raw = steering_metrics(predicted, recorded, run.data.state.get("mean_steering", 0.0), "recorded_")
            metrics.update(raw, recorded_verdict=verdict(raw, len(recorded), "recorded_"))
        tracks = run.config["closed_loop_tracks"]
        if split == "test" and tracks > 0 and run.place.is_main:
            metrics.update(self.closed_loop(run.raw_model, run.data.state, tracks, run.config["closed_loop_steps"]))
        if split == "test" and metrics and run.place.is_main:
            print(f"{self.name} test: {metrics['verdict']}")
            if "recorded_verdict" in metrics:
                print(f"{self.name} test, against the labels as recorded: {metrics['recorded_verdict']}")
        return metrics, outputs, targets

    def closed_loop(self, model: nn.Module, state: dict, tracks: int, steps: int) -> dict[str, float]:
        """The network drives ``tracks`` narrow test tracks; beside it the expert and the baseline pilots."""
        # the simulator (numba, gymnasium: optional, deepfuse[drive]); driving trains from recorded logs without it
        from deepfuse.envs.closed_loop import baseline_pilots, drive, expert_pilot
        from deepfuse.envs.tracks import TrackSet

        track_set = TrackSet.split("test", tracks, style="narrow")
        metrics = {f"closed_loop_{k}": v for k, v in drive(self.pilot(model, state), track_set, steps).items()}
        for pilot in (expert_pilot(), *baseline_pilots(state.get("mean_steering", 0.0))):
            found = drive(pilot, track_set, steps)
            for key in ("autonomy", "mean_distance_m", "rms_lateral_error_m", "interventions"):
                metrics[f"closed_loop_{pilot.name}_{key}"] = found[key]
        return metrics

    def pilot(self, model: nn.Module, state: dict):
        """The network as the simulator's driver: the center camera, preprocessed as the training images."""
        # the simulator (numba, gymnasium: optional, deepfuse[drive]); driving trains from recorded logs without it
        from deepfuse.envs.camera import udacity_cameras
        from deepfuse.envs.closed_loop import network_pilot

        def to_input(images):
            return to_tensor(np.stack([preprocess(image) for image in images]))

        return network_pilot("pilotnet", udacity_cameras()["center"], model, to_input)

    def plots(self, outputs, targets, state, out_dir, data):
        plt = pyplot()
        figure, axis = plt.subplots(figsize=(9, 3.5))
        axis.plot(targets.flatten().numpy(), label="recorded", linewidth=1)
        axis.plot(outputs.flatten().numpy(), label="predicted", linewidth=1)
        axis.set_xlabel("frame of the test split")
        axis.set_ylabel("steering (> 0 right)")
        axis.legend()
        return [save_png(figure, out_dir / "steering.png")]

    def predict_inputs(self, model, inputs, config, state, out_dir):
        lines = []
        device = next(model.parameters()).device
        for item in inputs:
            path = Path(item)
            if not path.is_file():
                raise DataError(path, "no such file (expected a camera image, e.g. a Udacity 320x160 JPEG)")
            x = to_tensor(preprocess(read_image(path)))[None].to(device)
            lines.append(f"{path.name}: steering {model(x).float().item():+.4f}")
        return lines


TASK = DrivingTask()
