"""Turns csrc/lstm.cu into a host .cpp for shim.h: the source unchanged except for its GPU-only seams (the mma.h and
cooperative_groups.h includes, the extern shared declaration, check_device_ready, and the device-query and launch
helpers, which the shim answers from the SHIM_SMS / SHIM_OPTIN / SHIM_COOP / SHIM_OCC environment variables).

The asserts fail loudly when lstm.cu's seams change: update the replacements below rather than loosening them."""

from pathlib import Path

HERE = Path(__file__).resolve().parent

SMEM_DECL = "extern __shared__ __align__(128) unsigned char smem[];"

DEVICE_CAPS = """DeviceCaps device_caps() {
  DeviceCaps caps;
  caps.sms = shim_env("SHIM_SMS", 132);
  caps.smem_optin = shim_env("SHIM_OPTIN", 232448);
  caps.cooperative = shim_env("SHIM_COOP", 1) != 0;
  return caps;
}
"""

ALLOW_SMEM = """template <typename Params>
void allow_smem(void (*)(Params), size_t smem_bytes) {
  if (smem_bytes > static_cast<size_t>(shim_env("SHIM_OPTIN", 232448))) throw std::runtime_error("shim: smem > opt-in");
}
"""

BLOCKS_PER_SM = """template <typename Params>
int blocks_per_sm(void (*kernel)(Params), size_t smem_bytes) {
  allow_smem(kernel, smem_bytes);
  // An H100/H200 SM has 228 KB of shared memory, 1 KB of it reserved per block; at most SHIM_OCC blocks.
  const int by_smem = static_cast<int>(233472 / (smem_bytes + 1024));
  return std::min(shim_env("SHIM_OCC", 2), by_smem);
}
"""

LAUNCH_KERNEL = """template <typename Params>
void launch_kernel(void (*kernel)(Params), dim3 grid, size_t smem_bytes, const Params& p, bool cooperative,
                   cudaStream_t) {
  if (cooperative) {
    const DeviceCaps caps = device_caps();
    if (!caps.cooperative) throw std::runtime_error("shim: cooperative launch on a device without it");
    const long capacity = static_cast<long>(blocks_per_sm(kernel, smem_bytes)) * caps.sms;
    if (static_cast<long>(grid.x) * grid.y > capacity) throw std::runtime_error("shim: cooperative grid too large");
  }
  shim::launch(kernel, grid, kThreads, smem_bytes, p, cooperative);
}
"""

PRELUDE = """#include "shim.h"
#include <cstdlib>
static int shim_env(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}
"""


def replace_function(text: str, signature: str, body: str) -> str:
    start = text.index(signature)
    end = text.index("\n}\n", start) + 3
    return text[:start] + body + text[end:]


def host_source(lstm_cu: Path) -> str:
    src = lstm_cu.read_text()
    out = src.replace("#include <mma.h>\n", "").replace("#include <cooperative_groups.h>\n", "")
    assert out.count(SMEM_DECL) == 2, f"expected 2 extern shared declarations, found {out.count(SMEM_DECL)}"
    out = out.replace(SMEM_DECL, "unsigned char* smem = shim::t_block->smem;")
    assert out.count("check_device_ready();") == 5, "check_device_ready() call sites changed"
    out = out.replace("check_device_ready();", "/* check_device_ready() */")
    out = replace_function(out, "DeviceCaps device_caps() {", DEVICE_CAPS)
    out = replace_function(out, "template <typename Params>\nvoid allow_smem(", ALLOW_SMEM)
    out = replace_function(out, "template <typename Params>\nint blocks_per_sm(", BLOCKS_PER_SM)
    out = replace_function(out, "template <typename Params>\nvoid launch_kernel(", LAUNCH_KERNEL)
    return PRELUDE + out + (HERE / "driver_lstm.inc").read_text()


def write_host_source(lstm_cu: Path, out_path: Path) -> Path:
    out_path.write_text(host_source(lstm_cu))
    return out_path
