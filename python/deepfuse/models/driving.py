"""driving: NVIDIA's PilotNet, behavioural cloning of steering from Udacity-format driving logs.

Network (Bojarski et al. 2016, "End to End Learning for Self-Driving Cars"): a 66x200 YUV image scaled to
[-1, 1]; five convolutions with ReLU fused in (FusedConv2d) — 24, 36, 48 filters 5x5 stride 2, then 64, 64
3x3 — give 64x1x18 = 1152 features; then FusedLinear 1152 → 100 → 50 → 10 (ReLU) → 1: the steering command.
Loss: mean squared error.

Data: ``--data`` is a ``driving_log.csv`` or a folder holding such logs (``deepfuse.data.driving`` reads the
flavours people have). Without ``--data`` the simulator's expert drives the training tracks and its recording
is the data (validation and test frames from the validation and test tracks). Training adds the left and right
cameras (steering ± ``--steering-correction``) and mirror images.

Metrics: validation MSE beside the always-straight baseline's; on the test split also closed loop in the
simulator on tracks never trained on (``--closed-loop-tracks``, 0 to skip): autonomy, metres driven before
first leaving the road. Target, trained on simulator recordings: >= 95 % autonomy on unseen tracks (untested
on a full-size run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfuse.data import DataError
from deepfuse.models.task import Data, Option, Task
from deepfuse.nn import FusedConv2d, FusedLinear

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
    """The expert's drive on ``split``'s tracks, preprocessed as a log read from disk would be."""
    from deepfuse.data.driving import Frames, preprocess
    from deepfuse.envs.recorder import drive_expert

    images, steering = [], []
    for frame in drive_expert(rows, seed, split=split, tracks=tracks, episode_steps=max(50, rows // tracks)):
        images.append(np.stack([preprocess(frame[c]) for c in ("center", "left", "right")]))
        steering.append(frame["steering"])
    return Frames(np.stack(images), np.array(steering, dtype=np.float32), np.ones(rows, dtype=bool))


class DrivingTask(Task):
    name = "driving"
    description = "steering from a camera (NVIDIA PilotNet): Udacity simulator logs, or the built-in simulator"
    data_help = "a driving_log.csv (Udacity simulator format, beside its IMG/ folder) or a folder of such logs"
    metric = "mse"
    maximize = False
    defaults = {"epochs": 5, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-5}
    options = {
        "steering_correction": Option(0.2, "steering added for the left camera's images, subtracted for the right's"),
        "side_cameras": Option(True, "train on the left and right cameras' images too"),
        "flip": Option(True, "train on mirror images (steering negated) too"),
        "dropout": Option(0.0, "dropout before the fully connected layers"),
        "sim_rows": Option(4000, "frames the simulator's expert records for training when there is no --data"),
        "closed_loop_tracks": Option(3, "unseen simulator tracks driven on the test split (0: none)"),
        "closed_loop_steps": Option(1000, "time steps (0.1 s) on each of them"),
    }

    def load_data(self, path: Path | None, config: dict, state: dict | None = None) -> Data:
        from deepfuse.data.driving import Frames, SteeringDataset, block_split, find_logs, load_frames, read_log

        config = {name: option.default for name, option in self.options.items()} | config
        if path is None:
            rows, seed = config["sim_rows"], config.get("seed", 0)
            if rows < 10:
                raise DataError(None, f"--sim-rows must be >= 10, got {rows}")
            splits = {"train": _simulated_frames(rows, seed, "train", 16),
                      "val": _simulated_frames(max(rows // 8, 5), seed, "val", 4),
                      "test": _simulated_frames(max(rows // 8, 5), seed, "test", 4)}  # fmt: skip
            source = f"the simulator's expert ({rows} frames on 16 training tracks)"
        else:
            logs = find_logs(path)
            frames = Frames.concatenate([load_frames(read_log(log)) for log in logs])
            train, val, test = block_split(len(frames), seed=0)
            splits = {"train": frames.subset(train), "val": frames.subset(val), "test": frames.subset(test)}
            source = f"{len(logs)} driving log{'s' if len(logs) > 1 else ''} under {path}"
        if len(splits["train"]) == 0:
            raise DataError(path, "no training frames")
        state = state or {"image_size": list(IMAGE_SIZE)}
        augment = {"correction": config["steering_correction"], "flip": config["flip"],
                   "side_cameras": config["side_cameras"]}  # fmt: skip
        train = SteeringDataset(splits["train"], augment=True, **augment)
        val, test = (SteeringDataset(splits[k], augment=False) for k in ("val", "test"))
        summary = f"{source}: {len(train)} training images, {len(val)} validation, {len(test)} test"
        return Data(train, val, test, state=state, summary=summary)

    def build(self, config: dict, state: dict) -> nn.Module:
        return PilotNet(tuple(state["image_size"]), config.get("dropout", 0.0))

    def example(self, batch_size: int, config: dict):
        return {"image_size": list(IMAGE_SIZE)}, torch.randn(batch_size, 3, *IMAGE_SIZE), torch.randn(batch_size, 1)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.dtype in (torch.float16, torch.bfloat16):
            outputs = outputs.float()
        return nn.functional.mse_loss(outputs, targets.to(outputs.dtype))

    def evaluate(self, outputs, targets, state, split):
        from deepfuse.training.metrics import regression_metrics

        predicted, truth = outputs.double().flatten().numpy(), targets.double().flatten().numpy()
        return {"mse": float(np.mean((predicted - truth) ** 2)), "straight_mse": float(np.mean(truth**2)),
                **regression_metrics(predicted, truth)}  # fmt: skip

    def validate(self, run, split: str):
        from deepfuse.training.loops import evaluate_split

        metrics, outputs, targets = evaluate_split(run, split)
        tracks = run.config.get("closed_loop_tracks", 0)
        if split == "test" and tracks > 0 and run.place.is_main:
            from deepfuse.envs.closed_loop import drive
            from deepfuse.envs.tracks import TrackSet

            pilot = self.pilot(run.raw_model, run.data.state)
            found = drive(pilot, TrackSet.split("test", tracks), run.config.get("closed_loop_steps", 1000))
            metrics.update({f"closed_loop_{k}": v for k, v in found.items()})
        return metrics, outputs, targets

    def pilot(self, model: nn.Module, state: dict):
        """The network as the simulator's driver: the center camera, preprocessed as the training images."""
        from deepfuse.data.driving import preprocess, to_tensor
        from deepfuse.envs.camera import udacity_cameras
        from deepfuse.envs.closed_loop import network_pilot

        def to_input(images):
            return to_tensor(np.stack([preprocess(image) for image in images]))

        return network_pilot("pilotnet", udacity_cameras()["center"], model, to_input)

    def plots(self, outputs, targets, state, out_dir, data):
        from deepfuse.training.plots import _pyplot

        plt = _pyplot()
        figure, axis = plt.subplots(figsize=(9, 3.5))
        axis.plot(targets.flatten().numpy(), label="recorded", linewidth=1)
        axis.plot(outputs.flatten().numpy(), label="predicted", linewidth=1)
        axis.set_xlabel("frame of the test split")
        axis.set_ylabel("steering (> 0 right)")
        axis.legend()
        figure.tight_layout()
        path = out_dir / "steering.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return [path]

    def predict(self, model, inputs, config, state, out_dir):
        from deepfuse.data.driving import preprocess, read_image, to_tensor

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
