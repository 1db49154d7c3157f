// linear_act forward on Hopper: a CUTLASS 3.x warp-specialised GEMM (TMA loads, wgmma, setmaxnreg, a persistent
// tile scheduler) with deepfuse's epilogue fused (bias, every activation by its run-time code, the optional
// pre-activation). Compiled for sm_90a only (gemm_sm90.cu); linear_act.cu dispatches to it.
#pragma once

#include <cuda_runtime.h>

#include "linear_act.h"

namespace deepfuse {

// Why the sm_90a kernel cannot take this call (dtype, layout, alignment), or null when it can. The device
// capability is the caller's to check.
const char* linear_act_fwd_sm90_refusal(const LinearActFwdArgs& args);

// The kernel's label (as the resource gate and the dry runs name it) for a dtype code it takes.
const char* linear_act_fwd_sm90_kernel_label(int dtype);

// Runs the call, which linear_act_fwd_sm90_refusal accepted, on the current (capability 9.0) device.
void linear_act_fwd_sm90(const LinearActFwdArgs& args, cudaStream_t stream);

}  // namespace deepfuse
