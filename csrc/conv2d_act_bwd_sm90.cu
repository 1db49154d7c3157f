// conv2d_act backward on sm_90a: the two convolutions of the gradient, from CUTLASS 3.x's conv collective builders,
// on dz = dy * act'(saved) (packed NHWC; grad_preact.cu stores it first, or dz is dy for "none"):
//   dgrad  dx (NHWC) = dz convolved with the flipped W (KRSC): A = dz by TMA im2col, B = W by tiled TMA loads.
//          GEMM view: M = input pixels (n, h, w), N = Cin, K = (Cout, kw, kh).
//   wgrad  dW (KRSC, packed) = dz^T x: A = dz by tiled TMA loads, B = x (packed NHWC) by TMA im2col.
//          GEMM view: M = Cout, N = (ci, kw, kh), K = the output pixels (n, oh, ow).
// Both: KernelImplicitTmaWarpSpecializedSm90 (a producer warpgroup feeding a multi-stage mbarrier pipeline, a consumer
// warpgroup running wgmma on fp32 accumulators; CUTLASS 4.2 has no persistent conv schedule, so no setmaxnreg), and a
// plain epilogue (D = acc, cast once, TMA stores). One tile shape per direction keeps the build to 4 instantiations.
// What CUTLASS 4.2 leaves out, and conv2d_act.cu's WMMA kernels take instead: strided dgrad (its sm_90 dgrad is tested
// at unit stride only), a wgrad over unpacked x or dy, grouped convolutions.
#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/kernel_hardware_info.h>  // before the conv builders, which use it without including it
#include <cutlass/conv/collective/collective_builder.hpp>
#include <cutlass/conv/convnd_problem_shape.hpp>
#include <cutlass/conv/dispatch_policy.hpp>
#include <cutlass/conv/kernel/conv_universal.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>

#include <stdexcept>
#include <string>

#include "common.cuh"
#include "conv2d_act_bwd_sm90.h"
#include "conv_sm90_common.cuh"

