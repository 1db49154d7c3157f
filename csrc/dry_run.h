// Dry runs: the launchers' own host code with every device call recorded instead of made. Under one, a machine
// without a GPU sees the launches the launchers would make on a given device: which kernel instantiation, grid,
// block, dynamic shared memory, and the cudaFuncAttributeMaxDynamicSharedMemorySize opt-in set before it.
// deepfuse._C.launch_plan runs a Python callable under one; tests/cuda_resources.py checks what it records against
// the H200's limits. Host-only C++ (included by common.cuh and bindings.cpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace deepfuse {

struct DryLaunch {
  std::string kernel;  // as registered by DEEPFUSE_KERNEL_LABEL, e.g. "attention_fwd_kernel<__half, 256>"
  unsigned grid[3];
  unsigned block;
  size_t smem;         // dynamic shared memory bytes
  size_t smem_opt_in;  // cudaFuncAttributeMaxDynamicSharedMemorySize set for this kernel before the launch; 0: never
  bool cooperative;
};

// The device a dry run pretends to be, and what the launchers did on it.
struct DryRun {
  int sms = 0;
  int smem_optin = 0;               // dynamic shared memory per block with the opt-in
  int smem_per_sm = 0;              // shared memory per SM
  int smem_reserved_per_block = 0;  // what the driver keeps per resident block
  int max_threads_per_sm = 0;
  bool cooperative = false;
  int capability = 0;  // compute capability, major * 10 + minor: which kernels the launchers pick
  std::vector<std::pair<const void*, size_t>> opt_ins;  // kernel, bytes: the latest opt-in of each kernel
  std::vector<DryLaunch> launches;

  void opt_in(const void* kernel, size_t bytes) {
    for (auto& entry : opt_ins) {
      if (entry.first == kernel) {
        entry.second = bytes;
        return;
      }
    }
    opt_ins.emplace_back(kernel, bytes);
  }

  size_t opt_in_of(const void* kernel) const {
    for (const auto& entry : opt_ins) {
      if (entry.first == kernel) return entry.second;
    }
    return 0;
  }

  // Occupancy model for cudaOccupancyMaxActiveBlocksPerMultiprocessor: shared memory and threads only (registers
  // are known only after ptxas; the persistent LSTM kernels' __launch_bounds__(256, 1) guarantees one block). It
  // sizes cooperative grids in dry runs, never shared memory.
  int blocks_per_sm(int threads, size_t smem) const {
    const size_t per_block = smem + static_cast<size_t>(smem_reserved_per_block);
    const int by_smem = static_cast<int>(static_cast<size_t>(smem_per_sm) / std::max<size_t>(per_block, 1));
    return std::min(by_smem, max_threads_per_sm / std::max(threads, 1));
  }
};

// The current thread's dry run, or null (the normal case: launches are real).
inline thread_local DryRun* t_dry_run = nullptr;
inline DryRun* dry_run() { return t_dry_run; }

// Names of kernel instantiations. Each .cu registers the instantiations its launchers use, spelled as c++filt spells
// them less namespaces, so that a dry run's launches join ptxas's report. A launch of an unregistered kernel is
// recorded as "<unregistered kernel>", which the resource gate rejects.
struct KernelLabel {
  const void* kernel;
  const char* label;
};

inline std::vector<KernelLabel>& kernel_labels() {
  static std::vector<KernelLabel> labels;
  return labels;
}

inline const char* kernel_label(const void* kernel) {
  for (const KernelLabel& entry : kernel_labels()) {
    if (entry.kernel == kernel) return entry.label;
  }
  return "<unregistered kernel>";
}

struct RegisterKernelLabels {
  RegisterKernelLabels(std::initializer_list<KernelLabel> labels) {
    kernel_labels().insert(kernel_labels().end(), labels.begin(), labels.end());
  }
};

// DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<__half, 256>): the instantiation and its name, from one spelling.
#define DEEPFUSE_KERNEL_LABEL(...) \
  ::deepfuse::KernelLabel { reinterpret_cast<const void*>(&__VA_ARGS__), #__VA_ARGS__ }

}  // namespace deepfuse
