// linear_act forward on sm_90a: y = act(x W^T + b), z = x W^T + b optionally stored, from CUTLASS 3.x's
// collective builders. One kernel per dtype: the activation is a run-time argument of the epilogue, not a
// template parameter, which keeps the build (2 instantiations) short.
//   mainloop  KernelTmaWarpSpecializedCooperative: a producer warpgroup issues TMA loads into a multi-stage
//             mbarrier pipeline, two consumer warpgroups run wgmma on a 128x256x64 tile (fp32 accumulators);
//             setmaxnreg moves registers from the producer to the consumers; a persistent tile scheduler.
//   epilogue  LinCombPerColBiasEltActAux: z = acc + bias[n] (fp32), aux = z (the pre-activation, skipped when
//             its pointer is null), D = act(z); D and aux leave through TMA stores.
// x is (M, K) with K contiguous (row-major A), W is (N, K) with K contiguous (column-major B): the TN layout.
#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/kernel_hardware_info.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "activation_sm90.cuh"
#include "common.cuh"
#include "gemm_launch_sm90.cuh"
#include "gemm_sm90.h"

namespace deepfuse {

namespace sm90 {

// 16-byte TMA strides and vector accesses: 8 elements of a 2-byte type.

template <typename Element>
struct LinearActGemm {
  using Layout = cutlass::layout::RowMajor;
  using TileShape = cute::Shape<cute::_128, cute::_256, cute::_64>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using Fusion = cutlass::epilogue::fusion::LinCombPerColBiasEltActAux<
      Layout, ActivationByCode, Element, float, /*aux*/ Element, /*bias*/ Element, /*source*/ Element, float,
      kAlignment, kAlignment>;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, /*C*/ void, Layout, kAlignment, Element, Layout,
      kAlignment, cutlass::epilogue::TmaWarpSpecializedCooperative, Fusion>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, cutlass::layout::RowMajor, kAlignment, Element,
      cutlass::layout::ColumnMajor, kAlignment, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue>;
  using Params = typename Kernel::Params;
};

}  // namespace sm90

DEEPFUSE_SM90_KERNEL(linear_act_sm90_kernel, sm90::LinearActGemm)

namespace {

const RegisterKernelLabels kKernelLabels{
    DEEPFUSE_KERNEL_LABEL(linear_act_sm90_kernel<cutlass::half_t>),
    DEEPFUSE_KERNEL_LABEL(linear_act_sm90_kernel<cutlass::bfloat16_t>),
};

template <typename Element>
void run(const LinearActFwdArgs& a, cudaStream_t stream) {
  using Gemm = sm90::LinearActGemm<Element>;
  using Kernel = typename Gemm::Kernel;
  typename Kernel::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = {static_cast<int>(a.M), static_cast<int>(a.N), static_cast<int>(a.K), 1};
  args.mainloop.ptr_A = static_cast<const Element*>(a.x);
  args.mainloop.dA = {a.x_stride_m, cute::_1{}, a.M * a.x_stride_m};
  args.mainloop.ptr_B = static_cast<const Element*>(a.weight);
  args.mainloop.dB = {a.w_stride_n, cute::_1{}, a.N * a.w_stride_n};
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.0f;
  fusion.beta = 0.0f;
  fusion.bias_ptr = static_cast<const Element*>(a.bias);  // null: no bias (the broadcast reads zeros)
  fusion.activation.code = a.activation;
  fusion.aux_ptr = static_cast<Element*>(a.preact);  // null: the aux store is skipped
  fusion.dAux = {a.N, cute::_1{}, a.M * a.N};
  args.epilogue.ptr_C = nullptr;
  args.epilogue.dC = {a.N, cute::_1{}, a.M * a.N};
  args.epilogue.ptr_D = static_cast<Element*>(a.y);
  args.epilogue.dD = {a.N, cute::_1{}, a.M * a.N};
  sm90::launch_gemm<Gemm>(&linear_act_sm90_kernel<Element>, args, "linear_act sm_90a", stream);
}

}  // namespace

const char* linear_act_fwd_sm90_refusal(const LinearActFwdArgs& a) {
  if (const char* refusal = sm90::dtype_refusal(a.dtype)) return refusal;
  if (const char* refusal =
          sm90::operand_refusal(a.M, a.N, a.K, a.x_stride_m, a.x_stride_k, a.w_stride_n, a.w_stride_k)) {
    return refusal;
  }
  using sm90::aligned;
  if (!aligned(a.x) || !aligned(a.weight) || !aligned(a.y) || !aligned(a.bias) || !aligned(a.preact)) {
    return "a pointer is not 16-byte aligned (TMA needs it)";
  }
  return nullptr;
}

const char* linear_act_fwd_sm90_kernel_label(int dtype) {
  return dtype == static_cast<int>(DType::kBFloat16) ? "linear_act_sm90_kernel<cutlass::bfloat16_t>"
                                                     : "linear_act_sm90_kernel<cutlass::half_t>";
}

void linear_act_fwd_sm90(const LinearActFwdArgs& args, cudaStream_t stream) {
  if (const char* refusal = linear_act_fwd_sm90_refusal(args)) {
    throw std::invalid_argument(std::string("linear_act sm_90a: ") + refusal);
  }
  sm90::by_dtype(args.dtype, [&](auto element) { run<decltype(element)>(args, stream); });
}

}  // namespace deepfuse
