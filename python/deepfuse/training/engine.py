"""The one training engine every model uses: train a run, evaluate a checkpoint, predict with a checkpoint.

A run reads its data, builds the network, trains for ``epochs`` epochs with AdamW and a per-step cosine schedule
(a task may bring its own optimizer and schedule; every model's optimizer step is ``Run.optimizer_step``: loss
scaling, clipping to ``max_grad_norm``, the schedule, a non-finite loss stops the run), evaluates the validation
split after every epoch and keeps two checkpoints in ``out`` — ``last.pt`` (every epoch, and on Ctrl-C) and
``best.pt`` (best validation metric) — each written atomically. At the end it evaluates the test split with the
best weights and writes ``metrics.json``, ``history.csv`` and PNGs. ``resume=True`` continues from
``out/last.pt`` exactly: model, optimizer, scheduler, grad scaler, epoch and step, RNG states. Under torchrun,
DistributedDataParallel; only the main process writes.

Nothing lost, nothing silently wrong: a run owns its folder (``run_lock``), checked writable before the data is
read and for room for one checkpoint before training; Ctrl-C anywhere saves the state after the last finished optimizer
step; a full disk or a non-finite loss stops the run with one line naming the checkpoint that stands;
metrics.json is strict JSON.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

import deepfuse
from deepfuse.provenance import git_sha
from deepfuse.training import distributed, run_lock
from deepfuse.training.batching import batches_per_epoch
from deepfuse.training.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    is_disk_full,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_atomically,
)
from deepfuse.training.layers import layer_backends
from deepfuse.training.loops import NonFiniteLossError
from deepfuse.training.metrics import append_history, write_json
from deepfuse.training.plots import learning_curves_png
from deepfuse.training.precision import resolve_amp
from deepfuse.training.task import Data, Option, RunError, Task, check_settings, flag, positive

GENERIC_DEFAULTS = {
    "data": None,
    "epochs": 5,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "device": None,  # cuda when available, else cpu
    "backend": "auto",
    "amp": None,  # None, "bf16" or "fp16"
    "compile": False,
    "cuda_graphs": False,  # capture each step in CUDA graphs (torch.compile's reduce-overhead mode)
    "seed": 0,
    "out": None,  # runs/<model>/<timestamp>
    "workers": 0,
    "deterministic": False,
    "progress": True,  # tqdm bars (main process only)
    "patience": None,  # early stopping: stop after this many epochs without a better validation metric
    "max_grad_norm": None,  # clip the gradients' total norm to this before each optimizer step (None: off)
}
AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _whole(value) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"


# the limits of the generic numeric settings (a task's ``defaults`` may change the defaults, not the limits)
GENERIC_LIMITS = {
    name: Option(GENERIC_DEFAULTS[name], help, minimum=minimum, check=check)
    for name, help, minimum, check in (
        ("epochs", "epochs to train", 1, _whole),
        ("batch_size", "samples per optimizer step and process", 1, _whole),
        ("lr", "learning rate", None, positive),
        ("weight_decay", "weight decay", 0, None),
        ("workers", "DataLoader worker processes", 0, _whole),
        ("patience", "epochs without a better validation metric before stopping", 1, _whole),
        ("max_grad_norm", "the gradients' largest total norm", None, positive),
    )
}


def default_config(task: Task) -> dict:
    """Every setting of ``task`` at its default: the generic ones, then the task's defaults and options."""
    config = dict(GENERIC_DEFAULTS) | {"patience": task.default_patience} | dict(task.defaults)
    return task.with_defaults(config)


def make_config(task: Task, **overrides) -> dict:
    """Generic defaults, then the task's defaults and options, then ``overrides`` (None values ignored)."""
    config = default_config(task)
    unknown = set(overrides) - set(config) - {"resume"}
    if unknown:
        raise RunError(f"unknown settings for {task.name}: {', '.join(sorted(unknown))}")
    config.update({k: v for k, v in overrides.items() if v is not None and k != "resume"})
    config["model"] = task.name
    check_config(task, config)
    return config