namespace deepfuse {

namespace conv_sm90 {

// D = acc for the operator `Op`; D's layout tag: NHWC for dgrad's dx, TensorKCSR for wgrad's dW, whose epilogue
// modes are (K, (C, S, R)): KRSC memory. wgrad's N tile is (C, S, R) flattened, hence its nested tile shape.
template <typename Element, cutlass::conv::Operator Op>
struct Conv2dGrad {
  static constexpr bool kWgrad = Op == cutlass::conv::Operator::kWgrad;
  using Layout = cutlass::layout::TensorNHWC;
  using LayoutD = cute::conditional_t<kWgrad, cutlass::layout::TensorKCSR, cutlass::layout::TensorNHWC>;
  using TileShape = cute::conditional_t<kWgrad, cute::Shape<cute::_128, cute::Shape<cute::_128>, cute::Shape<cute::_64>>,
                                        cute::Shape<cute::_128, cute::_128, cute::Shape<cute::_64>>>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using Fusion = cutlass::epilogue::fusion::LinearCombination<Element, float, Element, float>;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, /*C*/ Element, LayoutD, kAlignment, Element,
      LayoutD, kAlignment, cutlass::epilogue::TmaWarpSpecialized, Fusion>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Op, Element, Layout, kAlignment, Element, Layout,
      kAlignment, float, TileShape, ClusterShape,
      cutlass::conv::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;
  using ProblemShape = typename CollectiveMainloop::ProblemShape;
  using Kernel = cutlass::conv::kernel::ConvUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Params = typename Kernel::Params;
};

template <typename Element>
using Conv2dDgrad = Conv2dGrad<Element, cutlass::conv::Operator::kDgrad>;
template <typename Element>
using Conv2dWgrad = Conv2dGrad<Element, cutlass::conv::Operator::kWgrad>;

}  // namespace conv_sm90

DEEPFUSE_SM90_KERNEL(conv2d_act_dgrad_sm90_kernel, conv_sm90::Conv2dDgrad)

DEEPFUSE_SM90_KERNEL(conv2d_act_wgrad_sm90_kernel, conv_sm90::Conv2dWgrad)

namespace {

using conv_sm90::aligned;
using conv_sm90::strides_aligned;

const RegisterKernelLabels kKernelLabels{
    DEEPFUSE_KERNEL_LABEL(conv2d_act_dgrad_sm90_kernel<cutlass::half_t>),
    DEEPFUSE_KERNEL_LABEL(conv2d_act_dgrad_sm90_kernel<cutlass::bfloat16_t>),
    DEEPFUSE_KERNEL_LABEL(conv2d_act_wgrad_sm90_kernel<cutlass::half_t>),
    DEEPFUSE_KERNEL_LABEL(conv2d_act_wgrad_sm90_kernel<cutlass::bfloat16_t>),
};

// dz as stored: packed NHWC over the output, Cout channels.
Strides4 dz_strides(const ConvShape& s) {
  return {s.out_height * s.out_width * s.out_channels, 1, s.out_width * s.out_channels, s.out_channels};
}

template <typename Element>
typename conv_sm90::Conv2dDgrad<Element>::Kernel::Arguments dgrad_arguments(const Conv2dActBwdArgs& a,
                                                                             const void* dz) {
  using Conv = conv_sm90::Conv2dDgrad<Element>;
  using Epilogue = typename Conv::Kernel::CollectiveEpilogue;
  typename Conv::Kernel::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape =
      conv_sm90::problem_shape<typename Conv::ProblemShape>(a.shape, a.grad_x_strides, a.w_strides, dz_strides(a.shape));
  args.mainloop.ptr_A = static_cast<const Element*>(dz);
  args.mainloop.ptr_B = static_cast<const Element*>(a.weight);
  args.epilogue.thread.alpha = 1.0f;
  args.epilogue.thread.beta = 0.0f;  // skips the C load; its TMA descriptor still wants a valid tensor: D's
  const auto dD = conv_sm90::nhwc_epilogue_stride<typename Epilogue::StrideD>(a.grad_x_strides);
  args.epilogue.ptr_C = static_cast<const Element*>(a.grad_x);
  args.epilogue.dC = dD;
  args.epilogue.ptr_D = static_cast<Element*>(a.grad_x);
  args.epilogue.dD = dD;
  return args;
}

template <typename Element>
typename conv_sm90::Conv2dWgrad<Element>::Kernel::Arguments wgrad_arguments(const Conv2dActBwdArgs& a,
                                                                             const void* dz) {
  using Conv = conv_sm90::Conv2dWgrad<Element>;
  using Epilogue = typename Conv::Kernel::CollectiveEpilogue;
  typename Conv::Kernel::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  const Strides4& gw = a.grad_weight_strides;
  args.problem_shape =
      conv_sm90::problem_shape<typename Conv::ProblemShape>(a.shape, a.x_strides, gw, dz_strides(a.shape));
  args.mainloop.ptr_A = static_cast<const Element*>(dz);
  args.mainloop.ptr_B = static_cast<const Element*>(a.x);
  args.epilogue.thread.alpha = 1.0f;
  args.epilogue.thread.beta = 0.0f;
  const typename Epilogue::StrideD dD{gw.n, {cute::_1{}, gw.w, gw.h}, cute::_0{}};  // modes (K, (C, S, R))
  args.epilogue.ptr_C = static_cast<const Element*>(a.grad_weight);
  args.epilogue.dC = dD;
  args.epilogue.ptr_D = static_cast<Element*>(a.grad_weight);
  args.epilogue.dD = dD;
  return args;
}

// The call with every size-1 dimension's stride settled (conv_sm90::settle_unit_dims).
Conv2dActBwdArgs settled(Conv2dActBwdArgs a) {
  const ConvShape& s = a.shape;
  a.grad_y_strides = conv_sm90::settle_unit_dims(a.grad_y_strides, s.batch, s.out_channels, s.out_height, s.out_width);
  a.x_strides = conv_sm90::settle_unit_dims(a.x_strides, s.batch, s.in_channels, s.height, s.width);
  a.grad_x_strides = conv_sm90::settle_unit_dims(a.grad_x_strides, s.batch, s.in_channels, s.height, s.width);
  a.w_strides = conv_sm90::settle_unit_dims(a.w_strides, s.out_channels, s.in_channels, s.kernel_h, s.kernel_w);
  a.grad_weight_strides =
      conv_sm90::settle_unit_dims(a.grad_weight_strides, s.out_channels, s.in_channels, s.kernel_h, s.kernel_w);
  return a;
}

// What both directions need: dz formed as an (N * OH * OW, Cout) matrix from dy and saved.
const char* shared_refusal(const Conv2dActBwdArgs& a) {
  const ConvShape& s = a.shape;
  if (const char* refusal = sm90::dtype_refusal(a.dtype)) return refusal;
  if (const char* refusal = conv_sm90::geometry_refusal(s)) return refusal;
  if (!conv_sm90::packed_nhwc(a.grad_y_strides, s.out_channels, s.out_height, s.out_width)) {
    return "grad_y is not packed channels_last (dz is formed from it as an (N * OH * OW, Cout) matrix)";
  }
  if (!aligned(a.grad_y) || !aligned(a.saved) || !aligned(a.workspace)) {
    return "a pointer is not 16-byte aligned (TMA needs it)";
  }
  return nullptr;
}

}  // namespace

const char* conv2d_act_dgrad_sm90_refusal(const Conv2dActBwdArgs& call) {
  const Conv2dActBwdArgs a = settled(call);
  if (const char* refusal = shared_refusal(a)) return refusal;
  const ConvShape& s = a.shape;
  if (s.stride_h != 1 || s.stride_w != 1) return "a strided convolution (CUTLASS 4.2 tests its sm_90 dgrad at unit stride only)";
  if (a.w_strides.c != 1) return "weight is not channels_last (the kernel reads it as KRSC)";
  if (a.grad_x_strides.c != 1) return "grad_x is not channels_last (the epilogue stores NHWC)";
  if (!strides_aligned(a.w_strides) || !strides_aligned(a.grad_x_strides)) {
    return "a stride of weight or grad_x is not a multiple of 8 elements (TMA needs 16-byte strides)";
  }
  if (!aligned(a.weight) || !aligned(a.grad_x)) return "a pointer is not 16-byte aligned (TMA needs it)";
  const bool implementable = sm90::by_dtype(a.dtype, [&](auto element) {
    using Element = decltype(element);
    return conv_sm90::Conv2dDgrad<Element>::Kernel::can_implement(dgrad_arguments<Element>(a, a.grad_y));
  });
  if (!implementable) return "CUTLASS's can_implement refused the problem (TMA im2col corner or alignment limits)";
  return nullptr;
}

const char* conv2d_act_wgrad_sm90_refusal(const Conv2dActBwdArgs& call) {
  const Conv2dActBwdArgs a = settled(call);
  if (const char* refusal = shared_refusal(a)) return refusal;
  if (a.grad_weight == nullptr) return nullptr;  // db alone: grad_preact.cu sums it, no GEMM runs
  const ConvShape& s = a.shape;
  if (!conv_sm90::packed_nhwc(a.x_strides, s.in_channels, s.height, s.width)) {
    return "x is not packed channels_last (CUTLASS 4.2's sm_90 wgrad reads it as packed NHWC)";
  }
  if (!conv_sm90::packed_nhwc(a.grad_weight_strides, s.in_channels, s.kernel_h, s.kernel_w)) {
    return "grad_weight is not packed channels_last (the kernel stores it as packed KRSC)";
  }
  if (!aligned(a.x) || !aligned(a.grad_weight)) return "a pointer is not 16-byte aligned (TMA needs it)";
  const bool implementable = sm90::by_dtype(a.dtype, [&](auto element) {
    using Element = decltype(element);
    return conv_sm90::Conv2dWgrad<Element>::Kernel::can_implement(wgrad_arguments<Element>(a, a.grad_y));
  });
  if (!implementable) return "CUTLASS's can_implement refused the problem (TMA im2col corner or alignment limits)";
  return nullptr;
}

const char* conv2d_act_dgrad_sm90_kernel_label(int dtype) {
  return dtype == static_cast<int>(DType::kBFloat16) ? "conv2d_act_dgrad_sm90_kernel<cutlass::bfloat16_t>"
                                                     : "conv2d_act_dgrad_sm90_kernel<cutlass::half_t>";
}

const char* conv2d_act_wgrad_sm90_kernel_label(int dtype) {
  return dtype == static_cast<int>(DType::kBFloat16) ? "conv2d_act_wgrad_sm90_kernel<cutlass::bfloat16_t>"
                                                     : "conv2d_act_wgrad_sm90_kernel<cutlass::half_t>";
}

void conv2d_act_dgrad_sm90(const Conv2dActBwdArgs& call, const void* dz, cudaStream_t stream) {
  if (const char* refusal = conv2d_act_dgrad_sm90_refusal(call)) {
    throw std::invalid_argument(std::string("conv2d_act sm_90a dgrad: ") + refusal);
  }
  const Conv2dActBwdArgs args = settled(call);
  sm90::by_dtype(args.dtype, [&](auto element) {
    using Element = decltype(element);
    conv_sm90::launch_conv<conv_sm90::Conv2dDgrad<Element>>(&conv2d_act_dgrad_sm90_kernel<Element>,
                                                             dgrad_arguments<Element>(args, dz),
                                                             "conv2d_act sm_90a dgrad", stream);
  });
}

void conv2d_act_wgrad_sm90(const Conv2dActBwdArgs& call, const void* dz, cudaStream_t stream) {
  if (const char* refusal = conv2d_act_wgrad_sm90_refusal(call)) {
    throw std::invalid_argument(std::string("conv2d_act sm_90a wgrad: ") + refusal);
  }
  const Conv2dActBwdArgs args = settled(call);
  sm90::by_dtype(args.dtype, [&](auto element) {
    using Element = decltype(element);
    conv_sm90::launch_conv<conv_sm90::Conv2dWgrad<Element>>(&conv2d_act_wgrad_sm90_kernel<Element>,
                                                             wgrad_arguments<Element>(args, dz),
                                                             "conv2d_act sm_90a wgrad", stream);
  });
}

}  // namespace deepfuse
