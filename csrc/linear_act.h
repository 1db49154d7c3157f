// linear_act: y = act(x @ W^T + b), forward and backward, on raw device pointers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace deepfuse {

struct LinearActFwdArgs {
  const void* x;  // (M, K), strides (x_stride_m, x_stride_k)
  int64_t x_stride_m, x_stride_k;
  const void* weight;  // (N, K), strides (w_stride_n, w_stride_k)
  int64_t w_stride_n, w_stride_k;
  const void* bias;  // (N,) contiguous, or null
  void* y;           // (M, N) contiguous
  void* preact;      // (M, N) contiguous, or null: z = x @ W^T + b, saved for backward
  int64_t M, N, K;
  int dtype, activation;
};

struct LinearActBwdArgs {
  const void* grad_y;  // (M, N) contiguous
  const void* saved;   // (M, N) contiguous: y for relu/leaky_relu, z otherwise (unused for "none")
  const void* x;
  int64_t x_stride_m, x_stride_k;
  const void* weight;
  int64_t w_stride_n, w_stride_k;
  void* grad_x;       // (M, K) contiguous, or null when not needed
  void* grad_weight;  // (N, K) contiguous, or null when not needed
  void* grad_bias;    // (N,), or null when there is no bias
  int64_t M, N, K;
  int dtype, activation;
  // Device scratch of linear_act_bwd_workspace_bytes(...) bytes (16-byte aligned), or null: the sm_90a backward
  // stores dz and db's partial sums there; without it (or too small) backward takes the WMMA kernels.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// The kernel linear_act_fwd picks for a call on a device of compute capability `capability` (major * 10 + minor),
// as its label, and why: the sm_90a CUTLASS kernel (capability 90, fp16/bf16, TMA-aligned) or the WMMA/SIMT one.
struct LinearActKernelChoice {
  const char* kernel;
  std::string reason;
  bool sm90;
};
LinearActKernelChoice choose_linear_act_fwd_kernel(const LinearActFwdArgs& args, int capability);

// The same for linear_act_bwd: the sm_90a path (dz stored by the grad_preact kernel, then CUTLASS dgrad and wgrad
// GEMMs) or the WMMA/SIMT kernels that form dz while loading tiles. `kernel` names the GEMM kernels.
struct LinearActBwdKernelChoice {
  std::string kernel;
  std::string reason;
  bool sm90;
};
LinearActBwdKernelChoice choose_linear_act_bwd_kernel(const LinearActBwdArgs& args, int capability);

// Bytes of LinearActBwdArgs::workspace the backward wants on the current device (0 on a device whose backward needs
// none): dz (M, N) unless the activation is "none" (dz = dy then), and fp32 partial column sums of dz for db.
int64_t linear_act_bwd_workspace_bytes(int64_t M, int64_t N, int dtype, int activation, bool grad_bias);

void linear_act_fwd(const LinearActFwdArgs& args, cudaStream_t stream);
void linear_act_bwd(const LinearActBwdArgs& args, cudaStream_t stream);

}  // namespace deepfuse
