// Launching a CUTLASS 3.x sm_90a GEMM (gemm_sm90.cu's forward, linear_act_bwd_sm90.cu's dgrad and wgrad) under
// deepfuse's own kernel name: the device and SM count filled in, CUTLASS's own checks, and the dry run (the grid as
// the kernel's persistent scheduler sizes it, recorded instead of launched) in one place.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include <stdexcept>
#include <string>

#include "common.cuh"
#include "dry_run.h"

namespace deepfuse {

namespace sm90 {

// `Gemm` has Kernel (a cutlass::gemm::kernel::GemmUniversal), Params, TileShape and ClusterShape; `what` names the
// call in the errors. The caller's refusal check has accepted the call, so CUTLASS refusing it is a bug.
template <typename Gemm>
void launch_gemm(void (*kernel)(const typename Gemm::Params), typename Gemm::Kernel::Arguments args, const char* what,
                 cudaStream_t stream) {
  using Kernel = typename Gemm::Kernel;
  args.hw_info.device_id = dry_run() == nullptr ? current_device() : 0;
  args.hw_info.sm_count = multiprocessor_count();  // cached per device (common.cuh)
  constexpr size_t smem = Kernel::SharedStorageSize;
  const dim3 block = Kernel::get_block_shape();
  if (dry_run() != nullptr) {
    // The grid as the kernel's own scheduler sizes it; the TMA descriptors (driver calls) are left out.
    typename Kernel::Params params{};
    params.problem_shape = args.problem_shape;
    params.hw_info = args.hw_info;
    params.scheduler = Kernel::TileScheduler::to_underlying_arguments(
        cute::append<4>(args.problem_shape, 1), typename Gemm::TileShape{}, typename Gemm::ClusterShape{},
        args.hw_info, args.scheduler, nullptr);
    set_max_dynamic_smem(kernel, smem);
    dry_launch(kernel, Kernel::get_grid_shape(params), block, smem, false);
    return;
  }
  if (Kernel::get_workspace_size(args) != 0) {
    throw std::logic_error(std::string(what) + ": a GEMM asks for a workspace, which this launcher never allocates");
  }
  if (!Kernel::can_implement(args)) {
    throw std::logic_error(std::string(what) + ": CUTLASS refused a call that its refusal check accepted");
  }
  const typename Kernel::Params params = Kernel::to_underlying_arguments(args, nullptr);
  set_max_dynamic_smem(kernel, smem);
  kernel<<<Kernel::get_grid_shape(params), block, smem, stream>>>(params);
  DEEPFUSE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sm90

}  // namespace deepfuse
