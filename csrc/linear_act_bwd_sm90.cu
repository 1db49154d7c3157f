// linear_act backward on sm_90a: the two GEMMs of the gradient, from CUTLASS 3.x's collective builders, on dz
// (M, N) = dy * act'(saved), which linear_act.cu stores first:
//   dgrad  dx (M, K) = dz (M, N) W (N, K)       A = dz K-major (row-major), B = W N-major (MN-major)
//   wgrad  dW (N, K) = dz^T (N, M) x (M, K)     A = dz^T M-major (MN-major), B = x N-major (MN-major)
// (GEMM M, N, K named M', N', K' below.) wgmma reads MN-major 16-bit operands from shared memory as they are, so
// no transpose is materialised. One tile shape and a plain epilogue (D = acc, cast once, TMA stores) keep the
// build to 4 instantiations (2 GEMMs x fp16/bf16).
//   mainloop  KernelTmaWarpSpecializedCooperative: a producer warpgroup issues TMA loads into a multi-stage
//             mbarrier pipeline, two consumer warpgroups run wgmma on a 128x256x64 tile (fp32 accumulators);
//             setmaxnreg moves registers from the producer to the consumers; a persistent tile scheduler.
#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/kernel_hardware_info.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "gemm_launch_sm90.cuh"
#include "linear_act_bwd_sm90.h"

