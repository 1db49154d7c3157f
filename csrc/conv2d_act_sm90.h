// conv2d_act forward on Hopper: a CUTLASS 3.x implicit-GEMM convolution (TMA im2col loads of x, TMA loads of W,
// wgmma, a producer and a consumer warpgroup) with deepfuse's epilogue fused (bias per output channel, the
// activation by its run-time code, the optional residual; a wanted pre-activation takes an extra activation pass,
// see the .cu). Compiled for
// sm_90a only (conv2d_act_sm90.cu); conv2d_act.cu dispatches to it.
#pragma once

#include <cuda_runtime.h>

#include "conv2d_act.h"

namespace deepfuse {

// Why the sm_90a kernel cannot take this call (dtype, groups, layout, alignment, TMA im2col limits), or null when
// it can. The device capability is the caller's to check.
const char* conv2d_act_fwd_sm90_refusal(const Conv2dActFwdArgs& args);

// The kernel's label (as the resource gate and the dry runs name it) for a dtype code it takes.
const char* conv2d_act_fwd_sm90_kernel_label(int dtype);

// The label of the activation pass (y = act(z)) that follows the kernel when the pre-activation is wanted.
const char* conv2d_act_fwd_sm90_activation_pass_label(int dtype);

// Runs the call, which conv2d_act_fwd_sm90_refusal accepted, on the current (capability 9.0) device.
void conv2d_act_fwd_sm90(const Conv2dActFwdArgs& args, cudaStream_t stream);

}  // namespace deepfuse
