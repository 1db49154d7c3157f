"""Builds csrc/lstm.cu's real kernels for the CPU (through shim.h, under AddressSanitizer + UBSan) and checks every
output against deepfuse's float64 references with the test suite's rule (error <= 2 * torch's own error in the same
dtype + ATOL, tests/tolerances.py). Inputs are random (never zeros) and outputs NaN-poisoned, so an unwritten
element fails. See README.md.

    python tools/cuda_host_emulation/run_lstm.py --quick
"""

import argparse
import ctypes
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHILD_FLAG = "_DEEPFUSE_HOST_EMU_LIB"  # set in the sanitizer-preloaded child: the built library's path


# ------------------------------------------------------------------------------------------------------ build
def cuda_include() -> Path:
    """CUDA's headers (only the types and fp16/bf16 conversions are used): CUDA_HOME, else what nvcc reports (nvcc
    may be a wrapper script, so ask it rather than follow its path)."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        with tempfile.TemporaryDirectory() as tmp:
            empty = Path(tmp) / "empty.cu"
            empty.write_text("")
            dry = subprocess.run([nvcc, "--dryrun", "-c", str(empty)], capture_output=True, text=True).stderr
        candidates += [Path(p) for p in re.findall(r'INCLUDES="-I([^"\s]+)', dry)]
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    for path in candidates:
        if (path / "cuda_runtime.h").exists():
            return path
    sys.exit("cannot find CUDA headers: set CUDA_HOME or put nvcc on PATH")


def build(build_dir: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from extract_lstm import write_host_source

    build_dir.mkdir(parents=True, exist_ok=True)
    source = write_host_source(REPO / "csrc" / "lstm.cu", build_dir / "lstm_host.cpp")
    lib = build_dir / "liblstm_host_emu.so"
    cmd = [
        "g++",
        "-std=c++20",
        "-fsanitize=address,undefined",
        "-O1",
        "-g",
        "-fno-omit-frame-pointer",
        "-fPIC",
        "-shared",
        "-pthread",
        f"-I{HERE}",
        f"-I{REPO / 'csrc'}",
        f"-I{cuda_include()}",
        str(source),
        "-o",
        str(lib),
    ]
    start = time.time()
    print("building:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    print(f"built {lib} ({time.time() - start:.0f}s)", flush=True)
    return lib


def run_child(lib: Path) -> int:
    """The library is loaded into Python, so the sanitizer runtimes must be preloaded into a fresh interpreter."""
    runtimes = [
        subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        for name in ("libasan.so", "libubsan.so")
    ]
    env = dict(os.environ)
    env.update(
        {
            CHILD_FLAG: str(lib),
            "LD_PRELOAD": " ".join(runtimes),
            "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",  # torch's own allocations would be reported as leaks
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        }
    )
    return subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env).returncode


# ------------------------------------------------------------------------------------------------------ checks
# Imported only in the child (torch under the preloaded sanitizers).
torch = LIB = ATOL = max_error = None
REF = {}
CODES = PATHS = None
I64 = ctypes.c_int64
WORST = {}  # (kind, dtype) -> max error / bound ratio


def load(lib_path: str) -> None:
    global torch, LIB, ATOL, max_error, CODES, PATHS
    sys.path[:0] = [str(REPO / "python"), str(REPO)]
    import torch as _torch

    from deepfuse.ops import lstm as ref_lstm
    from tests import tolerances

    torch, ATOL, max_error = _torch, tolerances.ATOL, tolerances.max_error
    for name in (
        "_cell_fwd_torch",
        "_cell_grad_gates_torch",
        "_recurrence_fwd_torch",
        "_recurrence_bwd_torch",
        "_last_states",
    ):
        REF[name] = getattr(ref_lstm, name)
    LIB = ctypes.CDLL(lib_path)
    LIB.df_error.restype = ctypes.c_char_p
    LIB.df_max_smem.restype = ctypes.c_size_t
    for name in ("df_launches", "df_coop_launches", "df_grid_syncs"):
        getattr(LIB, name).restype = ctypes.c_long
    LIB.df_last_grid.restype = ctypes.c_uint
    CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
    PATHS = {"auto": 0, "persistent": 1, "per_step": 2}


def ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None and t.numel() else 0)


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def check(kind, name, got, expected, yardstick, dtype, errors):
    assert got.shape == expected.shape, (name, got.shape, expected.shape)
    assert not torch.isnan(got).any(), f"{name}: NaN (unwritten or numerical failure)"
    err, torch_err = max_error(got, expected), max_error(yardstick, expected)
    bound = 2 * torch_err + ATOL[dtype]
    assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e} (torch's {torch_err:.3e})"
    key = (kind, str(dtype)[6:])
    WORST[key] = max(WORST.get(key, 0.0), err / bound)
    errors[name] = (err, bound)


def relayout(t, how):
    """A view with t's values in another memory layout."""
    if how == "contig":
        return t.contiguous()
    if how == "transposed":  # column-major storage: unit stride along rows
        return t.t().contiguous().t()
    if how == "sliced":  # every other column of a wider NaN tensor, shifted by one (unaligned base)
        big = torch.full((t.shape[0], 2 * t.shape[1] + 1), float("nan"), dtype=t.dtype)
        view = big[:, 1::2]
        view.copy_(t)
        return view
    raise ValueError(how)