namespace deepfuse {

namespace sm90 {


// D (row-major) = A B in fp32, stored once in Element. LayoutA/LayoutB are CUTLASS's tags for (M', K') and (K', N').
template <typename Element, typename LayoutA, typename LayoutB>
struct PlainGemm {
  using LayoutD = cutlass::layout::RowMajor;
  using TileShape = cute::Shape<cute::_128, cute::_256, cute::_64>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, /*C*/ void, LayoutD, kAlignment, Element,
      LayoutD, kAlignment, cutlass::epilogue::TmaWarpSpecializedCooperative>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA, kAlignment, Element, LayoutB,
      kAlignment, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue>;
  using Params = typename Kernel::Params;
};

template <typename Element>
using DgradGemm = PlainGemm<Element, cutlass::layout::RowMajor, cutlass::layout::RowMajor>;
template <typename Element>
using WgradGemm = PlainGemm<Element, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;

}  // namespace sm90

DEEPFUSE_SM90_KERNEL(linear_act_dgrad_sm90_kernel, sm90::DgradGemm)

DEEPFUSE_SM90_KERNEL(linear_act_wgrad_sm90_kernel, sm90::WgradGemm)

namespace {

const RegisterKernelLabels kKernelLabels{
    DEEPFUSE_KERNEL_LABEL(linear_act_dgrad_sm90_kernel<cutlass::half_t>),
    DEEPFUSE_KERNEL_LABEL(linear_act_dgrad_sm90_kernel<cutlass::bfloat16_t>),
    DEEPFUSE_KERNEL_LABEL(linear_act_wgrad_sm90_kernel<cutlass::half_t>),
    DEEPFUSE_KERNEL_LABEL(linear_act_wgrad_sm90_kernel<cutlass::bfloat16_t>),
};

// One GEMM D (M' x N', row-major, leading dimension ldd) = A B, launched (or, in a dry run, recorded) on `stream`.
template <typename Gemm>
void run_gemm(void (*kernel)(const typename Gemm::Params), int64_t m, int64_t n, int64_t k,
              const typename Gemm::Kernel::CollectiveMainloop::ElementA* a,
              typename Gemm::Kernel::CollectiveMainloop::StrideA stride_a,
              const typename Gemm::Kernel::CollectiveMainloop::ElementB* b,
              typename Gemm::Kernel::CollectiveMainloop::StrideB stride_b,
              typename Gemm::Kernel::CollectiveEpilogue::ElementD* d, int64_t ldd, cudaStream_t stream) {
  using Kernel = typename Gemm::Kernel;
  typename Kernel::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = {static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1};
  args.mainloop.ptr_A = a;
  args.mainloop.dA = stride_a;
  args.mainloop.ptr_B = b;
  args.mainloop.dB = stride_b;
  args.epilogue.thread.alpha = 1.0f;
  args.epilogue.thread.beta = 0.0f;
  args.epilogue.ptr_C = nullptr;
  args.epilogue.dC = {ldd, cute::_1{}, m * ldd};
  args.epilogue.ptr_D = d;
  args.epilogue.dD = {ldd, cute::_1{}, m * ldd};
  sm90::launch_gemm<Gemm>(kernel, args, "linear_act sm_90a backward", stream);
}

template <typename Element>
void run(const LinearActBwdArgs& a, const void* dz_ptr, cudaStream_t stream) {
  const auto* dz = static_cast<const Element*>(dz_ptr);
  if (a.grad_x != nullptr) {
    // dx (M x K) = dz (M x N) W (N x K): M' = M, N' = K, K' = N. B[n', k'] = W[k', n'].
    using Gemm = sm90::DgradGemm<Element>;
    run_gemm<Gemm>(&linear_act_dgrad_sm90_kernel<Element>, a.M, a.K, a.N, dz, {a.N, cute::_1{}, a.M * a.N},
                   static_cast<const Element*>(a.weight), {cute::_1{}, a.w_stride_n, a.N * a.w_stride_n},
                   static_cast<Element*>(a.grad_x), a.K, stream);
  }
  if (a.grad_weight != nullptr) {
    // dW (N x K) = dz^T (N x M) x (M x K): M' = N, N' = K, K' = M. A[m', k'] = dz[k', m'], B[n', k'] = x[k', n'].
    using Gemm = sm90::WgradGemm<Element>;
    run_gemm<Gemm>(&linear_act_wgrad_sm90_kernel<Element>, a.N, a.K, a.M, dz, {cute::_1{}, a.N, a.M * a.N},
                   static_cast<const Element*>(a.x), {cute::_1{}, a.x_stride_m, a.M * a.x_stride_m},
                   static_cast<Element*>(a.grad_weight), a.K, stream);
  }
}

}  // namespace

const char* linear_act_bwd_sm90_refusal(const LinearActBwdArgs& a) {
  if (const char* refusal = sm90::dtype_refusal(a.dtype)) return refusal;
  if (const char* refusal =
          sm90::operand_refusal(a.M, a.N, a.K, a.x_stride_m, a.x_stride_k, a.w_stride_n, a.w_stride_k)) {
    return refusal;
  }
  using sm90::aligned;
  if (!aligned(a.grad_y) || !aligned(a.saved) || !aligned(a.x) || !aligned(a.weight) || !aligned(a.grad_x) ||
      !aligned(a.grad_weight) || !aligned(a.workspace)) {
    return "a pointer is not 16-byte aligned (TMA needs it)";
  }
  return nullptr;
}

std::string linear_act_bwd_sm90_kernel_labels(int dtype) {
  return dtype == static_cast<int>(DType::kBFloat16)
             ? "linear_act_dgrad_sm90_kernel<cutlass::bfloat16_t> + linear_act_wgrad_sm90_kernel<cutlass::bfloat16_t>"
             : "linear_act_dgrad_sm90_kernel<cutlass::half_t> + linear_act_wgrad_sm90_kernel<cutlass::half_t>";
}

void linear_act_bwd_sm90_gemms(const LinearActBwdArgs& args, const void* dz, cudaStream_t stream) {
  if (const char* refusal = linear_act_bwd_sm90_refusal(args)) {
    throw std::invalid_argument(std::string("linear_act sm_90a backward: ") + refusal);
  }
  sm90::by_dtype(args.dtype, [&](auto element) { run<decltype(element)>(args, dz, stream); });
}

}  // namespace deepfuse
