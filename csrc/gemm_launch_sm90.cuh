// Launching a CUTLASS 3.x sm_90a GEMM (gemm_sm90.cu's forward, linear_act_bwd_sm90.cu's dgrad and wgrad): the device
// and SM count filled in, and in a dry run the grid as the kernel's persistent scheduler sizes it.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include "common.cuh"
#include "dry_run.h"
#include "sm90_kernel.cuh"

namespace deepfuse {

namespace sm90 {

// `Gemm` has Kernel (a cutlass::gemm::kernel::GemmUniversal), Params, TileShape and ClusterShape; `what` names the
// call in the errors.
template <typename Gemm>
void launch_gemm(void (*kernel)(const typename Gemm::Params), typename Gemm::Kernel::Arguments args, const char* what,
                 cudaStream_t stream) {
  using Kernel = typename Gemm::Kernel;
  args.hw_info.device_id = dry_run() == nullptr ? current_device() : 0;
  args.hw_info.sm_count = multiprocessor_count();  // cached per device (common.cuh)
  if (dry_run() == nullptr) {
    launch_checked<Kernel>(kernel, args, what, stream);
    return;
  }
  typename Kernel::Params params{};
  params.problem_shape = args.problem_shape;
  params.hw_info = args.hw_info;
  params.scheduler = Kernel::TileScheduler::to_underlying_arguments(
      cute::append<4>(args.problem_shape, 1), typename Gemm::TileShape{}, typename Gemm::ClusterShape{}, args.hw_info,
      args.scheduler, nullptr);
  record_launch<Kernel>(kernel, params);
}

}  // namespace sm90

}  // namespace deepfuse
