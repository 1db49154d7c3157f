// conv2d_act as implicit GEMMs on the fused GEMM (fused_gemm.cuh); no im2col buffer is ever written.
//   forward  rows = output pixels (n, oh, ow), cols = output channels of the group,
//            reduction k = (kh, kw, ci) with ci fastest (unit stride in channels_last)
//   dx       rows = input pixels (n, ih, iw), cols = input channels, reduction k = (kh, kw, co):
//            only output pixels the stride reaches contribute
//   dW (+db) rows = output channels, cols = (kh, kw, ci), reduction over output pixels
// dz = dy * act'(saved) is formed in the loaders of both backward GEMMs; the group is blockIdx.z.
// On a 9.0 device the forward takes the sm_90a CUTLASS kernel instead (conv2d_act_sm90.cu) when it can: fp16/bf16,
// channels_last x/y/residual and weight, TMA-legal sizes, no groups; a call that wants the pre-activation gets it from
// the same kernel (activation "none") followed by an activation pass. Backward there stores dz once (grad_preact.cu,
// db with it) and runs CUTLASS's dgrad and wgrad (conv2d_act_bwd_sm90.cu), each where it can (dgrad: unit stride;
// wgrad: packed x and dW); the other gradient keeps its implicit GEMM here.
#include <stdexcept>
#include <string>

#include "conv2d_act.h"
#include "fused_gemm.cuh"
#if DEEPFUSE_SM90_KERNELS
#include "conv2d_act_bwd_sm90.h"
#include "conv2d_act_sm90.h"
#include "grad_preact.h"
#endif

