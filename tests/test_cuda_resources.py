"""The CUDA C++ resource gate (tests/cuda_resources.py): every kernel of deepfuse._C, as ptxas compiled it for sm_90,
within the H200's limits at the largest sizes its launchers support: registers, spills, static + dynamic shared
memory, and the opt-in for dynamic shared memory above 48 KiB. No GPU needed: ptxas's report comes from the build,
the dynamic sizes from the launchers' own host code run as a dry run (_C.launch_plan).

Then the gate's own checks, each shown to fail on a doctored report or plan."""

import pytest

from tests import cuda_resources as gate
from tests.test_cuda_module import _import_C

# Enough hidden sizes to reach both LSTM paths and every kernel; the real gate scans them all.
FEW_LSTM_SIZES = range(1, 4225, 256)


@pytest.fixture(scope="module")
def C():
    C = _import_C()
    if not C.ptxas_report():
        pytest.fail("deepfuse._C was built with DEEPFUSE_PTXAS_REPORT=OFF: rebuild with it on (the default)")
    return C


class Doctored:
    """deepfuse._C with some of its functions replaced."""

    def __init__(self, C, **replacements):
        self._C = C
        self.__dict__.update(replacements)

    def __getattr__(self, name):
        return getattr(self._C, name)


def doctored_plan(C, change):
    """A launch_plan whose launches pass through change(launch) -> launch or None (dropped)."""

    def launch_plan(fn, **device):
        return [changed for launch in C.launch_plan(fn, **device) if (changed := change(dict(launch))) is not None]

    return launch_plan


def test_every_kernel_fits_the_h200(C):
    rows, violations, totals = gate.check(C)
    print(gate.format_table(rows, totals))
    assert not violations, "\n".join(violations)
    assert totals["kernels"] > 0 and all(row.launches for row in rows)
    # The persistent LSTM kernels were planned (so their shared memory was checked) in every dtype.
    assert set(totals["largest_persistent_lstm_hidden"]) == set(gate.DTYPES)


def test_gate_fails_on_a_spill(C):
    report = C.ptxas_report()
    needle = "0 bytes spill stores"
    assert needle in report
    _, violations, _ = gate.check(
        Doctored(C, ptxas_report=lambda: report.replace(needle, "16 bytes spill stores", 1)), FEW_LSTM_SIZES
    )
    assert [v for v in violations if "spills 16 B stored" in v], violations


def test_gate_fails_on_a_missing_opt_in(C):
    def forget_opt_in(launch):
        launch["smem_opt_in"] = 0
        return launch

    _, violations, _ = gate.check(Doctored(C, launch_plan=doctored_plan(C, forget_opt_in)), FEW_LSTM_SIZES)
    flagged = [v for v in violations if "MaxDynamicSharedMemorySize to 0" in v]
    assert flagged and all(any(name in v for name in ("attention", "lstm", "_sm90_kernel")) for v in flagged)
    for gemm in (
        "linear_act_sm90",
        "linear_act_dgrad_sm90",
        "linear_act_wgrad_sm90",
        "conv2d_act_sm90",
        "conv2d_act_dgrad_sm90",
        "conv2d_act_wgrad_sm90",
    ):
        assert [v for v in flagged if gemm in v], (gemm, violations)


def test_gate_fails_on_a_byte_too_many(C):
    state = {"done": False}

    def one_byte_over(launch):
        if launch["cooperative"] and not state["done"]:
            state["done"] = True
            launch["smem"] = launch["smem_opt_in"] = gate.MAX_DYNAMIC_SMEM_OPTIN + 1
        return launch

    _, violations, _ = gate.check(Doctored(C, launch_plan=doctored_plan(C, one_byte_over)), FEW_LSTM_SIZES)
    assert [v for v in violations if f"> {gate.MAX_DYNAMIC_SMEM_OPTIN} B per block" in v], violations


