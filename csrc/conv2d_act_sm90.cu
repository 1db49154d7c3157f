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
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "activation_sm90.cuh"
#include "common.cuh"
#include "conv2d_act_sm90.h"

namespace deepfuse {

namespace conv_sm90 {

// 16-byte TMA strides and vector accesses: 8 elements of a 2-byte type.
constexpr int kAlignment = 8;
constexpr int64_t kAlignmentBytes = 16;
// TMA im2col limits for 2 spatial dimensions (cuTensorMapEncodeIm2col): traversal strides up to 8, the box
// corners (-padding) in [-128, 127], filter offsets (k - 1) * dilation below 255.
constexpr int64_t kMaxStride = 8;
constexpr int64_t kMaxCorner = 128;
constexpr int64_t kMaxFilterReach = 254;

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

// CUTLASS's device_kernel under deepfuse's own name, so that ptxas's report, the SASS and the dry runs name it
// alike (conv2d_act_sm90_kernel<half_t>) rather than by the whole CUTLASS type.
template <typename Element>
__global__ void __launch_bounds__(conv_sm90::Conv2dActFprop<Element>::Kernel::MaxThreadsPerBlock,
                                  conv_sm90::Conv2dActFprop<Element>::Kernel::MinBlocksPerMultiprocessor)
    conv2d_act_sm90_kernel(const __grid_constant__ typename conv_sm90::Conv2dActFprop<Element>::Params params) {
  extern __shared__ char smem[];
  typename conv_sm90::Conv2dActFprop<Element>::Kernel op;
  op(params, smem);
}

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

bool aligned(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % conv_sm90::kAlignmentBytes == 0; }

bool strides_aligned(const Strides4& s) {
  return s.n % conv_sm90::kAlignment == 0 && s.h % conv_sm90::kAlignment == 0 && s.w % conv_sm90::kAlignment == 0;
}

// Bottom/right padding as CUTLASS wants it: the problem shape derives the output size from the padding on both
// sides, while deepfuse's caller gives the output size. Any value in [exact, exact + stride - 1] gives the same
// (floored) size; taps beyond the image read as zeros either way. Negative exact values (a strided conv that
// never reaches the last rows) become 0, which TMA im2col needs.
int64_t upper_padding(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t dilation, int64_t lower) {
  const int64_t exact = (out - 1) * stride + (kernel - 1) * dilation + 1 - in - lower;
  return exact < 0 ? 0 : exact;
}

int64_t output_size(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, int64_t lower, int64_t upper) {
  return (in + lower + upper - (kernel - 1) * dilation - 1) / stride + 1;
}

// x as NHWC, W as KRSC, y as NPQK (each stride array in that order; the channel stride is 1, which the refusal
// checked).
template <typename ProblemShape>
ProblemShape problem_shape(const Conv2dActFwdArgs& a) {
  const ConvShape& s = a.shape;
  const int64_t pad_bottom = upper_padding(s.height, s.out_height, s.kernel_h, s.stride_h, s.dilation_h, s.pad_top);
  const int64_t pad_right = upper_padding(s.width, s.out_width, s.kernel_w, s.stride_w, s.dilation_w, s.pad_left);
  return ProblemShape(cutlass::conv::Mode::kCrossCorrelation,
                      {static_cast<int>(s.batch), static_cast<int>(s.height), static_cast<int>(s.width),
                       static_cast<int>(s.in_channels)},
                      {a.x_strides.n, a.x_strides.h, a.x_strides.w, 1},
                      {static_cast<int>(s.out_channels), static_cast<int>(s.kernel_h), static_cast<int>(s.kernel_w),
                       static_cast<int>(s.in_channels)},
                      {a.w_strides.n, a.w_strides.h, a.w_strides.w, 1},
                      {a.y_strides.n, a.y_strides.h, a.y_strides.w, 1},
                      {static_cast<int>(s.pad_top), static_cast<int>(s.pad_left)},
                      {static_cast<int>(pad_bottom), static_cast<int>(pad_right)},
                      {static_cast<int>(s.stride_h), static_cast<int>(s.stride_w)},
                      {static_cast<int>(s.dilation_h), static_cast<int>(s.dilation_w)}, 1);
}

// An NHWC output's strides as the epilogue takes them: ((ow, oh, n), channel, batch mode), CUTLASS's order.
template <typename Stride>
Stride epilogue_stride(const Strides4& t) {
  return Stride{{t.w, t.h, t.n}, cute::_1{}, cute::_0{}};
}

template <typename Element>
typename conv_sm90::Conv2dActFprop<Element>::Kernel::Arguments kernel_arguments(const Conv2dActFwdArgs& a) {
  using Conv = conv_sm90::Conv2dActFprop<Element>;
  using Kernel = typename Conv::Kernel;
  typename Kernel::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = problem_shape<typename Conv::ProblemShape>(a);
  args.mainloop.ptr_A = static_cast<const Element*>(a.x);
  args.mainloop.ptr_B = static_cast<const Element*>(a.weight);
  const auto dD = epilogue_stride<typename Kernel::CollectiveEpilogue::StrideD>(a.y_strides);
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.0f;
  fusion.bias_ptr = static_cast<const Element*>(a.bias);  // null: no bias (the broadcast reads zeros)
  // A wanted pre-activation leaves the kernel as D; the activation pass then makes y from it.
  fusion.activation.code = a.preact != nullptr ? static_cast<int>(Activation::kNone) : a.activation;
  void* d = a.preact != nullptr ? a.preact : a.y;
  if (a.residual != nullptr) {
    fusion.beta = 1.0f;
    args.epilogue.ptr_C = static_cast<const Element*>(a.residual);
    args.epilogue.dC = epilogue_stride<typename Kernel::CollectiveEpilogue::StrideC>(a.residual_strides);
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
  using Conv = conv_sm90::Conv2dActFprop<Element>;
  using Kernel = typename Conv::Kernel;
  const typename Kernel::Arguments args = kernel_arguments<Element>(a);
  auto* kernel = &conv2d_act_sm90_kernel<Element>;
  constexpr size_t smem = Kernel::SharedStorageSize;
  const dim3 block = Kernel::get_block_shape();
  if (dry_run() != nullptr) {
    // The grid as the kernel sizes it (one CTA per output tile); the TMA descriptors (driver calls) are left out.
    typename Kernel::Params params{};
    params.problem_shape = Conv::CollectiveMainloop::get_problem_shape_MNKL(args.problem_shape);
    set_max_dynamic_smem(kernel, smem);
    dry_launch(kernel, Kernel::get_grid_shape(params), block, smem, false);
  } else {
    if (Kernel::get_workspace_size(args) != 0) {
      throw std::logic_error(
          "conv2d_act sm_90a: the kernel asks for a workspace, which this launcher never allocates");
    }
    if (!Kernel::can_implement(args)) {
      throw std::logic_error("conv2d_act sm_90a: CUTLASS refused a call that conv2d_act_fwd_sm90_refusal accepted");
    }
    const typename Kernel::Params params = Kernel::to_underlying_arguments(args, nullptr);
    set_max_dynamic_smem(kernel, smem);
    kernel<<<Kernel::get_grid_shape(params), block, smem, stream>>>(params);
    DEEPFUSE_CUDA_CHECK(cudaGetLastError());
  }
  if (a.preact == nullptr) return;
  if (std::is_same_v<Element, cutlass::bfloat16_t>) {
    run_activation_pass<__nv_bfloat16>(a, stream);
  } else {
    run_activation_pass<__half>(a, stream);
  }
}

}  // namespace

const char* conv2d_act_fwd_sm90_refusal(const Conv2dActFwdArgs& a) {
  const ConvShape& s = a.shape;
  if (a.dtype != static_cast<int>(DType::kFloat16) && a.dtype != static_cast<int>(DType::kBFloat16)) {
    return "the sm_90a kernel takes float16 and bfloat16 only";
  }
  if (s.groups != 1) return "groups != 1 (CUTLASS 4.2's sm_90 conv kernel refuses grouped convolutions)";
  if (s.batch == 0 || s.out_height == 0 || s.out_width == 0 || s.out_channels == 0 || s.in_channels == 0) {
    return "an empty convolution";
  }
  if (s.batch > INT_MAX || s.height > INT_MAX || s.width > INT_MAX || s.in_channels > INT_MAX ||
      s.out_channels > INT_MAX || s.batch * s.out_height * s.out_width > INT_MAX) {
    return "a size (or N * OH * OW) exceeds 2^31 - 1";
  }
  if (a.x_strides.c != 1) return "x is not channels_last (TMA im2col needs NHWC)";
  if (a.w_strides.c != 1) return "weight is not channels_last (the kernel reads it as KRSC)";
  if (a.y_strides.c != 1) return "y is not channels_last (the epilogue stores NHWC)";
  if (a.residual != nullptr && a.residual_strides.c != 1) return "residual is not channels_last";
  if (s.in_channels % conv_sm90::kAlignment != 0 || s.out_channels % conv_sm90::kAlignment != 0) {
    return "in_channels or out_channels is not a multiple of 8 (TMA needs 16-byte rows)";
  }
  if (!strides_aligned(a.x_strides) || !strides_aligned(a.w_strides) || !strides_aligned(a.y_strides) ||
      (a.residual != nullptr && !strides_aligned(a.residual_strides))) {
    return "a stride of x, weight, y or residual is not a multiple of 8 elements (TMA needs 16-byte strides)";
  }
  if (!aligned(a.x) || !aligned(a.weight) || !aligned(a.y) || !aligned(a.bias) || !aligned(a.residual) ||
      !aligned(a.preact)) {
    return "a pointer is not 16-byte aligned (TMA needs it)";
  }
  if (s.stride_h > conv_sm90::kMaxStride || s.stride_w > conv_sm90::kMaxStride) {
    return "a stride over 8 (TMA im2col's traversal stride limit)";
  }
  if (s.pad_top < 0 || s.pad_left < 0 || s.pad_top > conv_sm90::kMaxCorner || s.pad_left > conv_sm90::kMaxCorner) {
    return "padding outside [0, 128] (TMA im2col's corner limit)";
  }
  if ((s.kernel_h - 1) * s.dilation_h > conv_sm90::kMaxFilterReach ||
      (s.kernel_w - 1) * s.dilation_w > conv_sm90::kMaxFilterReach) {
    return "(kernel - 1) * dilation over 254 (TMA im2col's filter offset limit)";
  }
  const int64_t pad_bottom = upper_padding(s.height, s.out_height, s.kernel_h, s.stride_h, s.dilation_h, s.pad_top);
  const int64_t pad_right = upper_padding(s.width, s.out_width, s.kernel_w, s.stride_w, s.dilation_w, s.pad_left);
  if (output_size(s.height, s.kernel_h, s.stride_h, s.dilation_h, s.pad_top, pad_bottom) != s.out_height ||
      output_size(s.width, s.kernel_w, s.stride_w, s.dilation_w, s.pad_left, pad_right) != s.out_width) {
    return "the output size is not one that zero padding on the bottom/right gives";
  }
  const bool implementable = a.dtype == static_cast<int>(DType::kBFloat16)
                                 ? cutlass_can_implement<cutlass::bfloat16_t>(a)
                                 : cutlass_can_implement<cutlass::half_t>(a);
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
  if (args.dtype == static_cast<int>(DType::kBFloat16)) {
    run<cutlass::bfloat16_t>(args, stream);
  } else {
    run<cutlass::half_t>(args, stream);
  }
}

}  // namespace deepfuse