def run_cell(B, IN, H, dtype, layout, with_bias, save_gates, seed):
    g = torch.Generator().manual_seed(seed)
    s = H**-0.5
    x64, h64, c64 = (torch.randn(B, n, generator=g, dtype=torch.float64) for n in (IN, H, H))
    w_ih64 = torch.randn(4 * H, IN, generator=g, dtype=torch.float64) * s
    w_hh64 = torch.randn(4 * H, H, generator=g, dtype=torch.float64) * s
    bias64 = torch.randn(4 * H, generator=g, dtype=torch.float64) * s if with_bias else None
    x, h, c, w_ih, w_hh = (t.to(dtype) for t in (x64, h64, c64, w_ih64, w_hh64))
    bias = bias64.to(dtype) if with_bias else None
    views = {
        "contig": ("contig",) * 5,
        "noncontig": ("sliced", "transposed", "sliced", "transposed", "sliced"),
        "noncontig2": ("transposed", "sliced", "transposed", "sliced", "transposed"),
    }[layout]
    xv, hv, cv, w_ihv, w_hhv = (relayout(t, how) for t, how in zip((x, h, c, w_ih, w_hh), views, strict=True))
    strides = (I64 * 10)(*xv.stride(), *hv.stride(), *cv.stride(), *w_ihv.stride(), *w_hhv.stride())
    h_next, c_next = poisoned((B, H), dtype), poisoned((B, H), dtype)
    gates = poisoned((B, 4 * H), dtype) if save_gates else None
    rc = LIB.df_cell_fwd(
        ptr(xv),
        ptr(hv),
        ptr(cv),
        ptr(w_ihv),
        ptr(w_hhv),
        strides,
        ptr(bias),
        ptr(h_next),
        ptr(c_next),
        ptr(gates),
        I64(B),
        I64(IN),
        I64(H),
        CODES[dtype],
    )
    assert rc == 0, LIB.df_error().decode()
    up = [t.double() if t is not None else None for t in (x, h, c, w_ih, w_hh, bias)]
    ref = REF["_cell_fwd_torch"](*up)
    yard = REF["_cell_fwd_torch"](x, h, c, w_ih, w_hh, bias)
    errors = {}
    outs = (("h_next", h_next), ("c_next", c_next)) + ((("gates", gates),) if save_gates else ())
    for (name, got), r, y in zip(outs, ref, yard, strict=False):
        check("cell_fwd", name, got, r, y, dtype, errors)

    # pointwise backward on the forward's (kernel) outputs
    dh, dc = (torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    gates_in = gates if save_gates else yard[2]
    for with_dc in (True, False):
        dgates, dc_prev = poisoned((B, 4 * H), dtype), poisoned((B, H), dtype)
        rc = LIB.df_cell_grad_gates(
            ptr(dh),
            ptr(dc) if with_dc else ctypes.c_void_p(0),
            ptr(c),
            ptr(c_next),
            ptr(gates_in),
            ptr(dgates),
            ptr(dc_prev),
            I64(B),
            I64(H),
            CODES[dtype],
        )
        assert rc == 0, LIB.df_error().decode()
        dc_arg = dc if with_dc else torch.zeros_like(dc)
        ref = REF["_cell_grad_gates_torch"](*(t.double() for t in (dh, dc_arg, c, c_next, gates_in)))
        yard = REF["_cell_grad_gates_torch"](dh, dc_arg, c, c_next, gates_in)
        suffix = "" if with_dc else "(no dc)"
        check("cell_grad", "dgates" + suffix, dgates, ref[0], yard[0], dtype, errors)
        check("cell_grad", "dc_prev" + suffix, dc_prev, ref[1], yard[1], dtype, errors)
    return errors


def make_lengths(B, T, g):
    """Rows of different lengths in [0, T], a length-0 row and a full row included."""
    lengths = torch.randint(0, T + 1, (B,), generator=g, dtype=torch.int32)
    lengths[0] = 0
    if B > 1:
        lengths[-1] = T
    if B > 2:
        lengths[1] = max(T - 1, 0)
    return lengths


def run_seq(T, B, H, dtype, with_lengths, path, w_layout, seed):
    fwd_ref, bwd_ref, last = REF["_recurrence_fwd_torch"], REF["_recurrence_bwd_torch"], REF["_last_states"]
    g = torch.Generator().manual_seed(seed)
    xp64 = torch.randn(T, B, 4 * H, generator=g, dtype=torch.float64)
    h064, c064 = (torch.randn(B, H, generator=g, dtype=torch.float64) for _ in range(2))
    w64 = torch.randn(4 * H, H, generator=g, dtype=torch.float64) * H**-0.5
    xp, h0, c0, w = (t.to(dtype) for t in (xp64, h064, c064, w64))
    wv = relayout(w, w_layout)
    lengths = make_lengths(B, T, g) if with_lengths else None
    lengths_long = lengths.long() if lengths is not None else None
    c0_arg = c0.clone()  # c0 from its own buffer, not cs[0]
    errors = {}

    # As the Python launcher calls it: hs[0] (and cs[0] when saving) filled, the rest poisoned. Without saving, cs
    # and gates are null, so any write through them faults under ASan.
    def forward(save):
        hs = poisoned((T + 1, B, H), dtype)
        hs[0] = h0
        cs = poisoned((T + 1, B, H), dtype) if save else None
        gates = poisoned((T, B, 4 * H), dtype) if save else None
        if save:
            cs[0] = c0
        c_n = poisoned((B, H), dtype)
        c_work = poisoned((B, H), torch.float32)
        LIB.df_reset_counters()
        rc = LIB.df_seq_fwd(
            ptr(xp),
            ptr(wv),
            I64(wv.stride(0)),
            I64(wv.stride(1)),
            ptr(lengths),
            ptr(hs),
            ptr(c0_arg),
            ptr(cs),
            ptr(gates),
            ptr(c_n),
            ctypes.c_void_p(c_work.data_ptr()),
            I64(T),
            I64(B),
            I64(H),
            CODES[dtype],
            PATHS[path],
        )
        assert rc == 0, LIB.df_error().decode()
        launches = (
            LIB.df_launches(),
            LIB.df_coop_launches(),
            LIB.df_grid_syncs(),
            LIB.df_last_grid(0),
            LIB.df_last_grid(1),
        )
        if T > 0 and B > 0:
            if path == "persistent":
                assert launches[:3] == (1, 1, T - 1), launches
            elif path == "per_step":
                assert launches[:2] == (T, 0), launches
        else:
            assert launches[0] == 0, launches
            c_n.copy_(c0)  # nothing launched: the Python launcher's c_n = c0
        assert torch.equal(c0_arg, c0), "c0 modified"
        return hs, cs, gates, c_n, launches

    hs, cs, gates, c_n, launches = forward(True)
    ref = fwd_ref(xp.double(), h0.double(), c0.double(), w.double(), lengths_long)
    yard = fwd_ref(xp, h0, c0, w, lengths_long)
    for name, got, r, y in zip(("hs", "cs", "gates"), (hs, cs, gates), ref, yard, strict=True):
        check("seq_fwd", name, got, r, y, dtype, errors)
    check("seq_fwd", "c_n", c_n, last(ref[1], lengths_long), last(yard[1], lengths_long), dtype, errors)
    assert torch.equal(c_n, last(cs, lengths_long)), "c_n != the saved cs at each row's last step"
    hs2, _, _, c_n2, launches2 = forward(False)
    assert launches2 == launches, (launches2, launches)
    assert torch.equal(hs2, hs), "save=False: hs differs from the save=True run"
    assert torch.equal(c_n2, c_n), "save=False: c_n differs from the save=True run"

    # backward on torch's forward in the dtype (rounded cs, gates), the same inputs for the reference
    hs_t, cs_t, gates_t = yard
    dhs, dcs = (torch.randn(T + 1, B, H, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    dgates = poisoned((T, B, 4 * H), dtype)
    dh0, dc0 = poisoned((B, H), dtype), poisoned((B, H), dtype)
    work = poisoned((2, B, H), torch.float32)
    LIB.df_reset_counters()
    rc = LIB.df_seq_bwd(
        ptr(dhs),
        ptr(dcs),
        ptr(cs_t),
        ptr(gates_t),
        ptr(wv),
        I64(wv.stride(0)),
        I64(wv.stride(1)),
        ptr(lengths),
        ptr(dgates),
        ptr(dh0),
        ptr(dc0),
        ctypes.c_void_p(work.data_ptr()),
        I64(T),
        I64(B),
        I64(H),
        CODES[dtype],
        PATHS[path],
    )
    assert rc == 0, LIB.df_error().decode()
    blaunches = (LIB.df_launches(), LIB.df_coop_launches(), LIB.df_grid_syncs())
    if T > 0 and B > 0:
        if path == "persistent":
            assert blaunches == (1, 1, T), blaunches
        elif path == "per_step":
            assert blaunches[:2] == (T + 1, 0), blaunches
    if T == 0:  # nothing launched: the Python launcher returns dhs[0], dcs[0]
        dgates = dgates.new_empty((0, B, 4 * H))
        dh0, dc0 = dhs[0].clone(), dcs[0].clone()
    ref = bwd_ref(dhs.double(), dcs.double(), cs_t.double(), gates_t.double(), w.double(), lengths_long)
    yard = bwd_ref(dhs, dcs, cs_t, gates_t, w, lengths_long)
    for name, got, r, y in zip(("dgates", "dh0", "dc0"), (dgates, dh0, dc0), ref, yard, strict=True):
        check("seq_bwd", name, got, r, y, dtype, errors)
    return errors, launches


# ------------------------------------------------------------------------------------------------------ cases
def cell_cases(dtypes, quick):
    shapes = (
        [(17, 13, 33)] if quick else [(1, 13, 1), (3, 13, 5), (17, 13, 33), (70, 13, 100), (5, 16, 64), (3, 13, 16)]
    )
    for (B, IN, H), dtype in itertools.product(shapes, dtypes):
        yield (B, IN, H, dtype, "contig", True, True)
        yield (B, IN, H, dtype, "noncontig", B % 2 == 0, True)
        if not quick:
            yield (B, IN, H, dtype, "noncontig2", True, False)


def seq_cases(dtypes, paths, quick):
    """(T, B, H, dtype, lengths, path, w layout)."""
    layouts = ["contig", "transposed", "sliced"]
    if quick:  # lengths off and on, odd shapes, T = 0, and one multi-tile case (B = 70 rows, H = 100) per path
        for dtype, path in itertools.product(dtypes, paths):
            yield (7, 17, 33, dtype, False, path, "transposed")
            yield (7, 3, 5, dtype, True, path, "sliced")
            yield (0, 3, 5, dtype, True, path, "contig")
        for path in paths:
            yield (7, 70, 100, dtypes[0], True, path, "contig")
        return
    # Every (H, B) at T = 7 (lengths on alternate cases, w_hh layouts rotating), T in {0, 1, 2}, and a few more.
    n = 0
    for dtype, path in itertools.product(dtypes, paths):
        for H, B in itertools.product([1, 5, 16, 33, 64, 100], [1, 3, 17, 70]):
            n += 1
            yield (7, B, H, dtype, n % 2 == 0, path, layouts[n % 3])
        for T, (B, H), lens in itertools.product([0, 1, 2], [(3, 5), (17, 33), (70, 16)], [False, True]):
            yield (T, B, H, dtype, lens, path, "contig")
        for B, H in [(17, 100), (70, 64), (3, 1)]:
            yield (7, B, H, dtype, True, path, "contig")


def run_checks(args) -> int:
    load(os.environ[CHILD_FLAG])
    # Read by the shim at every call: the emulated device's SM count and blocks-per-SM cap.
    os.environ.update({"SHIM_SMS": str(args.sms), "SHIM_OCC": str(args.occ)})
    dtypes = [getattr(torch, d) for d in args.dtype]
    device = f"sms={args.sms} occ={args.occ}"
    failures = count = 0
    start_all = time.time()
    if args.what in ("all", "cell"):
        for i, case in enumerate(cell_cases(dtypes, args.quick)):
            label = f"[cell {i}] B,IN,H={case[:3]} {str(case[3])[6:]} {case[4]} bias={case[5]} save={case[6]}"
            try:
                errors = run_cell(*case, seed=i)
            except AssertionError as exc:
                failures += 1
                print(f"FAIL {label}: {exc}", flush=True)
                continue
            count += 1
            print(f"ok   {label} " + " ".join(f"{k}={e:.1e}/{b:.1e}" for k, (e, b) in errors.items()), flush=True)
    if args.what in ("all", "seq"):
        for i, case in enumerate(seq_cases(dtypes, args.path, args.quick)):
            T, B, H, dtype, lens, path, w_layout = case
            label = f"[seq {i} {device}] T={T} B={B} H={H} {str(dtype)[6:]} lengths={lens} {path} w={w_layout}"
            start = time.time()
            try:
                errors, launches = run_seq(*case, seed=1000 + i)
            except AssertionError as exc:
                failures += 1
                print(f"FAIL {label}: {exc}", flush=True)
                continue
            count += 1
            summary = " ".join(f"{k}={e:.1e}/{b:.1e}" for k, (e, b) in errors.items())
            print(f"ok   {label} grid={launches[3]}x{launches[4]} ({time.time() - start:.1f}s) {summary}", flush=True)
    print(f"max dynamic smem seen: {LIB.df_max_smem()} bytes")
    print("worst error/bound:", {f"{k[0]}/{k[1]}": round(v, 3) for k, v in sorted(WORST.items())})
    print(f"PASSED {count} FAILURES {failures} ({time.time() - start_all:.0f}s)")
    return 1 if failures or not count else 0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small representative subset (a few minutes)")
    p.add_argument("--what", choices=["all", "cell", "seq"], default="all", help="which kernels (default all)")
    p.add_argument(
        "--path",
        nargs="+",
        choices=["persistent", "per_step", "auto"],
        default=None,
        help="sequence paths (default persistent per_step)",
    )
    p.add_argument(
        "--dtype",
        nargs="+",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="dtypes (default: float32 float16 with --quick, all three without)",
    )
    p.add_argument("--sms", type=int, default=6, help="emulated SM count (default 6; small grids need few threads)")
    p.add_argument("--occ", type=int, default=2, help="emulated cap on blocks per SM (default 2)")
    p.add_argument("--build-dir", type=Path, help="build here and keep it (default: a temporary directory)")
    p.add_argument("--lib", type=Path, help="skip the build: use this already built library")
    args = p.parse_args()
    args.path = args.path or ["persistent", "per_step"]
    args.dtype = args.dtype or (["float32", "float16"] if args.quick else ["float32", "float16", "bfloat16"])
    return args


def main() -> int:
    args = parse_args()
    if CHILD_FLAG in os.environ:
        return run_checks(args)
    if args.lib:
        return run_child(args.lib.resolve())
    if args.build_dir:
        return run_child(build(args.build_dir.resolve()))
    with tempfile.TemporaryDirectory(prefix="lstm_host_emu_") as tmp:
        return run_child(build(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
