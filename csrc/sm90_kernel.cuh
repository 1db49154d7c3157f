// What every sm_90a CUTLASS kernel of deepfuse._C shares (gemm_sm90.cu, linear_act_bwd_sm90.cu, conv2d_act_sm90.cu,
// conv2d_act_bwd_sm90.cu): TMA's alignment, the dtypes they take, CUTLASS's device_kernel under deepfuse's own name,
// the choice of instantiation by dtype code, and the launch after CUTLASS's own checks (or its record in a dry run).
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/numeric_types.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "dry_run.h"

// Defines the kernel template `name<Element>`: CUTLASS's device_kernel for Operation<Element>::Kernel under deepfuse's
// own name, so that ptxas's report, the SASS and the dry runs name it alike (linear_act_sm90_kernel<half_t>) rather
// than by the whole CUTLASS type.
#define DEEPFUSE_SM90_KERNEL(name, Operation)                                                              \
  template <typename Element>                                                                              \
  __global__ void __launch_bounds__(Operation<Element>::Kernel::MaxThreadsPerBlock,                        \
                                    Operation<Element>::Kernel::MinBlocksPerMultiprocessor)                \
      name(const __grid_constant__ typename Operation<Element>::Params params) {                           \
    extern __shared__ char smem[];                                                                         \
    typename Operation<Element>::Kernel op;                                                                \
    op(params, smem);                                                                                      \
  }

namespace deepfuse {

namespace sm90 {

// 16-byte TMA strides, pointers and vector accesses: 8 elements of a 2-byte type.
constexpr int kAlignment = 8;
constexpr int64_t kAlignmentBytes = 16;

inline bool aligned(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % kAlignmentBytes == 0; }

// Why the sm_90a kernels cannot take a dtype code, or null for float16 and bfloat16.
inline const char* dtype_refusal(int dtype) {
  return dtype == static_cast<int>(DType::kFloat16) || dtype == static_cast<int>(DType::kBFloat16)
             ? nullptr
             : "the sm_90a kernels take float16 and bfloat16 only";
}

// fn(cutlass::bfloat16_t{}) for a bfloat16 call, fn(cutlass::half_t{}) otherwise: the refusals let only these two
// dtypes through, and fn picks its instantiation from its argument's type.
template <typename Fn>
decltype(auto) by_dtype(int dtype, Fn&& fn) {
  if (dtype == static_cast<int>(DType::kBFloat16)) return fn(cutlass::bfloat16_t{});
  return fn(cutlass::half_t{});
}

// Launches `kernel` (a DEEPFUSE_SM90_KERNEL of the CUTLASS kernel type Kernel) on `stream`. `what` names the call in
// the errors; its refusal check accepted it, so CUTLASS refusing it (or asking for a workspace, which no launcher of
// ours allocates) is a bug.
template <typename Kernel, typename Params>
void launch_checked(void (*kernel)(const Params), const typename Kernel::Arguments& args, const char* what,
                    cudaStream_t stream) {
  if (Kernel::get_workspace_size(args) != 0) {
    throw std::logic_error(std::string(what) + ": the kernel asks for a workspace, which this launcher never allocates");
  }
  if (!Kernel::can_implement(args)) {
    throw std::logic_error(std::string(what) + ": CUTLASS refused a call that its refusal check accepted");
  }
  const Params params = Kernel::to_underlying_arguments(args, nullptr);
  set_max_dynamic_smem(kernel, Kernel::SharedStorageSize);
  kernel<<<Kernel::get_grid_shape(params), Kernel::get_block_shape(), Kernel::SharedStorageSize, stream>>>(params);
  DEEPFUSE_CUDA_CHECK(cudaGetLastError());
}

// Records `kernel`'s launch in a dry run, its grid from `params` (what sizes it filled in: the problem shape, and a
// persistent kernel's scheduler; the TMA descriptors, driver calls, are left out).
template <typename Kernel, typename Params>
void record_launch(void (*kernel)(const Params), const Params& params) {
  set_max_dynamic_smem(kernel, Kernel::SharedStorageSize);
  dry_launch(kernel, Kernel::get_grid_shape(params), Kernel::get_block_shape(), Kernel::SharedStorageSize, false);
}

}  // namespace sm90

}  // namespace deepfuse