namespace deepfuse {

namespace {

// Output pixel m -> (n, oh, ow) for an (OH, OW) plane.
struct PixelIndex {
  int64_t n, h, w;
};
__device__ __forceinline__ PixelIndex split_pixel(int64_t m, int64_t height, int64_t width) {
  return {m / (height * width), (m / width) % height, m % width};
}

// Forward A: (output pixel m, k = (kh, kw, ci)) -> x[n, g * cin_g + ci, ih, iw].
struct InputPatches {
  ConvShape s;
  Strides4 x;
  int64_t cin_g;
  __device__ __forceinline__ bool offset(int64_t m, int64_t k, int64_t& off) const {
    if (m >= s.batch * s.out_height * s.out_width || k >= s.kernel_h * s.kernel_w * cin_g) return false;
    const PixelIndex p = split_pixel(m, s.out_height, s.out_width);
    const int64_t ci = k % cin_g, tap = k / cin_g;
    const int64_t ih = p.h * s.stride_h - s.pad_top + (tap / s.kernel_w) * s.dilation_h;
    const int64_t iw = p.w * s.stride_w - s.pad_left + (tap % s.kernel_w) * s.dilation_w;
    if (ih < 0 || ih >= s.height || iw < 0 || iw >= s.width) return false;
    off = p.n * x.n + (blockIdx.z * cin_g + ci) * x.c + ih * x.h + iw * x.w;
    return true;
  }
  __device__ __forceinline__ bool cols_contiguous() const { return x.c == 1; }
};

// Weight as a GEMM operand with rows = (kh, kw, c_inner) (c_inner fastest) and cols = c_outer, where
// (inner, outer) = (ci, co) in forward and (co, ci) in dx.
struct WeightTaps {
  ConvShape s;
  Strides4 w;
  int64_t inner_g, outer_g;
  bool inner_is_input_channel;
  __device__ __forceinline__ bool offset(int64_t k, int64_t col, int64_t& off) const {
    if (k >= s.kernel_h * s.kernel_w * inner_g || col >= outer_g) return false;
    const int64_t inner = k % inner_g, tap = k / inner_g;
    const int64_t ci = inner_is_input_channel ? inner : col;
    const int64_t co = blockIdx.z * (inner_is_input_channel ? outer_g : inner_g) + (inner_is_input_channel ? col : inner);
    off = co * w.n + ci * w.c + (tap / s.kernel_w) * w.h + (tap % s.kernel_w) * w.w;
    return true;
  }
  __device__ __forceinline__ bool cols_contiguous() const { return (inner_is_input_channel ? w.n : w.c) == 1; }
};

// (pixel m of an (H, W) plane, channel c of the group) -> tensor[n, g * channels_g + c, h, w].
struct PixelChannels {
  int64_t batch, height, width, channels_g;
  Strides4 t;
  __device__ __forceinline__ bool offset(int64_t m, int64_t c, int64_t& off) const {
    if (m >= batch * height * width || c >= channels_g) return false;
    const PixelIndex p = split_pixel(m, height, width);
    off = p.n * t.n + (blockIdx.z * channels_g + c) * t.c + p.h * t.h + p.w * t.w;
    return true;
  }
  __device__ __forceinline__ bool cols_contiguous() const { return t.c == 1; }
};

// dx A: (input pixel m, k = (kh, kw, co)) -> dy[n, g * cout_g + co, oh, ow] where the tap reaches it.
struct OutputGradTaps {
  ConvShape s;
  Strides4 dy;
  int64_t cout_g;
  __device__ __forceinline__ bool offset(int64_t m, int64_t k, int64_t& off) const {
    if (m >= s.batch * s.height * s.width || k >= s.kernel_h * s.kernel_w * cout_g) return false;
    const PixelIndex p = split_pixel(m, s.height, s.width);
    const int64_t co = k % cout_g, tap = k / cout_g;
    const int64_t th = p.h + s.pad_top - (tap / s.kernel_w) * s.dilation_h;
    const int64_t tw = p.w + s.pad_left - (tap % s.kernel_w) * s.dilation_w;
    if (th < 0 || tw < 0 || th % s.stride_h != 0 || tw % s.stride_w != 0) return false;
    const int64_t oh = th / s.stride_h, ow = tw / s.stride_w;
    if (oh >= s.out_height || ow >= s.out_width) return false;
    off = p.n * dy.n + (blockIdx.z * cout_g + co) * dy.c + oh * dy.h + ow * dy.w;
    return true;
  }
  __device__ __forceinline__ bool cols_contiguous() const { return dy.c == 1; }
};

// dW A: (output channel co of the group, output pixel m) -> dy[n, g * cout_g + co, oh, ow].
struct OutputGradByChannel {
  ConvShape s;
  Strides4 dy;
  int64_t cout_g;
  __device__ __forceinline__ bool offset(int64_t co, int64_t m, int64_t& off) const {
    if (co >= cout_g || m >= s.batch * s.out_height * s.out_width) return false;
    const PixelIndex p = split_pixel(m, s.out_height, s.out_width);
    off = p.n * dy.n + (blockIdx.z * cout_g + co) * dy.c + p.h * dy.h + p.w * dy.w;
    return true;
  }
  __device__ __forceinline__ bool cols_contiguous() const { return dy.c != 1 && dy.w == 1; }
};

// dW B: (output pixel m, j = (kh, kw, ci)) -> x[n, g * cin_g + ci, ih, iw]: InputPatches with its
// operands swapped (rows are the reduction here).
struct InputPatchesByPixel {
  InputPatches patches;
  __device__ __forceinline__ bool offset(int64_t m, int64_t j, int64_t& off) const { return patches.offset(m, j, off); }
  __device__ __forceinline__ bool cols_contiguous() const { return patches.cols_contiguous(); }
};

// dW C: (co of the group, j = (kh, kw, ci)) -> dW[g * cout_g + co, ci, kh, kw] with dW's strides.
struct WeightGradTaps {
  ConvShape s;
  Strides4 dw;
  int64_t cin_g, cout_g;
  __device__ __forceinline__ bool offset(int64_t co, int64_t j, int64_t& off) const {
    if (co >= cout_g || j >= s.kernel_h * s.kernel_w * cin_g) return false;
    const int64_t ci = j % cin_g, tap = j / cin_g;
    off = (blockIdx.z * cout_g + co) * dw.n + ci * dw.c + (tap / s.kernel_w) * dw.h + (tap % s.kernel_w) * dw.w;
    return true;
  }
  __device__ __forceinline__ bool cols_contiguous() const { return false; }
};

// The three implicit GEMMs (forward, dx, dW), each in every dtype. A label is its spelling (one space after each
// comma, as ptxas prints the name the resource gate matches it with).
using ForwardGemm = FusedGemm<InputPatches, WeightTaps, PixelChannels>;
using DgradGemm = FusedGemm<OutputGradTaps, WeightTaps, PixelChannels>;
using WgradGemm = FusedGemm<OutputGradByChannel, InputPatchesByPixel, WeightGradTaps>;

// A portable kernel per dtype: SIMT for fp32, WMMA for fp16 and bf16.
struct PortableLabels {
  KernelLabel simt, wmma_half, wmma_bf16;
  const char* pick(int dtype) const {
    return dtype == static_cast<int>(DType::kFloat32)   ? simt.label
           : dtype == static_cast<int>(DType::kFloat16) ? wmma_half.label
                                                         : wmma_bf16.label;
  }
};
#define DEEPFUSE_CONV_GEMM_LABELS(A, B, C)                                                            \
  PortableLabels {                                                                                    \
    DEEPFUSE_KERNEL_LABEL(gemm_detail::fused_gemm_simt_kernel<FusedGemm<A, B, C>>),                   \
        DEEPFUSE_KERNEL_LABEL(gemm_detail::fused_gemm_wmma_kernel<__half, FusedGemm<A, B, C>>),       \
        DEEPFUSE_KERNEL_LABEL(gemm_detail::fused_gemm_wmma_kernel<__nv_bfloat16, FusedGemm<A, B, C>>) \
  }
const PortableLabels kForward = DEEPFUSE_CONV_GEMM_LABELS(InputPatches, WeightTaps, PixelChannels);
const PortableLabels kDgrad = DEEPFUSE_CONV_GEMM_LABELS(OutputGradTaps, WeightTaps, PixelChannels);
const PortableLabels kWgrad = DEEPFUSE_CONV_GEMM_LABELS(OutputGradByChannel, InputPatchesByPixel, WeightGradTaps);
#undef DEEPFUSE_CONV_GEMM_LABELS
const RegisterKernelLabels kKernelLabels{
    kForward.simt, kForward.wmma_half, kForward.wmma_bf16, kDgrad.simt, kDgrad.wmma_half,
    kDgrad.wmma_bf16,  kWgrad.simt,    kWgrad.wmma_half,   kWgrad.wmma_bf16,
};

void check_args(const ConvShape& s, int dtype, int activation) {
  if (dtype < 0 || dtype > static_cast<int>(DType::kBFloat16)) throw std::invalid_argument("conv2d_act: bad dtype code");
  if (activation < 0 || activation >= kNumActivations) throw std::invalid_argument("conv2d_act: bad activation code");
  if (s.groups < 1 || s.in_channels % s.groups != 0 || s.out_channels % s.groups != 0) {
    throw std::invalid_argument("conv2d_act: groups must divide in_channels and out_channels");
  }
  if (s.stride_h < 1 || s.stride_w < 1 || s.dilation_h < 1 || s.dilation_w < 1 || s.kernel_h < 1 || s.kernel_w < 1) {
    throw std::invalid_argument("conv2d_act: stride, dilation and kernel size must be >= 1");
  }
}

std::string portable_path(int dtype) {
  return dtype == static_cast<int>(DType::kFloat32) ? "SIMT fp32 implicit-GEMM kernel: "
                                                    : "WMMA (mma.sync) implicit-GEMM kernel: ";
}

std::string not_hopper(int capability) {
  return "device capability " + std::to_string(capability / 10) + "." + std::to_string(capability % 10) +
         " (the sm_90a TMA + wgmma kernels need 9.0)";
}

}  // namespace

Conv2dActKernelChoice choose_conv2d_act_fwd_kernel(const Conv2dActFwdArgs& args, int capability) {
  check_args(args.shape, args.dtype, args.activation);
  const char* fallback = kForward.pick(args.dtype);
  const std::string path = portable_path(args.dtype);
#if DEEPFUSE_SM90_KERNELS
  if (capability != 90) return {fallback, path + not_hopper(capability), false};
  if (const char* refusal = conv2d_act_fwd_sm90_refusal(args)) return {fallback, path + refusal, false};
  const std::string kernel =
      "sm_90a CUTLASS implicit-GEMM kernel: TMA im2col loads, wgmma, warp-specialised (a producer and a consumer "
      "warpgroup, not persistent); ";
  if (args.preact != nullptr) {
    return {conv2d_act_fwd_sm90_kernel_label(args.dtype),
            kernel + "bias and residual fused in its epilogue, which stores the pre-activation z (its aux store cannot "
                     "tile a conv output) + an activation pass (" +
                conv2d_act_fwd_sm90_activation_pass_label(args.dtype) + ": y = act(z))",
            true};
  }
  return {conv2d_act_fwd_sm90_kernel_label(args.dtype), kernel + "bias, residual and activation fused in its epilogue",
          true};
#else
  (void)capability;
  return {fallback, path + "this deepfuse._C was built without the sm_90a kernels (DEEPFUSE_SM90=0)", false};
#endif
}

int64_t conv2d_act_bwd_workspace_bytes(const ConvShape& s, int dtype, int activation, bool grad_bias) {
  check_args(s, dtype, activation);
#if DEEPFUSE_SM90_KERNELS
  if (dtype == static_cast<int>(DType::kFloat32) || s.groups != 1 || device_capability() != 90) return 0;
  return grad_preact_workspace_bytes(s.batch * s.out_height * s.out_width, s.out_channels, activation, grad_bias);
#else
  (void)grad_bias;
  return 0;
#endif
}

Conv2dActBwdKernelChoice choose_conv2d_act_bwd_kernels(const Conv2dActBwdArgs& args, int capability) {
  const ConvShape& s = args.shape;
  check_args(s, args.dtype, args.activation);
  const std::string path = portable_path(args.dtype) + "dz formed while loading tiles; ";
  Conv2dActBwdKernelChoice choice{{kDgrad.pick(args.dtype), path, false}, {kWgrad.pick(args.dtype), path, false}};
#if DEEPFUSE_SM90_KERNELS
  if (capability != 90) {
    choice.dgrad.reason += not_hopper(capability);
    choice.wgrad.reason += not_hopper(capability);
    return choice;
  }
  const int64_t needed = args.dtype == static_cast<int>(DType::kFloat32)
                             ? 0
                             : grad_preact_workspace_bytes(s.batch * s.out_height * s.out_width, s.out_channels,
                                                           args.activation, args.grad_bias != nullptr);
  const bool workspace_given = needed == 0 || (args.workspace != nullptr && args.workspace_bytes >= needed);
  const std::string no_workspace = "no workspace of " + std::to_string(needed) +
                                   " bytes was passed for dz (see _C.conv2d_act_bwd_workspace_bytes)";
  const std::string kernel =
      "sm_90a CUTLASS implicit-GEMM kernel: TMA im2col loads, wgmma, warp-specialised (a producer and a consumer "
      "warpgroup, not persistent), on dz = dy * act'(saved) stored once ";
  if (const char* refusal = conv2d_act_dgrad_sm90_refusal(args)) {
    choice.dgrad.reason += refusal;
  } else if (!workspace_given) {
    choice.dgrad.reason += no_workspace;
  } else {
    choice.dgrad = {conv2d_act_dgrad_sm90_kernel_label(args.dtype), kernel + "(grad_preact_kernel)", true};
  }
  if (const char* refusal = conv2d_act_wgrad_sm90_refusal(args)) {
    choice.wgrad.reason += refusal;
  } else if (!workspace_given) {
    choice.wgrad.reason += no_workspace;
  } else {
    choice.wgrad = {conv2d_act_wgrad_sm90_kernel_label(args.dtype),
                    kernel + "(grad_preact_kernel, which sums db with it in a fixed order)", true};
  }
#else
  (void)capability;
  choice.dgrad.reason += "this deepfuse._C was built without the sm_90a kernels (DEEPFUSE_SM90=0)";
  choice.wgrad.reason = choice.dgrad.reason;
#endif
  return choice;
}

void conv2d_act_fwd(const Conv2dActFwdArgs& args, cudaStream_t stream) {
  const ConvShape& s = args.shape;
  check_args(s, args.dtype, args.activation);
  check_device_ready();
#if DEEPFUSE_SM90_KERNELS
  if (choose_conv2d_act_fwd_kernel(args, device_capability()).sm90) {
    conv2d_act_fwd_sm90(args, stream);
    return;
  }
#endif
  const int64_t cin_g = s.in_channels / s.groups, cout_g = s.out_channels / s.groups;
  ForwardGemm p;
  p.a = args.x;
  p.a_addr = {s, args.x_strides, cin_g};
  p.b = args.weight;
  p.b_addr = {s, args.w_strides, cin_g, cout_g, true};
  p.bias = args.bias;
  p.residual = args.residual;
  p.residual_addr = {s.batch, s.out_height, s.out_width, cout_g, args.residual_strides};
  p.c = args.y;
  p.c_preact = args.preact;
  p.c_addr = {s.batch, s.out_height, s.out_width, cout_g, args.y_strides};
  p.group_channels = cout_g;
  p.act = static_cast<Activation>(args.activation);
  p.M = s.batch * s.out_height * s.out_width;
  p.N = cout_g;
  p.K = s.kernel_h * s.kernel_w * cin_g;
  p.groups = static_cast<int>(s.groups);
  launch_fused_gemm(p, static_cast<DType>(args.dtype), stream);
}

void conv2d_act_bwd(const Conv2dActBwdArgs& args, cudaStream_t stream) {
  const ConvShape& s = args.shape;
  check_args(s, args.dtype, args.activation);
  check_device_ready();
  const bool wants_dx = args.grad_x != nullptr, wants_dw = args.grad_weight != nullptr || args.grad_bias != nullptr;
  bool dx_done = false, dw_done = false;
#if DEEPFUSE_SM90_KERNELS
  if (s.batch * s.out_height * s.out_width > 0 && s.out_channels > 0) {
    const Conv2dActBwdKernelChoice choice = choose_conv2d_act_bwd_kernels(args, device_capability());
    dx_done = wants_dx && choice.dgrad.sm90;
    dw_done = wants_dw && choice.wgrad.sm90;
    if (dx_done || dw_done) {
      // dz once for the sm_90a kernels (db with it when they take dW); the WMMA kernels form their own dz.
      const bool store_dz = dx_done || (dw_done && args.grad_weight != nullptr);
      const GradPreactArgs preact{args.grad_y,       args.saved,       dw_done ? args.grad_bias : nullptr,
                                  args.workspace,    s.batch * s.out_height * s.out_width,
                                  s.out_channels,    args.dtype,       args.activation,
                                  store_dz};
      const void* dz = run_grad_preact(preact, stream);
      if (dx_done) conv2d_act_dgrad_sm90(args, dz, stream);
      if (dw_done && args.grad_weight != nullptr) conv2d_act_wgrad_sm90(args, dz, stream);
    }
  }
#endif
  const int64_t cin_g = s.in_channels / s.groups, cout_g = s.out_channels / s.groups;
  const auto act = static_cast<Activation>(args.activation);
  const auto dtype = static_cast<DType>(args.dtype);
  if (wants_dx && !dx_done) {
    DgradGemm p;
    p.a = args.grad_y;
    p.a_saved = args.saved;
    p.grad_act = act;
    p.a_addr = {s, args.grad_y_strides, cout_g};
    p.b = args.weight;
    p.b_addr = {s, args.w_strides, cout_g, cin_g, false};
    p.c = args.grad_x;
    p.c_addr = {s.batch, s.height, s.width, cin_g, args.grad_x_strides};
    p.M = s.batch * s.height * s.width;
    p.N = cin_g;
    p.K = s.kernel_h * s.kernel_w * cout_g;
    p.groups = static_cast<int>(s.groups);
    launch_fused_gemm(p, dtype, stream);
  }
  if (wants_dw && !dw_done) {
    WgradGemm p;
    p.a = args.grad_y;
    p.a_saved = args.saved;
    p.grad_act = act;
    p.a_addr = {s, args.grad_y_strides, cout_g};
    p.b = args.x;
    p.b_addr = {InputPatches{s, args.x_strides, cin_g}};
    p.c = args.grad_weight;
    p.c_addr = {s, args.grad_weight_strides, cin_g, cout_g};
    p.row_sum = args.grad_bias;
    p.group_channels = cout_g;
    p.M = cout_g;
    p.N = s.kernel_h * s.kernel_w * cin_g;
    p.K = s.batch * s.out_height * s.out_width;
    p.groups = static_cast<int>(s.groups);
    launch_fused_gemm(p, dtype, stream);
  }
}

}  // namespace deepfuse
