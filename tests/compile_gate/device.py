"""A pretend H200 for Triton's runtime: the public ops run on CPU tensors without the interpreter, every kernel
launch they make is bound and specialised exactly as on the GPU, and recorded instead of compiled or run.

Nothing here may be imported in a process that runs Triton kernels (the test session interprets them):
``install()`` replaces Triton's active driver, its JIT cache hook and ``Autotuner.run`` for the whole process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

# The H200 the launchers are asked about (PLATFORM.md: 132 SMs, ~139 GiB); capability 9.0, warp size 32.
H200 = SimpleNamespace(
    name="NVIDIA H200 (pretend)", major=9, minor=0, multi_processor_count=132, total_memory=139 * 1024**3, warp_size=32
)


@dataclass
class Launch:
    """One launch as Triton's binder saw it: what triton.compile needs, and where it came from."""

    kernel: str  # qualified name, module.function
    fn: object  # the JITFunction
    key: str  # Triton's own cache key: the specialisation (types, 1s, 16-divisibility) and the options
    signature: dict
    constexprs: dict  # {(arg index,): value}
    attrs: dict  # {(arg index,): [["tt.divisibility", 16]], ...}
    options: dict  # num_warps, num_stages, ...
    cases: list = field(default_factory=list)  # the cases that made this launch

    def constexpr_values(self) -> dict:
        names = self.fn.arg_names
        return {names[path[0]]: value for path, value in self.constexprs.items() if len(path) == 1}


class Recorder:
    """Collects launches, one per distinct (kernel, Triton cache key)."""

    def __init__(self):
        self.launches: dict[tuple[str, str], Launch] = {}
        self.case = "?"
        self.calls = 0  # launches made, before deduplication

    def hook(self, *, key, repr, fn, compile, is_manual_warmup, already_compiled):
        self.calls += 1
        name = f"{fn.module}.{fn.name}"
        entry = self.launches.get((name, key))
        if entry is None:
            options = {
                k: compile[k]
                for k in ("num_warps", "num_ctas", "num_stages", "enable_fp_fusion", "launch_cooperative_grid")
            }
            entry = Launch(
                name,
                fn.jit_function,
                key,
                dict(compile["signature"]),
                dict(compile["constants"]),
                dict(compile["configs"][0]),
                options,
            )
            self.launches[(name, key)] = entry
        if self.case not in entry.cases:
            entry.cases.append(self.case)
        return True  # recorded: Triton neither compiles nor launches it


class _PretendDriver:
    """The part of Triton's driver interface the JIT and the autotuner use before compiling."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        raise RuntimeError("the compile gate never benchmarks: Autotuner.run is replaced")

    def get_device_capability(self, device=None):
        return (9, 0)


def _every_config_run(self, *args, **kwargs):
    """Autotuner.run replacement: every config that survives the kernel's own pruning is launched (and so
    recorded), as the autotuner would benchmark them on the GPU."""
    self.nargs = dict(zip(self.arg_names, args, strict=False))
    try:
        for config in self.prune_configs(kwargs):
            if config.pre_hook is not None:
                config.pre_hook({**self.nargs, **kwargs, **config.all_kwargs()})
            self.fn.run(*args, **kwargs, **config.all_kwargs())
    finally:
        self.nargs = None


def _kernel_modules(package) -> list:
    import importlib
    import pkgutil

    infos = pkgutil.iter_modules(package.__path__, package.__name__ + ".")
    return [importlib.import_module(info.name) for info in infos]


def install() -> Recorder:
    """Makes this process's Triton and deepfuse believe an H200 is present; returns the launch recorder."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError(
            "the compile gate must run without TRITON_INTERPRET=1 (interpreted kernels cannot be "
            "compiled); run it as its own process: python -m tests.compile_gate"
        )
    from triton import knobs
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.driver import driver

    recorder = Recorder()
    driver.set_active(_PretendDriver())
    knobs.runtime.jit_cache_hook = recorder.hook
    Autotuner.run = _every_config_run
    torch.cuda.get_device_properties = lambda device=None: H200

    # deepfuse's dispatcher: the triton backend may run these CPU tensors (as it does under the interpreter).
    from deepfuse import backend

    backend.triton_interpreting = lambda: True
    # The launchers' Hopper test (gemm_common.hopper_device, imported by name): these CPU tensors sit on the H200.
    import deepfuse.kernels

    for module in _kernel_modules(deepfuse.kernels):
        if hasattr(module, "hopper_device"):
            module.hopper_device = lambda tensor: True
    return recorder