def check_config(task: Task, config: dict) -> None:
    """Settings a run cannot use are one clear RunError, before anything is read or written: each setting's
    limits (``Option``), then the task's rules across settings (``Task.settings_problem``)."""
    check_settings(GENERIC_LIMITS, config)
    check_settings(task.options, config)
    problem = task.settings_problem(config)
    if problem is not None:
        raise RunError(problem)


def _check_cuda_graphs(task: Task, config: dict, device: torch.device) -> None:
    """--cuda-graphs needs a GPU and a model whose steps never wait for it (Task.cuda_graphs_blocker)."""
    if not config.get("cuda_graphs"):
        return
    if task.cuda_graphs_blocker:
        raise RunError(f"--cuda-graphs: {task.name} cannot be captured: {task.cuda_graphs_blocker}")
    if device.type != "cuda":
        raise RunError("--cuda-graphs needs a CUDA device (a CUDA graph replays GPU work); drop it on the CPU")


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device here (no GPU, or a CPU build of torch); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise RunError(f"--device must be cpu or cuda, got {name!r}")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def _nothing_to_show(total, description):
    class _Silent:
        def update(self, n=1):
            pass

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            pass

    return _Silent()


@dataclass
class Run:
    """Everything one training run holds; tasks' ``train_epoch``/``validate`` receive it."""

    task: Task
    config: dict
    data: Data
    device: torch.device
    place: distributed.Distributed
    raw_model: nn.Module
    model: nn.Module = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object | None = None
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: float | None = None
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # task-specific state to checkpoint (e.g. an RL agent's counters)
    # task-specific state of this process's run that is never checkpointed (a vectorised simulator, the current
    # observations): rebuilt from ``extra`` after a resume
    live: dict = field(default_factory=dict)
    out: Path | None = None
    epoch_loss: list = field(default_factory=lambda: [0.0, 0])  # [sum of loss x samples, samples] this epoch
    lock: run_lock.RunLock | None = None  # this run owns ``out`` (main process)
    saved: str | None = None  # the last checkpoint written (or resumed from): what stands if a write fails
    # the module buffers and RNG states at the last finished optimizer step (see mark_finished_step)
    _finished_buffers: list | None = field(default=None, init=False, repr=False)
    _live_buffers: list | None = field(default=None, init=False, repr=False)
    _finished_rng: tuple | None = field(default=None, init=False, repr=False)

    # --- what loops use ---------------------------------------------------------------------------------------
    def to_device(self, value):
        if isinstance(value, torch.Tensor):
            return value.to(self.device, non_blocking=True)
        if isinstance(value, tuple | list):
            return type(value)(self.to_device(v) for v in value)
        return value

    def forward(self, inputs):
        return self.model(*inputs) if isinstance(inputs, tuple | list) else self.model(inputs)

    def forward_raw(self, inputs):
        """The unwrapped model (no DDP, no torch.compile)."""
        return self.raw_model(*inputs) if isinstance(inputs, tuple | list) else self.raw_model(inputs)

    def autocast(self):
        dtype = AMP_DTYPES[self.config["amp"]]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def optimizer_step(self, loss: torch.Tensor, samples: int = 0) -> float:
        """The one optimizer step of every model: backward (through the fp16 grad scaler when there is one),
        gradients clipped to ``max_grad_norm`` (unscaled first), the optimizer's step, the scheduler's when the
        task schedules per step; returns the loss's value. ``samples`` counts into the epoch's mean loss.

        A Ctrl-C arriving meanwhile waits until the step is finished and counted (inside ``fit``): a checkpoint
        never holds half a step. A non-finite loss raises NonFiniteLossError after the step is counted (the engine
        then saves nothing of the epoch)."""
        _STEP_GUARD.in_step = True
        try:
            self.optimizer.zero_grad(set_to_none=True)
            max_norm = self.config.get("max_grad_norm")
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                if max_norm is not None:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                if max_norm is not None:
                    nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm)
                self.optimizer.step()
            if self.scheduler is not None and self.task.scheduler_interval == "step":
                self.scheduler.step()
            value = loss.item()
            self.epoch_loss[0] += value * samples
            self.epoch_loss[1] += samples
            self.after_step()  # counted with the optimizer step: an interrupt never replays a batch
        finally:
            _STEP_GUARD.in_step = False
        _STEP_GUARD.raise_pending()
        if not math.isfinite(value):
            raise NonFiniteLossError(self, value)
        return value

    def after_step(self) -> None:
        self.step_in_epoch += 1
        self.global_step += 1
        if self._finished_buffers is not None:  # the supervised loop rewinds a cut-off batch to here
            self.mark_finished_step()

    def mark_finished_step(self) -> None:
        """Remember the module buffers (BatchNorm statistics) and torch's RNG states between two optimizer steps:
        an interrupt inside the next batch rewinds to them (``rewind_unfinished_step``), so that the checkpoint
        saved on Ctrl-C holds exactly the state after the last finished step. Parameters and the optimizer only
        change inside ``optimizer_step``, which an interrupt never cuts."""
        if self._finished_buffers is None:  # buffers are updated in place: walk the modules once
            self._live_buffers = list(self.raw_model.buffers())
            self._finished_buffers = [b.detach().clone() for b in self._live_buffers]
        elif self._live_buffers:
            with torch.no_grad():  # one launch per dtype and device, not one per buffer
                torch._foreach_copy_(self._finished_buffers, self._live_buffers)
        # NOTE: torch's generators only (dropout, augmentation, samplers draw from them): 2 us a step on the CPU;
        # numpy's and Python's global states cost 60 and 17 us more and no training step draws from them
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        self._finished_rng = (torch.get_rng_state(), cuda)

    def rewind_unfinished_step(self) -> None:
        """Undo what a cut-off batch changed before its optimizer step: buffers, RNG draws (dropout, augment)."""
        if self._finished_buffers is None:
            return
        with torch.no_grad():
            for buffer, saved in zip(self._live_buffers, self._finished_buffers, strict=True):
                buffer.copy_(saved)
        cpu, cuda = self._finished_rng
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)

    def progress(self, total: int, description: str):
        if not self.place.is_main or not self.config.get("progress", True):
            return _nothing_to_show(total, description)
        # tqdm: optional (deepfuse[models]); only progress bars need it
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, file=sys.stderr)

    # --- checkpoints -----------------------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        return {
            "format": "deepfuse-checkpoint/1",
            "model": self.task.name,
            "config": self.config,
            "state": self.data.state,
            "model_state": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_loss": list(self.epoch_loss),
            "best": self.best,
            "history": self.history,
            "extra": self.extra,
            "rng": rng_states(),
            "deepfuse": deepfuse.__version__,
        }

    def save(self, name: str) -> Path | None:
        if not self.place.is_main:
            return None
        path = self.out / name
        save_atomically(self.checkpoint(), path)
        if name == "last.pt":
            self.saved = f"{path} ({_position(self.epoch, self.step_in_epoch)})"
        return path

    def release(self) -> None:
        """Give up the run folder (at the end of the run, however it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def restore(self, payload: dict) -> None:
        self.raw_model.load_state_dict(payload["model_state"])
        for part in ("optimizer", "scheduler", "scaler"):
            if payload[part] is not None and getattr(self, part) is not None:
                getattr(self, part).load_state_dict(payload[part])
        self.epoch, self.step_in_epoch = payload["epoch"], payload["step_in_epoch"]
        self.global_step, self.best = payload["global_step"], payload["best"]
        self.history, self.extra = payload["history"], payload["extra"]
        self.epoch_loss = list(payload.get("epoch_loss", [0.0, 0]))
        restore_rng_states(payload["rng"])

    def improved(self, value: float) -> bool:
        if value != value:  # NaN never improves
            return False
        if self.best is None:
            return True
        return value > self.best if self.task.maximize else value < self.best


class _StepGuard:
    """While ``fit`` trains, Ctrl-C (SIGINT) inside an optimizer step is held until the step is counted, then
    raised as KeyboardInterrupt; elsewhere it interrupts at once. One handler for the whole run: a step costs
    two attribute writes, not two signal.signal calls."""

    def __init__(self) -> None:
        self.in_step = self.pending = False

    def handle(self, signum, frame) -> None:
        if self.in_step:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def raise_pending(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        """Only in the main thread, and only over Python's own handler (a program's own one is left alone)."""
        if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield
            return
        previous = signal.signal(signal.SIGINT, self.handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            self.in_step = self.pending = False


_STEP_GUARD = _StepGuard()


def default_optimizer(model: nn.Module, config: dict, steps_per_epoch: int):
    """AdamW with a per-step cosine decay over the whole run."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    total = max(1, config["epochs"] * max(steps_per_epoch, 1))
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)


