// lstm: the LSTM cell and one layer's recurrence (PyTorch's gate order i, f, g, o), forward and backward, on raw
// device pointers. The contract of kernels/lstm.py's launchers; see lstm.cu for the kernels and the two paths.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace deepfuse {

// Which kernels lstm_seq_fwd/bwd run: chosen by the device and hidden size (kAuto), or forced (tests, benchmarks).
enum class LstmPath : int { kAuto = 0, kPersistent = 1, kPerStep = 2 };

struct LstmCellFwdArgs {
  const void* x;  // (B, IN), any strides
  int64_t x_stride_b, x_stride_k;
  const void* h;  // (B, H)
  int64_t h_stride_b, h_stride_k;
  const void* c;  // (B, H)
  int64_t c_stride_b, c_stride_j;
  const void* w_ih;  // (4H, IN)
  int64_t w_ih_stride_r, w_ih_stride_k;
  const void* w_hh;  // (4H, H)
  int64_t w_hh_stride_r, w_hh_stride_k;
  const void* bias;  // (4H,) contiguous (b_ih + b_hh), or null
  void* h_next;      // (B, H) contiguous
  void* c_next;      // (B, H) contiguous
  void* gates;       // (B, 4H) contiguous activated gates, or null
  int64_t B, IN, H;
  int dtype;
};

struct LstmCellGradGatesArgs {
  const void* grad_h;  // (B, H) contiguous
  const void* grad_c;  // (B, H) contiguous, or null (zero)
  const void* c;       // (B, H) contiguous: the cell state before the step
  const void* c_next;  // (B, H) contiguous
  const void* gates;   // (B, 4H) contiguous, activated
  void* dgates;        // (B, 4H) contiguous: pre-activation gate gradients
  void* dc_prev;       // (B, H) contiguous
  int64_t B, H;
  int dtype;
};

struct LstmSeqFwdArgs {
  const void* xp;  // (T, B, 4H) contiguous: input projections with both biases
  const void* w_hh;
  int64_t w_stride_r, w_stride_k;
  const int32_t* lengths;  // (B,) or null
  void* hs;                // (T + 1, B, H) contiguous; index 0 (h0) filled by the caller
  const void* c0;          // (B, H) contiguous: the cell state before step 0
  void* cs;                // (T + 1, B, H) contiguous with c0 at index 0 (filled by the caller), or null (not saved)
  void* gates;             // (T, B, 4H) contiguous activated gates, or null (not saved)
  void* c_n;               // (B, H) contiguous: each row's c after its last valid step (c0 for length 0)
  float* c_work;           // (B, H) fp32 scratch
  int64_t T, B, H;
  int dtype;
  int path;  // LstmPath
};

struct LstmSeqBwdArgs {
  const void* dhs;    // (T + 1, B, H) contiguous: gradients of hs (index 0: h0)
  const void* dcs;    // (T + 1, B, H) contiguous: gradients of cs
  const void* cs;     // (T + 1, B, H) contiguous, as the forward returned it
  const void* gates;  // (T, B, 4H) contiguous, as the forward returned it
  const void* w_hh;
  int64_t w_stride_r, w_stride_k;
  const int32_t* lengths;  // (B,) or null
  void* dgates;            // (T, B, 4H) contiguous: pre-activation gate gradients
  void* dh0;               // (B, H) contiguous
  void* dc0;               // (B, H) contiguous
  float* work;             // (2, B, H) fp32 scratch: the dh and dc carries
  int64_t T, B, H;
  int dtype;
  int path;  // LstmPath
};

void lstm_cell_fwd(const LstmCellFwdArgs& args, cudaStream_t stream);
void lstm_cell_grad_gates(const LstmCellGradGatesArgs& args, cudaStream_t stream);
void lstm_seq_fwd(const LstmSeqFwdArgs& args, cudaStream_t stream);
void lstm_seq_bwd(const LstmSeqBwdArgs& args, cudaStream_t stream);
// The path lstm_seq_fwd/bwd take on the current device for this hidden size and dtype (kPersistent or kPerStep).
LstmPath lstm_seq_path(int64_t H, int dtype);

}  // namespace deepfuse
