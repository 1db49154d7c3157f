"""Backend registry and dispatch: which backends exist, which are usable here, which one an op runs on, and why.

Order of choice: the op's ``backend=`` argument, then ``deepfuse.use_backend(...)``, then the
``DEEPFUSE_BACKEND`` environment variable, read when deepfuse is imported (``auto`` or unset: automatic;
``read_environment()`` reads it again). A requested backend that
cannot run the call raises ``BackendUnavailableError`` with the reason; it is never replaced. The
automatic choice takes the first usable backend of the op's preference order for the device, dtype
and shape; CPU tensors use ``torch`` (``backend="triton"`` runs them under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

logger = logging.getLogger("deepfuse")

BACKENDS = ("torch", "triton", "cuda")
# Must match csrc/common.cuh's DType.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
KERNEL_DTYPES = tuple(DTYPE_CODES)

# Stack of use_backend() choices; a plain list so that torch.compile can read it.
_backend_stack: list[str] = []
# Open record_choices() logs: every dispatch appends (op, backend) to the innermost one.
_choice_logs: list[list[tuple[str, str]]] = []


class BackendUnavailableError(ValueError):
    """The requested ``backend`` cannot run this call (not built, no GPU, unsupported dtype); says why."""


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _import_triton() -> str:
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"triton is not installed ({error})"
    return ""


def _import_cuda_module() -> str:
    try:
        from deepfuse import _C
    except ImportError as error:
        return f"deepfuse._C is not built ({error}); reinstall where nvcc is on PATH"
    ok, message = _C.device_status()
    if not ok:
        return f"deepfuse._C is built but no CUDA device is usable: {message}"
    if not torch.cuda.is_available():
        return "deepfuse._C sees a device but torch has no CUDA (a CPU build of torch?)"
    return ""


_probe_cache: list[tuple[str, str, bool]] = []


@torch.compiler.assume_constant_result
def _probe() -> tuple[str, str, bool]:
    """(triton import problem, cuda backend problem, torch sees a GPU); "" means no problem.

    Probed once per process; torch.compile takes the result as a constant instead of tracing imports.
    """
    if not _probe_cache:
        _probe_cache.append((_import_triton(), _import_cuda_module(), torch.cuda.is_available()))
    return _probe_cache[0]


def _unavailable_reason(name: str) -> str | None:
    triton_problem, cuda_problem, has_gpu = _probe()
    if name == "triton":
        if triton_problem:
            return triton_problem
        if not has_gpu and not triton_interpreting():
            return "no CUDA device (set TRITON_INTERPRET=1 before importing deepfuse to run Triton kernels on the CPU)"
    if name == "cuda" and cuda_problem:
        return cuda_problem
    return None


def available_backends() -> dict[str, tuple[bool, str]]:
    """``{"torch": (True, ""), "triton": (ok, reason), "cuda": (ok, reason)}`` for this process."""
    result = {}
    for name in BACKENDS:
        reason = _unavailable_reason(name)
        if name == "triton" and reason is None and triton_interpreting():
            reason = "TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the interpreter"
            result[name] = (True, reason)
        else:
            result[name] = (reason is None, reason or "")
    return result


@dataclass
class OpSpec:
    """What the dispatcher needs to know of one op.

    supports(backend, *args, **kwargs) -> None when the backend can run the call, else the reason.
    preference(*args, **kwargs) -> backends in order of expected speed for a CUDA call.
    device_of(*args, **kwargs) -> the device the call runs on.
    cuda_kernels(*args, **kwargs) -> which deepfuse._C kernels the cuda backend would run, and why (for explain).
    """

    name: str
    supports: Callable[..., str | None]
    preference: Callable[..., tuple[str, ...]]
    device_of: Callable[..., torch.device]
    cuda_kernels: Callable[..., str] | None = None


_ops: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    _ops[spec.name] = spec
    return spec


def check_backend_name(name: str | None, argument: str = "backend") -> None:
    if name is not None and name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, BACKENDS))} or None, got {name!r}")


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Run deepfuse ops in this block on ``name`` (``None`` or ``"auto"``: automatic choice)."""
    name = None if name == "auto" else name
    check_backend_name(name, "use_backend(name)")
    _backend_stack.append(name or "auto")
    try:
        yield
    finally:
        _backend_stack.pop()