def _default_out(task: Task) -> Path:
    return Path("runs") / task.name / time.strftime("%Y%m%d-%H%M%S")


def _check_out(out: Path, resume: bool) -> None:
    if resume:
        if not (out / "last.pt").is_file():
            raise RunError(f"--resume: {out / 'last.pt'} does not exist (nothing to resume in --out {out})")
    elif any((out / name).exists() for name in ("last.pt", "best.pt")):
        raise RunError(
            f"--out {out} already holds a run's checkpoints; pass --resume to continue it, "
            "or choose another --out (nothing was overwritten)"
        )


def _claim_out(out: Path, log) -> tuple[run_lock.RunLock, list[Path]]:
    """Create ``out`` and lock it for this run: (the lock, the folders created, deepest first). --out naming a
    file, a folder that cannot be created or written, or one another run owns is a RunError."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; a run folder is a folder (choose another --out)")
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        return run_lock.acquire(out, log), created
    except run_lock.RunFolderLocked as error:
        raise RunError(str(error)) from None
    except OSError as error:
        _remove_if_empty(created)
        raise RunError(f"--out {out} is not writable ({error.strerror or error}); choose another --out") from None


def _remove_if_empty(folders: list[Path]) -> None:
    """A run refused before it wrote anything leaves no folders behind."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def checkpoint_bytes(model: nn.Module, optimizer) -> int:
    """About the size of one checkpoint: weights and buffers, plus the optimizer's per-parameter state (Adam's
    two moments, SGD's momentum) which exists only after the first step."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    defaults = getattr(optimizer, "defaults", {})
    moments = 2 if "betas" in defaults else 1 if defaults.get("momentum") else 0
    return weights + moments * parameters


def _check_free_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out).free
    if free < needed:
        raise RunError(
            f"--out {out}: {_size(free)} free on its disk, one checkpoint needs about {_size(needed)}; "
            "free some space or choose another --out"
        )


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


RESUME_MAY_CHANGE = ("device", "workers", "backend", "progress", "data")


def _resumed_config(saved: dict, config: dict, given: set[str] | None) -> dict:
    given = set(config) if given is None else given
    if "epochs" in given and config["epochs"] != saved["epochs"]:
        raise RunError(
            f"--resume: this run was planned for {saved['epochs']} epochs (its learning-rate schedule "
            f"too), not {config['epochs']}; resume without --epochs, or start a new run"
        )
    fixed = sorted(given - set(RESUME_MAY_CHANGE) - {"out", "model", "resume"})
    changed = [k for k in fixed if k in config and config[k] != saved.get(k)]
    if changed:
        was = "; ".join(f"{flag(k)} {saved.get(k)}, not {config[k]}" for k in changed)
        allowed = ", ".join(flag(k) for k in RESUME_MAY_CHANGE if k != "progress")
        without = ", ".join(flag(k) for k in changed)
        raise RunError(
            f"--resume: this run was trained with {was}; a resumed run keeps its settings (only "
            f"{allowed} may change): resume without {without}, or start a new run elsewhere"
        )
    return saved | {k: config[k] for k in RESUME_MAY_CHANGE if k in given and k in config}


def prepare(task: Task, config: dict, resume: bool = False, given: set[str] | None = None, log=print) -> Run:
    """Lock the run folder, read the data, build the model and optimizer, restore a checkpoint when resuming.

    ``given``: the settings the user gave (None: every key of ``config``); a resumed run keeps its own config
    except for where it runs (device, workers, backend, progress bars, the data's path). The caller releases
    the run folder with ``run.release()`` (``train`` does)."""
    if task.scheduler_interval not in ("step", "epoch"):
        raise ValueError(f"{task.name}: scheduler_interval must be 'step' or 'epoch', got {task.scheduler_interval!r}")
    device = resolve_device(config["device"])
    config["amp"], precision = resolve_amp(config["amp"], device)  # auto / fp32 -> what the run records
    if precision and not resume:  # a resumed run keeps its own precision
        log(precision)
    if config["amp"] not in AMP_DTYPES:  # both work on CPUs too (bf16 and fp16 autocast; fp16 with a GradScaler)
        raise RunError(f"--amp must be auto, fp32, bf16 or fp16, got {config['amp']!r}")
    if config["backend"] not in ("auto", *deepfuse.backend.BACKENDS):
        raise RunError(f"--backend must be auto, torch, triton or cuda, got {config['backend']!r}")
    _check_cuda_graphs(task, config, device)
    if config["amp"] == "fp16" and device.type == "cpu":
        # NOTE: measured, digits on 2 cores: fp16 ~190 samples/s, fp32 ~3,300, bf16 ~2,800
        log("note: --amp fp16 on a CPU works but is slow (no fp16 arithmetic on most CPUs); bf16 is the fast one")
    out = Path(config["out"]) if config["out"] else _default_out(task)
    place = distributed.setup(device.type)
    lock, created = _claim_out(out, log) if place.is_main else (None, [])
    try:
        run = _prepare_locked(task, config, resume, given, device, place, out)
        run.lock = lock
        return run
    except BaseException as error:
        if lock is not None:
            lock.release()
        _remove_if_empty(created)
        if isinstance(error, KeyboardInterrupt):
            log(f"interrupted before training started: nothing was written to {out}")
        raise


def _prepare_locked(task, config, resume, given, device, place, out) -> Run:
    _check_out(out, resume)
    payload = None
    if resume:
        payload = load_checkpoint(out / "last.pt", task.name)
        # a checkpoint written before a setting existed runs with that setting's default
        config = _resumed_config(default_config(task) | payload["config"], config, given)
    config["out"] = str(out)
    if config["data"]:  # absolute: eval and predict find it from any folder
        config["data"] = str(Path(config["data"]).expanduser().absolute())
    if place.active and device.type == "cuda":
        device = torch.device("cuda", place.local_rank)
    seed_everything(config["seed"], config["deterministic"])
    data_path = Path(config["data"]) if config["data"] else None
    data = task.load_data(data_path, config, payload["state"] if payload else None)
    torch.manual_seed(config["seed"])  # the same initial weights whatever the loader drew
    model = task.build(config, data.state).to(device)
    run = Run(task, config, data, device, place, raw_model=model, out=out)
    steps = batches_per_epoch(len(data.train), config["batch_size"], place.world) if data.train is not None else 1
    make_optimizer = getattr(task, "optimizer", None) or default_optimizer
    run.optimizer, run.scheduler = make_optimizer(model, config, steps)
    if place.is_main:
        _check_free_space(out, checkpoint_bytes(model, run.optimizer))
    if config["amp"] == "fp16":
        run.scaler = torch.amp.GradScaler(device.type)
    if payload is not None:
        run.restore(payload)
        run.saved = f"{out / 'last.pt'} ({_position(payload['epoch'], payload['step_in_epoch'])})"
    wrapped = model
    if place.active:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if config.get("cuda_graphs"):  # Inductor's CUDA graph trees: capture after warm-up, static input buffers
        run.model = torch.compile(wrapped, mode="reduce-overhead")
    else:
        run.model = torch.compile(wrapped) if config["compile"] else wrapped
    return run


def _epochs_without_improvement(run: Run) -> int:
    """Epochs since the best validation metric (from the history, so a resumed run counts the same)."""
    values = [row["val_metric"] for row in run.history]
    best_at = -1
    for index, value in enumerate(values):
        if value != value:  # NaN never improves
            continue
        if best_at < 0 or (value > values[best_at] if run.task.maximize else value < values[best_at]):
            best_at = index
    return len(values) - 1 - best_at


def _patience_exhausted(run: Run) -> bool:
    patience = run.config.get("patience")
    return patience is not None and _epochs_without_improvement(run) >= patience


def fit(run: Run, log=print) -> dict:
    """Train from ``run.epoch`` to ``epochs`` (or until --patience epochs pass without a better validation
    metric); evaluate; write the run folder. Returns metrics.json's payload.

    Faults: Ctrl-C saves the state after the last finished step (the supervised loop) and re-raises; a full
    disk, a non-finite loss stop with a RunError saying which checkpoint stands."""
    config = run.config
    started = time.perf_counter()
    try:
        with deepfuse.use_backend(config["backend"]), _STEP_GUARD.installed():
            _train_epochs(run, log)
        return _finish(run, time.perf_counter() - started, log)
    except NonFiniteLossError as error:
        raise RunError(
            f"{error}: training stopped and saved nothing of this epoch; {_kept(run)}; try a lower "
            f"--lr than {config['lr']:g}"
            + ("" if config["amp"] is None else " or --amp fp32")
            + ", or check the data for extreme values"
        ) from None
    except CheckpointWriteError as error:
        raise RunError(_write_failed(run, str(error), error.disk_full)) from None
    except OSError as error:  # writing history.csv, metrics.json, the pictures
        full = is_disk_full(error)
        ours = error.filename is not None and Path(error.filename).absolute().is_relative_to(run.out.absolute())
        if not (full or ours):
            raise
        problem = "the disk is full" if full else f"cannot write ({error.strerror or error})"
        raise RunError(_write_failed(run, f"{error.filename or run.out}: {problem}", full)) from None


def _position(epoch: int, step_in_epoch: int) -> str:
    if step_in_epoch == 0:
        return f"end of epoch {epoch}" if epoch else "before the first step"
    return f"epoch {epoch + 1}, step {step_in_epoch}"


def _kept(run: Run) -> str:
    return f"the last good checkpoint {run.saved} stands" if run.saved else "no checkpoint had been written yet"


def _write_failed(run: Run, what: str, disk_full: bool) -> str:
    fix = "free some space" if disk_full else "make it writable"
    return f"{what}; {_kept(run)}; {fix}, then continue with: deepfuse train {run.task.name} --out {run.out} --resume"


def _train_epochs(run: Run, log) -> None:
    task, config = run.task, run.config
    supervised = type(task).train_epoch is Task.train_epoch
    try:
        if "layers" not in run.extra and run.data.train is not None and len(run.data.train):
            run.extra["layers"] = _layer_backends(run)
        while run.epoch < config["epochs"]:
            if _patience_exhausted(run):
                run.extra["stopped_early"] = {"after_epoch": run.epoch, "patience": config["patience"]}
                log(
                    f"early stop after epoch {run.epoch}: val {task.metric} has not improved for "
                    f"{config['patience']} epochs (--patience); testing the best weights (best.pt)"
                )
                break
            epoch_start = time.perf_counter()
            train_metrics = task.train_epoch(run)
            if run.scheduler is not None and task.scheduler_interval == "epoch":
                run.scheduler.step()
            loss = train_metrics.get("loss")
            if not supervised and loss is not None and not math.isfinite(loss):  # a task's own loop
                raise NonFiniteLossError(run, loss)
            val_metrics, _, _ = task.validate(run, "val")
            _end_epoch(run, train_metrics, val_metrics, time.perf_counter() - epoch_start, log)
    except KeyboardInterrupt:
        if supervised:  # the supervised loop resumes within an epoch
            run.rewind_unfinished_step()
            path = run.save("last.pt")
            where = f"at epoch {run.epoch + 1}, step {run.step_in_epoch}: saved {path}"
        else:  # a task's own epoch (e.g. a PPO iteration) restarts: keep the last finished epoch's checkpoint
            where = f"during epoch {run.epoch + 1}: {run.out / 'last.pt'} (the last finished epoch) stands"
        log(f"interrupted {where}; continue with: deepfuse train {task.name} --out {run.out} --resume")
        raise


def _end_epoch(run: Run, train_metrics: dict, val_metrics: dict, seconds: float, log) -> None:
    """Count the finished epoch: its row in the history (and history.csv), last.pt, best.pt when it is the best."""
    metric = run.task.metric
    value = val_metrics.get(metric, train_metrics.get(metric, float("nan")))
    row = {
        "epoch": run.epoch + 1,
        "train_loss": train_metrics.get("loss"),
        "val_loss": val_metrics.get("loss"),
        "val_metric": value,
        "lr": run.optimizer.param_groups[0]["lr"] if run.optimizer else None,
        "seconds": round(seconds, 3),
        "samples_per_s": train_metrics.get("samples_per_s"),
    }
    run.history.append(row)
    run.epoch, run.step_in_epoch, run.epoch_loss = run.epoch + 1, 0, [0.0, 0]
    best = run.improved(value)
    if best:
        run.best = value
    run.save("last.pt")
    if run.place.is_main:
        append_history(run.out / "history.csv", row)
    if best:
        run.save("best.pt")
    if run.place.is_main:
        log(_epoch_line(row, metric, best))


@torch.no_grad()
def _layer_backends(run: Run) -> dict[str, str]:
    """{layer: "op: backend"} from a train-mode and an eval-mode forward of two training samples (state kept)."""
    samples = [run.data.train[i] for i in range(min(2, len(run.data.train)))]
    inputs, _ = (run.data.collate or default_collate)(samples)
    inputs = run.to_device(inputs)
    was_training = run.raw_model.training
    run.raw_model.eval()
    rows = layer_backends(run.raw_model, lambda: run.forward_raw(inputs))
    run.raw_model.train(was_training)
    return {name: ops for name, _, ops in rows}


def _epoch_line(row: dict, metric: str, best: bool) -> str:
    val = "" if row["val_loss"] is None else f", val loss {row['val_loss']:.4f}"
    return (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}{val}, val {metric} {row['val_metric']:.4f}"
        f"{' (best)' if best else ''}, {row['seconds']:.1f} s"
        + (f", {row['samples_per_s']:.0f} samples/s" if row.get("samples_per_s") else "")
    )


def _finish(run: Run, seconds: float, log) -> dict:
    """Test metrics with the best weights, then metrics.json, learning curves and the task's plots."""
    task = run.task
    distributed.barrier(run.place)  # the main process has written best.pt
    if (run.out / "best.pt").exists():
        run.raw_model.load_state_dict(load_checkpoint(run.out / "best.pt", task.name)["model_state"])
    split = "test" if run.data.test is not None and len(run.data.test) else "val"
    try:
        with deepfuse.use_backend(run.config["backend"]):
            # validation first: a task may fit on it (a decision threshold) what the test split then uses
            val_metrics, outputs, targets = task.validate(run, "val")
            final = val_metrics
            if split == "test":
                final, outputs, targets = task.validate(run, "test")
    except KeyboardInterrupt:
        log(
            f"interrupted during the final evaluation: training is finished and kept ({run.out}: last.pt, "
            f"best.pt, history.csv; no metrics.json); evaluate with: deepfuse eval {task.name} --checkpoint "
            f"{run.out / 'best.pt'}"
        )
        raise
    payload = {
        **final,
        "split": split,
        "val": val_metrics,
        "model": task.name,
        "config": run.config,
        "seed": run.config["seed"],
        "git_sha": git_sha(),
        "device": str(run.device),
        "backend": run.config["backend"],
        "layers": run.extra.get("layers"),
        "seconds": round(seconds, 2),
        "epochs": run.epoch,
        "patience": run.config.get("patience"),
        "stopped_early": run.extra.get("stopped_early"),
        "data": run.data.summary,
    }
    payload = finite_or_none(payload)
    if run.place.is_main:
        write_json(run.out / "metrics.json", payload)
        pictures = []
        if (run.out / "history.csv").exists():
            pictures.append(learning_curves_png(run.out / "history.csv", run.out / "learning_curves.png", task.metric))
        if outputs is not None:
            pictures += task.plots(outputs, targets, run.data.state, run.out, run.data)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in final.items() if isinstance(v, float))
        log(f"{split}: {shown}")
        log(f"run folder {run.out}: metrics.json, history.csv, " + ", ".join(p.name for p in pictures if p))
    return payload


