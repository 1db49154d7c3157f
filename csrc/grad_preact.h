// dz = dy * act'(saved) stored once, and db = the column sums of dz, for a row-major (M, N) gradient: the step the
// sm_90a backward GEMMs need before they run, because their TMA loads copy tiles as stored and cannot apply act'
// on the way (linear_act.cu and conv2d_act.cu use it; for a convolution M = N * OH * OW, N = Cout, NHWC).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace deepfuse {

struct GradPreactArgs {
  const void* grad_y;  // (M, N) contiguous, 16-byte aligned, N % 8 == 0, 2-byte dtype
  const void* saved;   // like grad_y; unread for activation "none"
  void* grad_bias;     // (N,), or null
  void* workspace;     // grad_preact_workspace_bytes(M, N, activation, grad_bias != null) bytes, 16-byte aligned
  int64_t M, N;
  int dtype, activation;
  bool store_dz;  // false: only db is wanted (no GEMM reads dz)
};

// The workspace: dz (M, N) first, padded to 256 bytes (none for "none", whose dz is dy), then fp32 partial column
// sums when db is wanted.
int64_t grad_preact_workspace_bytes(int64_t M, int64_t N, int activation, bool grad_bias);

// Stores dz (when args.store_dz and the activation is not "none") at the workspace's start and db (when wanted), on
// `stream`, or records the launches in a dry run. Returns where the GEMMs read dz: the workspace, or grad_y for "none".
const void* run_grad_preact(const GradPreactArgs& args, cudaStream_t stream);

}  // namespace deepfuse