def test_gate_fails_on_too_many_registers_per_block(C):
    def wide_blocks(launch):
        if launch["kernel"].startswith("lstm_fwd_kernel"):
            launch["block"] = 1024
        return launch

    _, violations, _ = gate.check(Doctored(C, launch_plan=doctored_plan(C, wide_blocks)), FEW_LSTM_SIZES)
    assert [v for v in violations if "registers per block of 1024 threads" in v], violations


def test_gate_fails_on_a_kernel_no_case_launches(C):
    def drop_grad_gates(launch):
        return None if launch["kernel"].startswith("lstm_cell_grad_gates_kernel") else launch

    _, violations, _ = gate.check(Doctored(C, launch_plan=doctored_plan(C, drop_grad_gates)), FEW_LSTM_SIZES)
    missing = [v for v in violations if "no plan case launches it" in v]
    assert len(missing) == len(gate.DTYPES) and all("lstm_cell_grad_gates_kernel" in v for v in missing), violations


def test_gate_fails_on_a_launch_ptxas_did_not_report(C):
    def unknown(launch):
        if launch["kernel"].startswith("attention_fwd_kernel"):
            launch["kernel"] = "<unregistered kernel>"
        return launch

    _, violations, _ = gate.check(Doctored(C, launch_plan=doctored_plan(C, unknown)), FEW_LSTM_SIZES)
    assert [v for v in violations if "launches <unregistered kernel>" in v], violations


def test_kernel_key_joins_demangled_names_and_labels():
    anon = "deepfuse::(anonymous namespace)::"
    gemm = f"deepfuse::FusedGemm<{anon}InputPatches, {anon}WeightTaps, {anon}PixelChannels>"
    demangled = f"void deepfuse::gemm_detail::fused_gemm_wmma_kernel<__half, {gemm} >({gemm})"
    label = "gemm_detail::fused_gemm_wmma_kernel<__half, FusedGemm<InputPatches, WeightTaps, PixelChannels>>"
    key = "fused_gemm_wmma_kernel<__half,FusedGemm<InputPatches,WeightTaps,PixelChannels>>"
    assert gate.kernel_key(demangled) == gate.kernel_key(label) == key
    assert gate.kernel_key("void ns::(anonymous namespace)::k<float, 128>(ns::P)") == "k<float,128>"


def test_parse_ptxas_reads_entries_and_callee_spills():
    report = "\n".join(
        [
            "ptxas info    : Compiling entry function '_Z1kv' for 'sm_80'",
            "ptxas info    : Used 10 registers",
            "ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'",
            "ptxas info    : Function properties for _Z1kv",
            "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads",
            "ptxas info    : Used 40 registers, used 1 barriers, 8 bytes cumulative stack size, 2048 bytes smem",
            "ptxas info    : Function properties for _Z6helperv",
            "    16 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads",
        ]
    )
    kernels, callee_spills = gate.parse_ptxas(report)
    assert list(kernels) == ["k"]
    k = kernels["k"]
    assert (k.arch, k.registers, k.spill_stores, k.spill_loads, k.stack, k.static_smem) == ("sm_90", 40, 4, 4, 8, 2048)
    assert len(callee_spills) == 1 and callee_spills[0].startswith("helper()")
    with pytest.raises(ValueError, match="no kernels for sm_90"):
        gate.parse_ptxas(report.replace("sm_90", "sm_100"))


# ------------------------------------------------------------------------------------------------ SASS markers
SM90_GEMMS = {
    f"linear_act_{part}sm90_kernel<{dtype}>" for part in ("", "dgrad_", "wgrad_") for dtype in ("half_t", "bfloat16_t")
}
# conv2d_act's implicit GEMM: TMA (im2col) loads and wgmma, but no setmaxnreg (CUTLASS 4.2's only sm_90 conv schedule
# is the plain warp-specialised one; gate.SM90A_REQUIRED_BY_PREFIX).
SM90_CONVS = {
    f"conv2d_act_{part}sm90_kernel<{dtype}>" for part in ("", "dgrad_", "wgrad_") for dtype in ("half_t", "bfloat16_t")
}


