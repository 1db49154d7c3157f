// conv2d_act backward on Hopper: dz = dy * act'(saved) is stored once (grad_preact.cu, which also sums db), then
// dx and dW run as CUTLASS 3.x implicit-GEMM convolutions (TMA im2col loads, wgmma, a producer and a consumer
// warpgroup), compiled for sm_90a only (conv2d_act_bwd_sm90.cu). conv2d_act.cu picks, per gradient, these kernels or
// the portable WMMA/SIMT ones.
#pragma once

#include <cuda_runtime.h>

#include "conv2d_act.h"

namespace deepfuse {

// Why the sm_90a dgrad (dx) or wgrad (dW, and db with it) cannot take this call, or null when it can. The device
// capability and the workspace are the caller's to check (conv2d_act.cu).
const char* conv2d_act_dgrad_sm90_refusal(const Conv2dActBwdArgs& args);
const char* conv2d_act_wgrad_sm90_refusal(const Conv2dActBwdArgs& args);

// The kernels' labels (as the resource gate and the dry runs name them) for a dtype code they take.
const char* conv2d_act_dgrad_sm90_kernel_label(int dtype);
const char* conv2d_act_wgrad_sm90_kernel_label(int dtype);

// dx into args.grad_x, or dW into args.grad_weight (packed KRSC), from dz (packed NHWC, (N * OH * OW, Cout)), for a
// call the matching refusal accepted, on the current (9.0) device.
void conv2d_act_dgrad_sm90(const Conv2dActBwdArgs& args, const void* dz, cudaStream_t stream);
void conv2d_act_wgrad_sm90(const Conv2dActBwdArgs& args, const void* dz, cudaStream_t stream);

}  // namespace deepfuse
