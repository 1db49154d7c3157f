// conv2d_act forward on sm_90a: y = act(conv2d(x, W) + b + residual), z = the same before act optionally stored,
// from CUTLASS 3.x's conv collective builders. One kernel per dtype: the activation is a run-time argument of the
// epilogue, not a template parameter, which keeps the build (2 instantiations) short.
//   mainloop  KernelImplicitTmaWarpSpecializedSm90: a producer warpgroup issues TMA im2col loads of x (NHWC; the
//             padding, stride and dilation are in the descriptor, out-of-image taps read as zeros) and TMA loads of
//             W (KRSC) into a multi-stage mbarrier pipeline; a consumer warpgroup runs wgmma on a 128x128x64 tile
//             (fp32 accumulators). CUTLASS 4.2 has no persistent (cooperative, ping-pong) schedule for conv: its
//             conv dispatch policy static_asserts "Persistent schedules not support for conv yet", and the plain
//             warp-specialised kernel does not use setmaxnreg.
//   epilogue  LinCombPerColBiasEltAct: z = acc + residual (the C source, beta = 1; beta = 0 skips its load)
//             + bias[cout] (fp32), D = act(z) through an im2col TMA store.
//   pre-activation  CUTLASS 4.2's aux store (Sm90AuxStore) has only a tiled TMA store, which cannot tile the conv
//             output's (ow, oh, n) pixel mode (its make_tma_copy fails to compile), so a call that wants z runs the
//             same kernel with activation "none" and D = z, then conv2d_act_activation_pass_kernel: y = act(z),
//             16 bytes a thread. The extra pass re-reads z and writes y (2 bytes a pixel-channel each way more than
//             a fused aux store would); only training with gelu/gelu_tanh/silu/sigmoid/tanh pays it.
// GEMM view: M = output pixels (n, oh, ow), N = output channels, K = (kh, kw, ci).
#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/kernel_hardware_info.h>  // before the conv builders, which use it without including it
#include <cutlass/conv/collective/collective_builder.hpp>
#include <cutlass/conv/convnd_problem_shape.hpp>
#include <cutlass/conv/dispatch_policy.hpp>
#include <cutlass/conv/kernel/conv_universal.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "activation_sm90.cuh"
#include "common.cuh"
#include "conv2d_act_sm90.h"
#include "conv_sm90_common.cuh"

namespace deepfuse {

namespace conv_sm90 {

template <typename Element>
struct Conv2dActFprop {
  using Layout = cutlass::layout::TensorNHWC;
  using TileShape = cute::Shape<cute::_128, cute::_128, cute::Shape<cute::_64>>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using Fusion = cutlass::epilogue::fusion::LinCombPerColBiasEltAct<sm90::ActivationByCode, Element, float, /*bias*/ Element,
                                                                    /*source*/ Element, float, kAlignment>;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, /*C*/ Element, Layout, kAlignment, Element,
      Layout, kAlignment, cutlass::epilogue::TmaWarpSpecialized, Fusion>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop, Element, Layout,
      kAlignment, Element, Layout, kAlignment, float, TileShape, ClusterShape,
      cutlass::conv::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;
  using ProblemShape = typename CollectiveMainloop::ProblemShape;
  using Kernel = cutlass::conv::kernel::ConvUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Params = typename Kernel::Params;
};

// The activation pass: 8 elements (16 bytes) a vector, 256 threads a block, a grid-stride loop over a grid of at
// most kPassBlocksPerSm blocks per SM.
constexpr int kPassVector = 8;
constexpr int kPassThreads = 256;
constexpr int kPassBlocksPerSm = 8;

// The pass over the output's vectors: pixels (n, oh, ow) times channels / 8, with y's strides (z has the same ones).
template <typename T>
struct ActivationPass {
  const T* z;
  T* y;
  Activation act;
  int64_t out_height, out_width, channel_vectors, vectors;
  Strides4 strides;
  bool dense;  // NHWC without padding: vector i is at element 8 i
  __device__ __forceinline__ int64_t offset(int64_t i) const {
    if (dense) return i * kPassVector;
    const int64_t pixel = i / channel_vectors, vector = i % channel_vectors;
    const int64_t ow = pixel % out_width, rest = pixel / out_width;
    return (rest / out_height) * strides.n + (rest % out_height) * strides.h + ow * strides.w + vector * kPassVector;
  }
};

}  // namespace conv_sm90

DEEPFUSE_SM90_KERNEL(conv2d_act_sm90_kernel, conv_sm90::Conv2dActFprop)

// y = act(z) for a call that wants the pre-activation z (which the CUTLASS kernel stored with activation "none").
// T is __half or __nv_bfloat16; every vector is 16-byte aligned (the refusal checked pointers, strides, channels).
template <typename T>
__global__ void __launch_bounds__(conv_sm90::kPassThreads)
    conv2d_act_activation_pass_kernel(const conv_sm90::ActivationPass<T> pass) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < pass.vectors; i += step) {
    const int64_t offset = pass.offset(i);
    union {
      uint4 bits;
      T values[conv_sm90::kPassVector];
    } v;
    v.bits = *reinterpret_cast<const uint4*>(pass.z + offset);
#pragma unroll
    for (int e = 0; e < conv_sm90::kPassVector; ++e) {
      v.values[e] = from_float<T>(apply_activation(to_float<T>(v.values[e]), pass.act));
    }
    *reinterpret_cast<uint4*>(pass.y + offset) = v.bits;
  }
}

