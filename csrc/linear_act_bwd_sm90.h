// linear_act backward on Hopper: dz = dy * act'(saved) is stored once (linear_act.cu's grad_preact kernel, which also
// sums db), then dx = dz W and dW = dz^T x run as CUTLASS 3.x warp-specialised GEMMs (TMA loads, wgmma,
// setmaxnreg, a persistent tile scheduler), compiled for sm_90a only (linear_act_bwd_sm90.cu).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "linear_act.h"

namespace deepfuse {

// Why the sm_90a GEMMs cannot take this call (dtype, sizes, layout, alignment), or null when they can. The device
// capability and the workspace are the caller's to check (linear_act.cu).
const char* linear_act_bwd_sm90_refusal(const LinearActBwdArgs& args);

// The two GEMM kernels' labels (as the resource gate and the dry runs name them), "dgrad + wgrad", for a dtype code.
std::string linear_act_bwd_sm90_kernel_labels(int dtype);

// dx = dz W into args.grad_x and dW = dz^T x into args.grad_weight (each skipped when its pointer is null), with dz
// (M, N) contiguous at `dz`. For a call linear_act_bwd_sm90_refusal accepted, on the current (9.0) device.
void linear_act_bwd_sm90_gemms(const LinearActBwdArgs& args, const void* dz, cudaStream_t stream);

}  // namespace deepfuse
