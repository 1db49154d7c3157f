// attention: softmax(q k^T * scale + masks) v, flash-style forward and backward, on raw device pointers.
// The contract of kernels/attention.py's padded layout: q (B, Hq, Nq, D), k and v (B, Hkv, Nk, D) with any
// strides, GQA (query head h reads kv head h / (Hq / Hkv)), causal mask top-left aligned (key j visible to
// query i when j <= i), an optional key-padding mask uint8 (B, Nk), nonzero = ignore the key.
// Varlen (packed sequences, as kernels/attention.py's VARLEN): with cu_seqlens_q/k set, q is (Tq, Hq, D) and k, v
// are (Tk, Hkv, D) passed as (1, H, T, D) strides (batch stride 0, head stride = stride(1), token stride =
// stride(0)); sizes are (num_seqs, Hq, Hkv, max_seqlen_q, max_seqlen_k, D); sequence b is tokens cu[b]..cu[b+1]
// (int32, on the device), causal top-left per sequence, no key-padding mask; out, lse, delta, grad_q, grad_k and
// grad_v take the packed layouts noted below.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace deepfuse {

struct AttentionSizes {
  int64_t batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim;
};

// Element strides in (batch, head, token, dim) order.
struct AttentionStrides {
  int64_t batch, head, token, dim;
};

struct AttentionFwdArgs {
  AttentionSizes sizes;
  const void* q;
  AttentionStrides q_strides;
  const void* k;
  AttentionStrides k_strides;
  const void* v;
  AttentionStrides v_strides;
  const void* key_padding_mask;  // uint8 (B, Nk), or null
  int64_t mask_stride_b, mask_stride_n;
  void* out;  // (B, Hq, Nq, D) contiguous, q's dtype; zeros for a query that sees no key
  void* lse;  // (B, Hq, Nq) contiguous fp32: log2(sum_j exp2(s_j)) with s in base-2 units; +inf for no key
  double scale;
  bool causal;
  int dtype;
  // Varlen: both null (padded layout) or both set; out is then (Tq, Hq, D) and lse (Hq, Tq).
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  int64_t total_q;  // Tq (varlen only)
};

struct AttentionBwdArgs {
  AttentionSizes sizes;
  const void* grad_out;  // (B, Hq, Nq, D)
  AttentionStrides grad_out_strides;
  const void* q;
  AttentionStrides q_strides;
  const void* k;
  AttentionStrides k_strides;
  const void* v;
  AttentionStrides v_strides;
  const void* key_padding_mask;
  int64_t mask_stride_b, mask_stride_n;
  const void* lse;    // the forward's, (B, Hq, Nq) contiguous fp32
  const void* delta;  // rowsum(dO * O), (B, Hq, Nq) contiguous fp32
  void* grad_q;       // (B, Hq, Nq, D) contiguous, q's dtype
  void* grad_k;       // (B, Hq, Nk, D) contiguous fp32, per QUERY head: the caller sums each GQA group
  void* grad_v;       // (B, Hq, Nk, D) contiguous fp32, likewise
  double scale;
  bool causal;
  int dtype;
  // Varlen: grad_q (Tq, Hq, D); grad_k, grad_v (Tk, Hq, D) fp32 per query head; lse and delta (Hq, Tq).
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  int64_t total_q;
};

void attention_fwd(const AttentionFwdArgs& args, cudaStream_t stream);
void attention_bwd(const AttentionBwdArgs& args, cudaStream_t stream);

}  // namespace deepfuse