class ChoiceLog(list):
    """What ``record_choices()`` collects: ``(op, backend)`` per dispatch, in order; ``reasons[i]`` says why entry
    ``i`` is a drop-in's fallback (see ``record_fallback``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[int, str] = {}


@contextlib.contextmanager
def record_choices() -> Iterator[ChoiceLog]:
    """Collect ``(op, backend)`` for every deepfuse op dispatched in this block (eager calls; a compiled graph
    dispatches while it is traced), and the reason of every fallback a drop-in records."""
    log = ChoiceLog()
    _choice_logs.append(log)
    try:
        yield log
    finally:
        _choice_logs.remove(log)


def _record(op_name: str, name: str) -> str:
    if _choice_logs and not torch.compiler.is_compiling():
        _choice_logs[-1].append((op_name, name))
    return name


def record_fallback(op_name: str, name: str, reason: str) -> str:
    """Record that a drop-in ran ``op_name`` on backend ``name`` outside its fused path (which cannot run the call,
    or has no kernel for that part of it), and why.

    Only for calls the requested backend allows to run there (automatic, or ``name`` itself requested); where the
    requested backend cannot run a call, the drop-in raises BackendUnavailableError instead."""
    if not torch.compiler.is_compiling():
        logger.debug("%s: runs on %r: %s", op_name, name, reason)
        if _choice_logs:
            log = _choice_logs[-1]
            log.append((op_name, name))
            if isinstance(log, ChoiceLog):
                log.reasons[len(log) - 1] = reason
    return name


def requested_backend(explicit: str | None) -> tuple[str | None, str]:
    """The backend asked for (None for automatic) and where the request came from."""
    if explicit is not None:
        if explicit not in BACKENDS:
            check_backend_name(explicit)
        return explicit, "backend= argument"
    if _backend_stack:
        top = _backend_stack[-1]
        return (None if top == "auto" else top), "use_backend()"
    env = _environment[0]
    if env in ("", "auto"):
        return None, "automatic"
    check_backend_name(env, "DEEPFUSE_BACKEND")
    return env, "DEEPFUSE_BACKEND"


# DEEPFUSE_BACKEND as read when deepfuse was imported (or at the last read_environment()).
# NOTE: measured on the 2-core CPU: os.environ.get cost 0.55 µs of the ~5 µs deepfuse added to a tiny op call.
_environment = [""]


def read_environment() -> None:
    """Read ``DEEPFUSE_BACKEND`` again (deepfuse reads it once, at import: call this after changing it)."""
    _environment[0] = os.environ.get("DEEPFUSE_BACKEND", "auto")


read_environment()


def unusable_reason(op: OpSpec, name: str, *args, **kwargs) -> str | None:
    """Why backend ``name`` cannot run this call of ``op``, or None when it can."""
    reason = _unavailable_reason(name)
    if reason is not None:
        return reason
    device = op.device_of(*args, **kwargs)
    if name == "triton" and device.type != "cuda" and not triton_interpreting():
        return f"inputs are on {device.type}; the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)"
    if name == "cuda" and device.type != "cuda":
        return f"inputs are on {device.type}; the cuda backend needs CUDA tensors"
    return op.supports(name, *args, **kwargs)


def _automatic_order(op: OpSpec, *args, **kwargs) -> tuple[str, ...]:
    if op.device_of(*args, **kwargs).type != "cuda":
        return ("torch",)
    order = op.preference(*args, **kwargs)
    return order if "torch" in order else (*order, "torch")


def choose_backend(op_name: str, backend: str | None, *args, **kwargs) -> str:
    """The backend that runs this call, recorded for ``record_choices()``; raises BackendUnavailableError for an
    unusable request."""
    return _record(op_name, backend_for(op_name, backend, *args, **kwargs))


def backend_for(op_name: str, backend: str | None, *args, **kwargs) -> str:
    """The backend ``op_name(*args, **kwargs)`` would run on, without recording it (a layer deciding how to call
    an op); raises BackendUnavailableError for an unusable request."""
    requested, source = requested_backend(backend)
    if requested is None and not args[0].is_cuda:  # every op's first argument is a tensor on its device
        return "torch"  # the automatic choice off the GPU: nothing to weigh
    op = _ops[op_name]
    if requested is not None:
        reason = unusable_reason(op, requested, *args, **kwargs)
        if reason is not None:
            raise BackendUnavailableError(
                f"{op_name}: backend {requested!r} (from {source}) cannot run this call: {reason}"
            )
        return requested
    order = _automatic_order(op, *args, **kwargs)
    for name in order:
        if unusable_reason(op, name, *args, **kwargs) is None:
            if name != order[0] and not torch.compiler.is_compiling():
                logger.debug("%s: automatic choice %r; preferred %r cannot run this call", op_name, name, order[0])
            return name
    raise AssertionError("unreachable: the torch backend runs every call")  # torch's supports() never refuses


@dataclass
class BackendChoice:
    """Result of ``deepfuse.explain``: the chosen backend and, per backend, why it was or was not chosen."""

    op: str
    chosen: str | None
    reasons: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def __str__(self) -> str:
        lines = [f"{self.op}: " + (f"runs on {self.chosen!r}" if self.chosen else f"cannot run: {self.error}")]
        lines += [f"  {name:<7} {reason}" for name, reason in self.reasons.items()]
        return "\n".join(lines)


def explain(op_name: str, *args, backend: str | None = None, **kwargs) -> BackendChoice:
    """Why each backend would or would not run ``op_name(*args, **kwargs)``; printing it gives a readable report."""
    if op_name not in _ops:
        raise ValueError(f"op_name must be one of {sorted(_ops)}, got {op_name!r}")
    op = _ops[op_name]
    requested, source = requested_backend(backend)
    order = _automatic_order(op, *args, **kwargs)
    try:
        chosen, error = choose_backend(op_name, backend, *args, **kwargs), None
    except BackendUnavailableError as exc:
        chosen, error = None, str(exc)
    reasons = {}
    for name in BACKENDS:
        reason = unusable_reason(op, name, *args, **kwargs)
        if name == chosen:
            reasons[name] = f"chosen ({source})" if requested else f"chosen: first usable of {order}"
        elif reason is not None:
            reasons[name] = f"cannot run: {reason}"
        elif requested is not None:
            reasons[name] = f"usable, but {requested!r} was requested by {source}"
        elif name not in order:
            reasons[name] = "usable, but not used automatically for this device"
        else:
            reasons[name] = f"usable, but after {chosen!r} in the preference order {order}"
        if name == "cuda" and reason is None and op.cuda_kernels is not None:
            reasons[name] += f"; {op.cuda_kernels(*args, **kwargs)}"
    return BackendChoice(op_name, chosen, reasons, error)
