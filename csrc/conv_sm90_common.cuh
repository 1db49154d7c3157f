// What conv2d_act's sm_90a CUTLASS convolutions share (the forward in conv2d_act_sm90.cu, dgrad and wgrad in
// conv2d_act_bwd_sm90.cu): TMA's alignment and im2col limits, CUTLASS's problem shape from deepfuse's ConvShape, and
// the launch of a ConvUniversal kernel (in a dry run, its grid: one CTA per output tile).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/conv/convnd_problem_shape.hpp>

#include <climits>
#include <cstdint>

#include "common.cuh"
#include "conv2d_act.h"
#include "dry_run.h"
#include "sm90_kernel.cuh"

namespace deepfuse {

namespace conv_sm90 {

using sm90::aligned;
using sm90::kAlignment;
// TMA im2col limits for 2 spatial dimensions (cuTensorMapEncodeIm2col): traversal strides up to 8, the box
// corners (-padding) in [-128, 127], filter offsets (k - 1) * dilation below 255.
constexpr int64_t kMaxStride = 8;
constexpr int64_t kMaxCorner = 128;
constexpr int64_t kMaxFilterReach = 254;

inline bool strides_aligned(const Strides4& s) {
  return s.n % kAlignment == 0 && s.h % kAlignment == 0 && s.w % kAlignment == 0;
}

// The strides of an NHWC-ordered tensor (batch, channels, height, width as given) with each size-1 dimension's stride
// replaced by its packed value. Such a stride never addresses anything, but TMA descriptors and CUTLASS's layout
// checks read it: a contiguous 1x1 weight (channels stride 1, kh and kw strides 1) is channels_last once settled.
inline Strides4 settle_unit_dims(Strides4 t, int64_t batch, int64_t channels, int64_t height, int64_t width) {
  if (channels == 1) t.c = 1;
  if (width == 1) t.w = channels * t.c;
  if (height == 1) t.h = width * t.w;
  if (batch == 1) t.n = height * t.h;
  return t;
}

// Channels_last and packed (NHWC with no gaps) for a tensor of `channels` channels on an (height, width) plane.
inline bool packed_nhwc(const Strides4& s, int64_t channels, int64_t height, int64_t width) {
  return s.c == 1 && s.w == channels && s.h == width * channels && s.n == height * width * channels;
}

// Bottom/right padding as CUTLASS wants it: the problem shape derives the output size from the padding on both
// sides, while deepfuse's caller gives the output size. Any value in [exact, exact + stride - 1] gives the same
// (floored) size; taps beyond the image read as zeros either way. Negative exact values (a strided conv that
// never reaches the last rows) become 0, which TMA im2col needs.
inline int64_t upper_padding(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t dilation,
                             int64_t lower) {
  const int64_t exact = (out - 1) * stride + (kernel - 1) * dilation + 1 - in - lower;
  return exact < 0 ? 0 : exact;
}

inline int64_t output_size(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, int64_t lower,
                           int64_t upper) {
  return (in + lower + upper - (kernel - 1) * dilation - 1) / stride + 1;
}

// Why no sm_90a convolution can take this geometry (groups, empty, 32-bit sizes, channel alignment, TMA im2col
// limits), or null. Layouts, pointers and CUTLASS's own can_implement are each caller's to check.
inline const char* geometry_refusal(const ConvShape& s) {
  if (s.groups != 1) return "groups != 1 (CUTLASS 4.2's sm_90 conv kernels refuse grouped convolutions)";
  if (s.batch == 0 || s.out_height == 0 || s.out_width == 0 || s.out_channels == 0 || s.in_channels == 0) {
    return "an empty convolution";
  }
  if (s.batch > INT_MAX || s.height > INT_MAX || s.width > INT_MAX || s.in_channels > INT_MAX ||
      s.out_channels > INT_MAX || s.batch * s.out_height * s.out_width > INT_MAX ||
      s.batch * s.height * s.width > INT_MAX) {
    return "a size (or N * H * W) exceeds 2^31 - 1";
  }
  if (s.in_channels % kAlignment != 0 || s.out_channels % kAlignment != 0) {
    return "in_channels or out_channels is not a multiple of 8 (TMA needs 16-byte rows)";
  }
  if (s.stride_h > kMaxStride || s.stride_w > kMaxStride) return "a stride over 8 (TMA im2col's traversal stride limit)";
  if (s.pad_top < 0 || s.pad_left < 0 || s.pad_top > kMaxCorner || s.pad_left > kMaxCorner) {
    return "padding outside [0, 128] (TMA im2col's corner limit)";
  }
  if ((s.kernel_h - 1) * s.dilation_h > kMaxFilterReach || (s.kernel_w - 1) * s.dilation_w > kMaxFilterReach) {
    return "(kernel - 1) * dilation over 254 (TMA im2col's filter offset limit)";
  }
  const int64_t pad_bottom = upper_padding(s.height, s.out_height, s.kernel_h, s.stride_h, s.dilation_h, s.pad_top);
  const int64_t pad_right = upper_padding(s.width, s.out_width, s.kernel_w, s.stride_w, s.dilation_w, s.pad_left);
  if (output_size(s.height, s.kernel_h, s.stride_h, s.dilation_h, s.pad_top, pad_bottom) != s.out_height ||
      output_size(s.width, s.kernel_w, s.stride_w, s.dilation_w, s.pad_left, pad_right) != s.out_width) {
    return "the output size is not one that zero padding on the bottom/right gives";
  }
  return nullptr;
}

// CUTLASS's problem shape (its constructor derives the output size from the padding): the activation x as NHWC, the
// filter as KRSC, the output ("transformed activation") as NPQK, each stride array in that order with a unit channel
// stride. Fprop, dgrad and wgrad take the same description and read A/B/C from it by their operator.
template <typename ProblemShape>
ProblemShape problem_shape(const ConvShape& s, const Strides4& x, const Strides4& w, const Strides4& y) {
  const int64_t pad_bottom = upper_padding(s.height, s.out_height, s.kernel_h, s.stride_h, s.dilation_h, s.pad_top);
  const int64_t pad_right = upper_padding(s.width, s.out_width, s.kernel_w, s.stride_w, s.dilation_w, s.pad_left);
  return ProblemShape(cutlass::conv::Mode::kCrossCorrelation,
                      {static_cast<int>(s.batch), static_cast<int>(s.height), static_cast<int>(s.width),
                       static_cast<int>(s.in_channels)},
                      {x.n, x.h, x.w, 1},
                      {static_cast<int>(s.out_channels), static_cast<int>(s.kernel_h), static_cast<int>(s.kernel_w),
                       static_cast<int>(s.in_channels)},
                      {w.n, w.h, w.w, 1}, {y.n, y.h, y.w, 1},
                      {static_cast<int>(s.pad_top), static_cast<int>(s.pad_left)},
                      {static_cast<int>(pad_bottom), static_cast<int>(pad_right)},
                      {static_cast<int>(s.stride_h), static_cast<int>(s.stride_w)},
                      {static_cast<int>(s.dilation_h), static_cast<int>(s.dilation_w)}, 1);
}

// An NHWC tensor's strides as a conv epilogue takes them: ((w, h, n), channel, batch mode), CUTLASS's order.
template <typename Stride>
Stride nhwc_epilogue_stride(const Strides4& t) {
  return Stride{{t.w, t.h, t.n}, cute::_1{}, cute::_0{}};
}

// Launches one CUTLASS ConvUniversal kernel under deepfuse's name (`kernel`, a DEEPFUSE_SM90_KERNEL of Conv::Kernel),
// one CTA per output tile (not persistent), or records the launch in a dry run. `what` names the call in the errors.
template <typename Conv>
void launch_conv(void (*kernel)(const typename Conv::Params), const typename Conv::Kernel::Arguments& args,
                 const char* what, cudaStream_t stream) {
  using Kernel = typename Conv::Kernel;
  if (dry_run() == nullptr) {
    sm90::launch_checked<Kernel>(kernel, args, what, stream);
    return;
  }
  typename Kernel::Params params{};
  params.problem_shape = Conv::CollectiveMainloop::get_problem_shape_MNKL(args.problem_shape);
  sm90::record_launch<Kernel>(kernel, params);
}

}  // namespace conv_sm90

}  // namespace deepfuse