@pytest.fixture(scope="module")
def sass(C):
    return gate.module_sass(C)


def test_every_sm90a_kernel_shows_its_hopper_instructions(C, sass):
    markers, violations = gate.check_sass(C, sass)
    print(gate.format_sass_table(markers))
    assert not violations, "\n".join(violations)
    hopper = {label for label, arch in markers if arch == "sm_90a"}
    assert hopper >= SM90_GEMMS | SM90_CONVS, hopper
    for label in SM90_GEMMS | SM90_CONVS:  # TMA stores in the epilogue too, and no Ampere mma.sync
        assert {"UTMASTG"} <= markers[label, "sm_90a"] and "HMMA.16816" not in markers[label, "sm_90a"]
    for label in SM90_CONVS:  # as designed: see SM90_CONVS
        assert {"HGMMA", "UTMALDG"} <= markers[label, "sm_90a"] and "USETMAXREG" not in markers[label, "sm_90a"]
    for dtype in ("__half", "__nv_bfloat16"):  # the conv's activation pass: elementwise, nothing to promise
        assert not markers[f"conv2d_act_activation_pass_kernel<{dtype}>", "sm_90a"] & {"HGMMA", "HMMA.16816"}
    # The portable WMMA GEMMs (the path on other chips, and for calls TMA cannot take) are on mma.sync, as they were.
    wmma = [found for (label, arch), found in markers.items() if label.startswith("fused_gemm_wmma_kernel<")]
    assert wmma and all("HMMA.16816" in found and "HGMMA" not in found for found in wmma)


def test_sass_gate_fails_on_a_missing_marker(C, sass):
    without = "\n".join(line for line in sass.splitlines() if "USETMAXREG" not in line)
    _, violations = gate.check_sass(C, without)
    assert sorted(v.split(" ")[0] for v in violations if "lacks USETMAXREG" in v) == sorted(SM90_GEMMS), violations


def test_sass_gate_fails_on_a_conv_kernel_without_tma_loads(C, sass):
    without = "\n".join(line for line in sass.splitlines() if "UTMALDG" not in line)
    _, violations = gate.check_sass(C, without)
    flagged = sorted(v.split(" ")[0] for v in violations if "lacks" in v and "UTMALDG" in v)
    assert flagged == sorted(SM90_GEMMS | SM90_CONVS), violations


def test_sass_gate_fails_without_sm90a_kernels(C, sass):
    _, violations = gate.check_sass(C, sass.replace("arch = sm_90a", "arch = sm_90"))
    assert [v for v in violations if "no sm_90a kernel" in v], violations


def test_sass_gate_fails_on_a_performance_loss_line(C, sass):
    line = "ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized"
    doctored = Doctored(C, ptxas_report=lambda: C.ptxas_report() + line + "\n")
    _, violations = gate.check_sass(doctored, sass)
    assert violations == [f"ptxas: {line}"], violations


def test_parse_sass_reads_arch_functions_and_markers():
    text = "\n".join(
        [
            "arch = sm_90a",
            "\t\tFunction : _Z1kv",
            "        /*0010*/                   USETMAXREG.DEALLOC.CTAPOOL 0x28 ;",
            "        /*0020*/                   UTMALDG.2D [UR8], [UR14] ;",
            "        /*0030*/                   HGMMA.64x256x16.F32.BF16 R24, gdesc[UR4], RZ ;",
            "arch = sm_90",
            "\t\tFunction : _Z1kv",
            "        /*0040*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;",
        ]
    )
    assert gate.parse_sass(text) == {
        ("k", "sm_90a"): {"USETMAXREG", "UTMALDG", "HGMMA"},
        ("k", "sm_90"): {"HMMA.16816"},
    }