namespace {

const RegisterKernelLabels kKernelLabels{
    DEEPFUSE_KERNEL_LABEL(conv2d_act_sm90_kernel<cutlass::half_t>),
    DEEPFUSE_KERNEL_LABEL(conv2d_act_sm90_kernel<cutlass::bfloat16_t>),
    DEEPFUSE_KERNEL_LABEL(conv2d_act_activation_pass_kernel<__half>),
    DEEPFUSE_KERNEL_LABEL(conv2d_act_activation_pass_kernel<__nv_bfloat16>),
};

using conv_sm90::aligned;
using conv_sm90::strides_aligned;

template <typename Element>
typename conv_sm90::Conv2dActFprop<Element>::Kernel::Arguments kernel_arguments(const Conv2dActFwdArgs& a) {
  using Conv = conv_sm90::Conv2dActFprop<Element>;
  using Kernel = typename Conv::Kernel;
  typename Kernel::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = conv_sm90::problem_shape<typename Conv::ProblemShape>(a.shape, a.x_strides, a.w_strides, a.y_strides);
  args.mainloop.ptr_A = static_cast<const Element*>(a.x);
  args.mainloop.ptr_B = static_cast<const Element*>(a.weight);
  const auto dD = conv_sm90::nhwc_epilogue_stride<typename Kernel::CollectiveEpilogue::StrideD>(a.y_strides);
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.0f;
  fusion.bias_ptr = static_cast<const Element*>(a.bias);  // null: no bias (the broadcast reads zeros)
  // A wanted pre-activation leaves the kernel as D; the activation pass then makes y from it.
  fusion.activation.code = a.preact != nullptr ? static_cast<int>(Activation::kNone) : a.activation;
  void* d = a.preact != nullptr ? a.preact : a.y;
  if (a.residual != nullptr) {
    fusion.beta = 1.0f;
    args.epilogue.ptr_C = static_cast<const Element*>(a.residual);
    args.epilogue.dC = conv_sm90::nhwc_epilogue_stride<typename Kernel::CollectiveEpilogue::StrideC>(a.residual_strides);
  } else {
    // beta = 0 skips the C load; its TMA descriptor still wants a valid tensor, so it describes D.
    fusion.beta = 0.0f;
    args.epilogue.ptr_C = static_cast<const Element*>(d);
    args.epilogue.dC = dD;
  }
  args.epilogue.ptr_D = static_cast<Element*>(d);
  args.epilogue.dD = dD;
  return args;  // hw_info stays unset: the kernel is not persistent (one CTA per output tile)
}

template <typename Element>
bool cutlass_can_implement(const Conv2dActFwdArgs& a) {
  return conv_sm90::Conv2dActFprop<Element>::Kernel::can_implement(kernel_arguments<Element>(a));
}

// y = act(z) over the output, z = a.preact (same strides as y).
template <typename T>
void run_activation_pass(const Conv2dActFwdArgs& a, cudaStream_t stream) {
  const ConvShape& s = a.shape;
  const Strides4& t = a.y_strides;
  conv_sm90::ActivationPass<T> pass{};
  pass.z = static_cast<const T*>(a.preact);
  pass.y = static_cast<T*>(a.y);
  pass.act = static_cast<Activation>(a.activation);
  pass.out_height = s.out_height;
  pass.out_width = s.out_width;
  pass.channel_vectors = s.out_channels / conv_sm90::kPassVector;
  pass.vectors = s.batch * s.out_height * s.out_width * pass.channel_vectors;
  pass.strides = t;
  pass.dense = t.w == s.out_channels && t.h == s.out_width * t.w && t.n == s.out_height * t.h;
  const int64_t blocks = std::min<int64_t>(ceil_div(pass.vectors, conv_sm90::kPassThreads),
                                           static_cast<int64_t>(multiprocessor_count()) * conv_sm90::kPassBlocksPerSm);
  auto* kernel = &conv2d_act_activation_pass_kernel<T>;
  const dim3 grid(static_cast<unsigned>(blocks));
  if (dry_launch(kernel, grid, conv_sm90::kPassThreads, 0, false)) return;
  kernel<<<grid, conv_sm90::kPassThreads, 0, stream>>>(pass);
  DEEPFUSE_CUDA_CHECK(cudaGetLastError());
}

template <typename Element>
void run(const Conv2dActFwdArgs& a, cudaStream_t stream) {
  conv_sm90::launch_conv<conv_sm90::Conv2dActFprop<Element>>(&conv2d_act_sm90_kernel<Element>,
                                                              kernel_arguments<Element>(a), "conv2d_act sm_90a", stream);
  if (a.preact == nullptr) return;
  if (std::is_same_v<Element, cutlass::bfloat16_t>) {
    run_activation_pass<__nv_bfloat16>(a, stream);
  } else {
    run_activation_pass<__half>(a, stream);
  }
}

// The call with every size-1 dimension's stride settled (conv_sm90::settle_unit_dims).
Conv2dActFwdArgs settled(Conv2dActFwdArgs a) {
  const ConvShape& s = a.shape;
  a.x_strides = conv_sm90::settle_unit_dims(a.x_strides, s.batch, s.in_channels, s.height, s.width);
  a.w_strides = conv_sm90::settle_unit_dims(a.w_strides, s.out_channels, s.in_channels, s.kernel_h, s.kernel_w);
  a.y_strides = conv_sm90::settle_unit_dims(a.y_strides, s.batch, s.out_channels, s.out_height, s.out_width);
  a.residual_strides =
      conv_sm90::settle_unit_dims(a.residual_strides, s.batch, s.out_channels, s.out_height, s.out_width);
  return a;
}

}  // namespace

