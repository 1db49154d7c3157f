"""The loop every op benchmark shares: shapes x modes x providers, timed the same way, one row each."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

import deepfuse
from deepfuse.bench import records
from deepfuse.bench.timing import measure, peak_memory_mb


@dataclass
class Case:
    """One shape of one op: its inputs (those needing gradients marked), the upstream gradient, its cost."""

    op: str
    shape: str
    inputs: tuple  # passed to each provider as provider(*inputs)
    grad_output: torch.Tensor
    fwd_flops: int
    fwd_min_bytes: int
    fwdbwd_flops_factor: float = 3.0  # GEMM-like: backward costs twice the forward


def _timed_call(fn: Callable, mode: str, case: Case) -> Callable[[], object]:
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                return fn(*case.inputs)

        return forward

    leaves = [t for t in case.inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def forward_backward():
        for t in leaves:
            t.grad = None
        fn(*case.inputs).backward(case.grad_output)

    return forward_backward


def _progress(items, total: int, description: str):
    """A tqdm progress bar over a sweep (plain iteration where tqdm is not installed)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=description, unit="case", leave=False)


def _print(line: str) -> None:
    try:
        from tqdm import tqdm
    except ImportError:
        print(line)
    else:
        tqdm.write(line)


def run(cases: list[Case], providers: dict[str, Callable], modes, device: torch.device) -> list[dict]:
    """Rows for every case x mode x provider. fwd+bwd counts 3x the forward FLOPs and 2x its bytes."""
    ceiling = records.ceiling_for(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    rows = []
    sweep = [(case, mode) for case in cases for mode in modes]
    for case, mode in _progress(sweep, len(sweep), cases[0].op if cases else "bench"):
        flops = case.fwd_flops * (1 if mode == "fwd" else case.fwdbwd_flops_factor)
        min_bytes = case.fwd_min_bytes * (1 if mode == "fwd" else 2)
        for provider, fn in providers.items():
            call = _timed_call(fn, mode, case)
            try:
                timing = measure(call, device)
            except Exception as error:  # a provider that fails is reported, not hidden
                warnings.warn(f"{provider} failed on {case.op} {case.shape} {mode}: {error}", stacklevel=1)
                continue
            dtype = case.grad_output.dtype
            tflops = flops / timing["median_ms"] / 1e9
            rows.append(
                {
                    "op": case.op,
                    "shape": case.shape,
                    "mode": mode,
                    "provider": provider,
                    "dtype": str(dtype).removeprefix("torch."),
                    **timing,
                    "tflops": tflops,
                    "gbps": min_bytes / timing["median_ms"] / 1e6,
                    "pct_of_peak": 100 * tflops / ceiling["tflops"] if ceiling and dtype != torch.float32 else None,
                    "peak_mem_mb": peak_memory_mb(call, device),
                }
            )
            _print(
                f"{case.op:>11} {case.shape:>28} {mode:>6} {provider:>28} {timing['median_ms']:9.4f} ms "
                f"{tflops:8.2f} TFLOP/s"
            )
    return rows


def deepfuse_providers(op: Callable, **op_kwargs) -> dict[str, Callable]:
    """The deepfuse backends usable here, each as provider(*inputs)."""
    providers = {}
    for name in ("triton", "cuda"):
        if deepfuse.available_backends()[name][0]:
            providers[name] = lambda *a, _name=name: op(*a, **op_kwargs, backend=_name)
    return providers


def compiled_providers(eager: Callable) -> dict[str, Callable]:
    return {
        "torch_compile": torch.compile(eager),
        "torch_compile_max_autotune": torch.compile(eager, mode="max-autotune-no-cudagraphs"),
    }


def groups(cases, providers):
    """An op's cases and providers, or several (cases, providers) groups when an op returns them as dicts
    keyed by group name (attention's dense and padded-batch benchmarks take different inputs)."""
    if isinstance(cases, dict):
        return [(cases[name], providers[name]) for name in cases]
    return [(cases, providers)]


def main(
    op: str, cases_for: Callable, providers_for: Callable, *, quick: bool, dtype: torch.dtype, modes, out_dir
) -> list[dict]:
    """Runs one op's benchmark on the GPU, or a CPU smoke run of the torch provider; writes the results."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        print("No GPU: a CPU smoke run of the torch provider on a tiny shape. CPU numbers are not GPU performance.")
        dtype = torch.float32
    rows = []
    for cases, providers in groups(cases_for(device, dtype, quick), providers_for(device)):
        rows += run(cases, providers, modes, device)
    path = records.write_results(rows, records.environment(), out_dir, op)
    print(f"results: {path}")
    return rows