def finite_or_none(value):
    """``value`` with every inf/NaN float replaced by None: metrics.json stays strict JSON (null, not NaN)."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def train(task: Task, config: dict, resume: bool = False, log=print, given: set[str] | None = None) -> dict:
    run = prepare(task, config, resume, given, log)
    try:
        return fit(run, log)
    finally:
        run.release()
        distributed.teardown(run.place)


def load_for_inference(
    task: Task, checkpoint: str | Path, device: str | None = None, data: str | Path | None = None
) -> tuple[nn.Module, dict, dict]:
    """(model in eval mode on the device, config, data state) from a checkpoint of ``task``."""
    payload = load_checkpoint(checkpoint, task.name)
    config = default_config(task) | payload["config"] | {"device": device or payload["config"]["device"]}
    if device is None and config["device"] == "cuda" and not torch.cuda.is_available():
        config["device"] = "cpu"
    if data is not None:
        config["data"] = str(data)
    model = task.build(config, payload["state"])
    model.load_state_dict(payload["model_state"])
    return model.to(resolve_device(config["device"])).eval(), config, payload["state"]


def evaluate_checkpoint(
    task: Task,
    checkpoint: str | Path,
    data: str | Path | None = None,
    device: str | None = None,
    backend: str = "auto",
    log=print,
) -> dict:
    """Metrics of a checkpoint on the test split (the validation split when there is no test split)."""
    model, config, state = load_for_inference(task, checkpoint, device, data)
    if data is None and config["data"] and not Path(config["data"]).is_absolute():  # older checkpoints: as given
        config["data"] = str(Path(config["data"]).absolute())
        log(
            f"data: {config['data']} (the checkpoint's relative --data, resolved against the current folder; "
            "--data to evaluate other data)"
        )
    config |= {"backend": backend, "workers": 0}
    dataset = task.load_data(Path(config["data"]) if config["data"] else None, config, state)
    run = Run(task, config, dataset, next(model.parameters()).device, distributed.Distributed(), model, model)
    split = "test" if dataset.test is not None and len(dataset.test) else "val"
    with deepfuse.use_backend(backend):
        if split == "test" and dataset.val is not None and len(dataset.val):
            task.validate(run, "val")  # a task may fit its decision threshold on validation first
        metrics, _, _ = task.validate(run, split)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    log(f"{task.name} {split} ({dataset.summary}): {shown}")
    return {**metrics, "split": split}


def predict_with_checkpoint(
    task: Task,
    checkpoint: str | Path,
    inputs: list[str],
    device: str | None = None,
    out: str | None = None,
    backend: str = "auto",
    options: dict | None = None,
) -> list[str]:
    """Lines for the user's ``inputs``; ``options``: model options that change for this prediction (skip_bad)."""
    out = Path(out or ".")
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; predict writes into a folder")
    model, config, state = load_for_inference(task, checkpoint, device)
    config |= options or {}
    with deepfuse.use_backend(backend), torch.no_grad():
        return task.predict_inputs(model, inputs, config, state, out)


__all__ = [
    "CheckpointError",
    "Run",
    "RunError",
    "evaluate_checkpoint",
    "fit",
    "make_config",
    "predict_with_checkpoint",
    "prepare",
    "train",
]