const char* conv2d_act_fwd_sm90_refusal(const Conv2dActFwdArgs& call) {
  const Conv2dActFwdArgs a = settled(call);
  const ConvShape& s = a.shape;
  if (const char* refusal = sm90::dtype_refusal(a.dtype)) return refusal;
  if (const char* refusal = conv_sm90::geometry_refusal(s)) return refusal;
  if (a.x_strides.c != 1) return "x is not channels_last (TMA im2col needs NHWC)";
  if (a.w_strides.c != 1) return "weight is not channels_last (the kernel reads it as KRSC)";
  if (a.y_strides.c != 1) return "y is not channels_last (the epilogue stores NHWC)";
  if (a.residual != nullptr && a.residual_strides.c != 1) return "residual is not channels_last";
  if (!strides_aligned(a.x_strides) || !strides_aligned(a.w_strides) || !strides_aligned(a.y_strides) ||
      (a.residual != nullptr && !strides_aligned(a.residual_strides))) {
    return "a stride of x, weight, y or residual is not a multiple of 8 elements (TMA needs 16-byte strides)";
  }
  if (!aligned(a.x) || !aligned(a.weight) || !aligned(a.y) || !aligned(a.bias) || !aligned(a.residual) ||
      !aligned(a.preact)) {
    return "a pointer is not 16-byte aligned (TMA needs it)";
  }
  const bool implementable =
      sm90::by_dtype(a.dtype, [&](auto element) { return cutlass_can_implement<decltype(element)>(a); });
  if (!implementable) return "CUTLASS's can_implement refused the problem (TMA im2col corner or alignment limits)";
  return nullptr;
}

const char* conv2d_act_fwd_sm90_kernel_label(int dtype) {
  return dtype == static_cast<int>(DType::kBFloat16) ? "conv2d_act_sm90_kernel<cutlass::bfloat16_t>"
                                                     : "conv2d_act_sm90_kernel<cutlass::half_t>";
}

const char* conv2d_act_fwd_sm90_activation_pass_label(int dtype) {
  return dtype == static_cast<int>(DType::kBFloat16) ? "conv2d_act_activation_pass_kernel<__nv_bfloat16>"
                                                     : "conv2d_act_activation_pass_kernel<__half>";
}

void conv2d_act_fwd_sm90(const Conv2dActFwdArgs& args, cudaStream_t stream) {
  if (const char* refusal = conv2d_act_fwd_sm90_refusal(args)) {
    throw std::invalid_argument(std::string("conv2d_act sm_90a: ") + refusal);
  }
  sm90::by_dtype(args.dtype, [&](auto element) { run<decltype(element)>(settled(args), stream); });
}

}  // namespace deepfuse
