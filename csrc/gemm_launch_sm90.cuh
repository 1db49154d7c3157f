// Launching a CUTLASS 3.x sm_90a GEMM (gemm_sm90.cu's forward, linear_act_bwd_sm90.cu's dgrad and wgrad): the device
// and SM count filled in, and in a dry run the grid as the kernel's persistent scheduler sizes it.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

#include <climits>
#include <cstdint>

#include "common.cuh"
#include "dry_run.h"
#include "sm90_kernel.cuh"

namespace deepfuse {

namespace sm90 {

// Why linear_act's sm_90a GEMMs (forward, dgrad, wgrad) cannot read x (M x K) and W (N x K) by TMA, or null: the
// sizes, the contiguous K dimension, 16-byte row strides. Dtype and pointers are each caller's to check.
inline const char* operand_refusal(int64_t M, int64_t N, int64_t K, int64_t x_stride_m, int64_t x_stride_k,
                                   int64_t w_stride_n, int64_t w_stride_k) {
  if (M == 0 || N == 0 || K == 0) return "an empty product (M, N or K is 0)";
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX) return "M, N or K exceeds 2^31 - 1";
  if (x_stride_k != 1 || w_stride_k != 1) return "x or weight has a non-contiguous K dimension (TMA needs it)";
  if (N % kAlignment != 0 || K % kAlignment != 0) return "N or K is not a multiple of 8 (TMA needs 16-byte row strides)";
  if (x_stride_m % kAlignment != 0 || w_stride_n % kAlignment != 0) {
    return "a row stride of x or weight is not a multiple of 8 elements (TMA needs 16-byte strides)";
  }
  if (x_stride_m < K || w_stride_n < K) return "x or weight rows overlap (row stride < K)";
  return nullptr;
}

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
