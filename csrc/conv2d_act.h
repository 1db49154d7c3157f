// conv2d_act: y = act(conv2d(x, W) + b + residual), forward and backward, on raw device pointers.
// Every 4-D tensor is described by its logical NCHW strides (so NCHW and channels_last both work);
// W is (Cout, Cin / groups, KH, KW) with its strides.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace deepfuse {

struct ConvShape {
  int64_t batch, in_channels, height, width;  // x
  int64_t out_channels, out_height, out_width;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups;
};

struct Strides4 {
  int64_t n, c, h, w;  // for W: out channel, in channel, kh, kw
};

struct Conv2dActFwdArgs {
  ConvShape shape;
  const void* x;
  Strides4 x_strides;
  const void* weight;
  Strides4 w_strides;
  const void* bias;      // (Cout,) contiguous, or null
  const void* residual;  // output-shaped, or null
  Strides4 residual_strides;
  void* y;
  void* preact;  // or null; same strides as y
  Strides4 y_strides;
  int dtype, activation;
};

struct Conv2dActBwdArgs {
  ConvShape shape;
  const void* grad_y;  // output-shaped
  const void* saved;   // same strides as grad_y (unused for activation "none")
  Strides4 grad_y_strides;
  const void* x;
  Strides4 x_strides;
  const void* weight;
  Strides4 w_strides;
  void* grad_x;  // or null
  Strides4 grad_x_strides;
  void* grad_weight;  // (Cout, Cin/groups, KH, KW), or null
  Strides4 grad_weight_strides;
  void* grad_bias;  // (Cout,), or null
  int dtype, activation;
  // Device scratch of conv2d_act_bwd_workspace_bytes(...) bytes (16-byte aligned), or null: the sm_90a backward
  // stores dz and db's partial sums there; without it backward takes the WMMA kernels.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// The kernel conv2d_act_fwd picks for a call on a device of compute capability `capability` (major * 10 + minor),
// as its label, and why: the sm_90a CUTLASS kernel (capability 90, fp16/bf16, channels_last, TMA-legal) or the
// portable implicit-GEMM WMMA/SIMT one.
struct Conv2dActKernelChoice {
  const char* kernel;
  std::string reason;
  bool sm90;
};
Conv2dActKernelChoice choose_conv2d_act_fwd_kernel(const Conv2dActFwdArgs& args, int capability);

// The kernels conv2d_act_bwd picks for dx (dgrad) and for dW and db (wgrad), each with why: on a 9.0 device the
// sm_90a CUTLASS convolutions where they can run (and the workspace is given), else the portable implicit-GEMM ones.
struct Conv2dActBwdKernelChoice {
  Conv2dActKernelChoice dgrad, wgrad;
};
Conv2dActBwdKernelChoice choose_conv2d_act_bwd_kernels(const Conv2dActBwdArgs& args, int capability);

// Bytes of Conv2dActBwdArgs::workspace the backward wants on the current device (0 on a device whose backward needs
// none, and for fp32).
int64_t conv2d_act_bwd_workspace_bytes(const ConvShape& shape, int dtype, int activation, bool grad_bias);

void conv2d_act_fwd(const Conv2dActFwdArgs& args, cudaStream_t stream);
void conv2d_act_bwd(const Conv2dActBwdArgs& args, cudaStream_t stream);

}  // namespace deepfuse
