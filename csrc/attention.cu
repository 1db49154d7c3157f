// attention: flash attention forward and backward (FlashAttention-2's split), the CUDA twin of
// kernels/attention.py's padded and varlen layouts (varlen: batch index = sequence index, grids sized by the
// longest sequence, blocks past their sequence's end return at once).
//   forward  one block per (64 queries, batch * query head): online softmax over key tiles with a running
//            max and sum in fp32; writes O and the base-2 log-sum-exp of each query
//   dK, dV   one block per (64 keys, batch * query head), looping over query tiles; fp32, per query head
//   dQ       one block per (64 queries, batch * query head), looping over key tiles
// No atomics, so backward is deterministic. Each of the 4 warps owns 16 of the block's 64 rows and does its
// softmax and products alone; block-wide syncs guard only the streamed tiles every warp reads. fp16/bf16
// multiply on tensor cores through WMMA (16x16x16, fp32 accumulation); fp32 uses exact SIMT products.
// The head dim is padded (zero-filled) to DP = 32, 64, 128 or 256.
#include <mma.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "attention.h"
#include "common.cuh"

namespace deepfuse {

namespace {

using namespace nvcuda;

// __launch_bounds__(kThreads, 1) on the kernels: without the minimum ptxas aimed at 128 or 168 registers and
// spilled; shared memory caps residency at 1-2 blocks per SM anyway.
constexpr int kThreads = 128;  // 4 warps
constexpr int kRows = 64;      // rows a block owns, 16 per warp: queries (forward, dQ) or keys (dK, dV)
constexpr double kLog2e = 1.4426950408889634;

template <typename T, int DP>
struct Tile {
  static constexpr bool kWmma = !std::is_same<T, float>::value;
  // Rows streamed per step (keys in forward and dQ, queries in dK/dV); fewer for wide heads so that shared
  // memory stays under A100's 163 KB per block.
  static constexpr int kStream = (kWmma ? DP <= 128 : DP <= 64) ? 64 : 32;
  static constexpr int kPad = 16 / static_cast<int>(sizeof(T));
  // Row pads keep WMMA's ldm a multiple of 16 bytes and rows 16-byte aligned for vector copies, and
  // shift banks from row to row.
  static constexpr int kLd = DP + kPad;         // q, k, v, dO tiles (T)
  static constexpr int kLdS = kStream + 4;      // scores and dP (fp32)
  static constexpr int kLdP = kStream + kPad;   // probabilities and dS (T), the A operand of P.V-like products
  static constexpr int kStage = kWmma ? 256 : 0;  // per warp: one 16x16 fp32 fragment read back through smem
  // dK and dV accumulators together take DP fp32 registers per thread (spills from DP = 128 on): wide heads
  // sweep the queries twice, once per gradient, recomputing S and P.
  static constexpr bool kSplitDkDv = DP >= 128;
};

constexpr size_t round128(size_t bytes) { return (bytes + 127) / 128 * 128; }

// Shared-memory regions in bytes, each 128-byte aligned; kernels take them in the order of the sums below.
template <typename T, int DP>
struct Smem {
  using C = Tile<T, DP>;
  static constexpr size_t kOwnTile = round128(sizeof(T) * kRows * C::kLd);
  static constexpr size_t kStreamTile = round128(sizeof(T) * C::kStream * C::kLd);
  static constexpr size_t kScores = round128(sizeof(float) * kRows * C::kLdS);
  static constexpr size_t kProbs = round128(sizeof(T) * kRows * C::kLdP);
  static constexpr size_t kStage = round128(sizeof(float) * 4 * C::kStage);
  static constexpr size_t kOwnVec = round128(sizeof(float) * kRows);        // one float/int per owned row
  static constexpr size_t kStreamVec = round128(sizeof(float) * C::kStream);  // one per streamed row
  // q | k | v | scores | probs | stage | row sums | key_ok
  static constexpr size_t kFwd = kOwnTile + 2 * kStreamTile + kScores + kProbs + kStage + kOwnVec + kStreamVec;
  // q | dO | k | v | scores | dP | dS | stage | lse | delta | key_ok
  static constexpr size_t kDq = 2 * kOwnTile + 2 * kStreamTile + 2 * kScores + kProbs + kStage + 2 * kOwnVec +
                                kStreamVec;
  // k | v | q | dO | scores (then P) | dP | P or dS | stage | lse | delta | key_ok
  static constexpr size_t kDkDv = 2 * kOwnTile + 2 * kStreamTile + 2 * kScores + kProbs + kStage +
                                  2 * kStreamVec + kOwnVec;
};

struct Carve {
  unsigned char* at;
  template <typename U>
  __device__ __forceinline__ U* take(size_t bytes) {
    U* region = reinterpret_cast<U*>(at);
    at += bytes;
    return region;
  }
};

struct Params {
  const void *q, *k, *v, *grad_out;
  AttentionStrides qs, ks, vs, dos;
  bool q_vec, k_vec, v_vec, do_vec;  // unit dim stride and 16-byte aligned rows: copy 16 bytes at a time
  const uint8_t* mask;
  int64_t mask_stride_b, mask_stride_n;
  void* out;           // forward O, or dQ
  float* lse;          // written by forward, read by backward
  const float* delta;  // backward
  float *dk, *dv;      // backward, fp32 (B, Hq, Nk, D)
  const int32_t *cu_q, *cu_k;  // varlen: sequence starts (both set), or null for the padded layout
  int64_t total_q;             // varlen: Tq, the head stride of lse and delta (Hq, Tq)
  int64_t hq, group, nq, nk;   // nq, nk: varlen's max_seqlen_q/k
  int d;
  float scale, qk_scale;  // qk_scale = scale * log2(e): scores in base-2 units
  bool causal;
};

struct BlockCoords {
  int64_t row0, b, h, kv_h, bh;
  int64_t q0, k0, nq, nk;  // the sequence's first query and key token and its lengths (padded: 0, 0, Nq, Nk)
};

// blockIdx.x -> (first owned row, batch or sequence, head, kv head). The tiles of one head are adjacent, for K/V
// reuse in L2; `last_first` runs the last tile first (under a causal mask the last query tile has the most work).
// Varlen grids are sized by the longest sequence: a block whose first row is past its own sequence's end has
// nothing to do, and the kernels return at once.
__device__ __forceinline__ BlockCoords block_coords(const Params& p, bool key_rows, bool last_first) {
  const int64_t tiles = ((key_rows ? p.nk : p.nq) + kRows - 1) / kRows;
  const int64_t bh = blockIdx.x / tiles;
  const int64_t in_head = blockIdx.x % tiles;
  const int64_t tile = last_first ? tiles - 1 - in_head : in_head;
  const int64_t h = bh % p.hq;
  BlockCoords bc{tile * kRows, bh / p.hq, h, h / p.group, bh, 0, 0, p.nq, p.nk};
  if (p.cu_q != nullptr) {
    bc.q0 = p.cu_q[bc.b];
    bc.nq = p.cu_q[bc.b + 1] - bc.q0;
    bc.k0 = p.cu_k[bc.b];
    bc.nk = p.cu_k[bc.b + 1] - bc.k0;
  }
  return bc;
}

// Element offset of row 0 of this block's head in a contiguous per-query-head output with n rows (out, dQ: the
// queries; dK, dV: the keys) whose sequence starts at token `first`: (B, Hq, N, D), or packed (T, Hq, D) ...
__device__ __forceinline__ int64_t out_base(const Params& p, const BlockCoords& bc, int64_t first, int64_t n) {
  return p.cu_q != nullptr ? (first * p.hq + bc.h) * p.d : bc.bh * n * p.d;
}

// ... whose rows are this far apart.
__device__ __forceinline__ int64_t out_ld(const Params& p) { return p.cu_q != nullptr ? p.hq * p.d : p.d; }

// Offset of query 0 of this block's head in lse and delta: (B, Hq, Nq), or packed (Hq, Tq).
__device__ __forceinline__ int64_t lse_base(const Params& p, const BlockCoords& bc) {
  return p.cu_q != nullptr ? bc.h * p.total_q + bc.q0 : bc.bh * bc.nq;
}

// Row 0 of head h of batch b; `first` is the sequence's first token (varlen; 0 for padded).
template <typename T>
__device__ __forceinline__ const T* head_ptr(const void* base, const AttentionStrides& s, int64_t b, int64_t h,
                                             int64_t first) {
  return static_cast<const T*>(base) + b * s.batch + h * s.head + first * s.token;
}

// Copies rows [r0, r0 + ROWS) of one head's (n_rows x d) matrix into shared memory (row stride LD, DP columns),
// zero-filling rows past n_rows and columns past d, so padding adds nothing to any product.
template <typename T, int ROWS, int DP, int LD>
__device__ __forceinline__ void load_rows(const T* __restrict__ src, const AttentionStrides& s, bool vec, int64_t r0,
                                          int64_t n_rows, int d, T* dst) {
  if (vec) {
    constexpr int kVec = 16 / sizeof(T);
    constexpr int kChunks = DP / kVec;
    // Loads in flight cost registers while the warps' accumulators are live: a few at a time.
#pragma unroll 2
    for (int i = threadIdx.x; i < ROWS * kChunks; i += kThreads) {
      const int r = i / kChunks, c = (i % kChunks) * kVec;
      uint4 value = make_uint4(0u, 0u, 0u, 0u);
      if (r0 + r < n_rows && c < d) value = *reinterpret_cast<const uint4*>(src + (r0 + r) * s.token + c);
      *reinterpret_cast<uint4*>(dst + r * LD + c) = value;
    }
  } else {
    // Walk the unit-stride dimension with consecutive threads where there is one.
    const bool d_fastest = s.dim == 1 || s.token != 1;
#pragma unroll 2
    for (int i = threadIdx.x; i < ROWS * DP; i += kThreads) {
      const int r = d_fastest ? i / DP : i % ROWS;
      const int c = d_fastest ? i % DP : i / ROWS;
      T value = from_float<T>(0.0f);
      if (r0 + r < n_rows && c < d) value = src[(r0 + r) * s.token + c * s.dim];
      dst[r * LD + c] = value;
    }
  }
}

// key_ok[c] = key key0 + c exists and is not padded.
template <int N>
__device__ __forceinline__ void load_key_ok(const uint8_t* mask, int64_t stride, int64_t key0, int64_t nk,
                                            int* key_ok) {
  for (int c = threadIdx.x; c < N; c += kThreads) {
    const int64_t key = key0 + c;
    key_ok[c] = key < nk && (mask == nullptr || mask[key * stride] == 0);
  }
}

// Backward's view of one score: P = exp2(s * qk_scale - lse) from the saved base-2 LSE; 0 where the key is
// masked, and 0 for a query that saw no key (lse = +inf).
__device__ __forceinline__ float probability(float score, bool key_ok, int64_t key, int64_t query, bool causal,
                                             float qk_scale, float lse) {
  const bool visible = key_ok && (!causal || key <= query);
  return exp2f((visible ? score * qk_scale : -INFINITY) - lse);
}

// ---------------------------------------------------------------------------------------------------------
// Warp-level products on row-major shared-memory tiles. X is the warp's 16 rows.
// SIMT lane layout (fp32): lane = 8 * rg + cg owns rows rg + 4 * i (i < 4) and columns cg + 8 * j; with row
// strides of DP + 4 floats each access touches distinct banks or broadcasts.
// ---------------------------------------------------------------------------------------------------------

// out (16 x NC, fp32) = X (16 x DP) . Y^T, Y being NC rows of DP.
template <typename T, int DP, int NC>
__device__ __forceinline__ void warp_gemm_nt(const T* x, int ldx, const T* y, int ldy, float* out, int ldo) {
  if constexpr (std::is_same<T, float>::value) {
    const int lane = threadIdx.x & 31, rg = lane >> 3, cg = lane & 7;
    float acc[4][NC / 8] = {};
#pragma unroll 4
    for (int d = 0; d < DP; ++d) {
      float xv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) xv[i] = x[(rg + 4 * i) * ldx + d];
#pragma unroll
      for (int j = 0; j < NC / 8; ++j) {
        const float yv = y[(cg + 8 * j) * ldy + d];
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i][j] = fmaf(xv[i], yv, acc[i][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < NC / 8; ++j) out[(rg + 4 * i) * ldo + cg + 8 * j] = acc[i][j];
  } else {
#pragma unroll 1
    for (int nc = 0; nc < NC / 16; ++nc) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kd = 0; kd < DP / 16; ++kd) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;  // Y^T: Y's rows are B's columns
        wmma::load_matrix_sync(a, x + kd * 16, ldx);
        wmma::load_matrix_sync(b, y + nc * 16 * ldy + kd * 16, ldy);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(out + nc * 16, acc, ldo, wmma::mem_row_major);
    }
  }
}

// A warp's 16 x DP fp32 accumulator: O in forward, dQ, dK or dV in backward.
template <typename T, int DP, bool WMMA = Tile<T, DP>::kWmma>
struct WarpAcc;

template <typename T, int DP>
struct WarpAcc<T, DP, true> {
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag[DP / 16];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int j = 0; j < DP / 16; ++j) wmma::fill_fragment(frag[j], 0.0f);
  }

  // += P (16 x NC, T) . Y (NC x DP)
  template <int NC>
  __device__ __forceinline__ void add_product(const T* p, int ldp, const T* y, int ldy) {
#pragma unroll 1
    for (int kc = 0; kc < NC / 16; ++kc) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, p + kc * 16, ldp);
#pragma unroll
      for (int j = 0; j < DP / 16; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
        wmma::load_matrix_sync(b, y + kc * 16 * ldy + j * 16, ldy);
        wmma::mma_sync(frag[j], a, b, frag[j]);
      }
    }
  }

  // Row r *= factor[r]. WMMA hides which element a thread holds, so the factors are loaded as an accumulator
  // fragment too (row r = factor[r]): same fragment type, same element order.
  __device__ __forceinline__ void scale_rows(const float* factor, float* stage) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < 8; ++t) stage[lane + 32 * t] = factor[(lane + 32 * t) >> 4];
    __syncwarp();
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> scale;
    wmma::load_matrix_sync(scale, stage, 16, wmma::mem_row_major);
#pragma unroll
    for (int j = 0; j < DP / 16; ++j)
#pragma unroll
      for (int t = 0; t < scale.num_elements; ++t) frag[j].x[t] *= scale.x[t];
    __syncwarp();
  }

  // fn(row, col, value) for every element, read back through the warp's 16x16 stage.
  template <typename Fn>
  __device__ __forceinline__ void for_each(float* stage, Fn&& fn) const {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < DP / 16; ++j) {
      wmma::store_matrix_sync(stage, frag[j], 16, wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        const int e = lane + 32 * t;
        fn(e >> 4, j * 16 + (e & 15), stage[e]);
      }
      __syncwarp();
    }
  }
};

template <typename T, int DP>
struct WarpAcc<T, DP, false> {
  float acc[4][DP / 8];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < DP / 8; ++j) acc[i][j] = 0.0f;
  }

  template <int NC>
  __device__ __forceinline__ void add_product(const T* p, int ldp, const T* y, int ldy) {
    const int lane = threadIdx.x & 31, rg = lane >> 3, cg = lane & 7;
#pragma unroll 2
    for (int c = 0; c < NC; ++c) {
      float pv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) pv[i] = p[(rg + 4 * i) * ldp + c];
#pragma unroll
      for (int j = 0; j < DP / 8; ++j) {
        const float yv = y[c * ldy + cg + 8 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i][j] = fmaf(pv[i], yv, acc[i][j]);
      }
    }
  }

  __device__ __forceinline__ void scale_rows(const float* factor, float*) {
    const int rg = (threadIdx.x & 31) >> 3;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float f = factor[rg + 4 * i];
#pragma unroll
      for (int j = 0; j < DP / 8; ++j) acc[i][j] *= f;
    }
  }

  template <typename Fn>
  __device__ __forceinline__ void for_each(float*, Fn&& fn) const {
    const int lane = threadIdx.x & 31, rg = lane >> 3, cg = lane & 7;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < DP / 8; ++j) fn(rg + 4 * i, cg + 8 * j, acc[i][j]);
  }
};

// Online-softmax step over one key tile for the warp's 16 queries. Lanes 2r and 2r + 1 share row r (columns
// of their parity) and both keep its running max m and sum l. Writes P = exp2(s - m_new) (type T) and each
// row's rescale factor alpha = exp2(m_old - m_new).
template <typename T, int NC>
__device__ __forceinline__ void online_softmax(const float* scores, int lds, T* probs, int ldp, float* factor,
                                               const int* key_ok, int64_t key0, int64_t query, bool causal,
                                               float qk_scale, float& m, float& l) {
  const int lane = threadIdx.x & 31, r = lane >> 1, parity = lane & 1;
  float s[NC / 2];
  float tile_max = -INFINITY;
#pragma unroll
  for (int i = 0; i < NC / 2; ++i) {
    const int c = parity + 2 * i;
    const bool visible = key_ok[c] && (!causal || key0 + c <= query);
    s[i] = visible ? scores[r * lds + c] * qk_scale : -INFINITY;
    tile_max = fmaxf(tile_max, s[i]);
  }
  tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
  const float m_new = fmaxf(m, tile_max);
  const float m_safe = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet: P and alpha are 0, not NaN
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < NC / 2; ++i) {
    const float prob = exp2f(s[i] - m_safe);
    sum += prob;
    probs[r * ldp + parity + 2 * i] = from_float<T>(prob);
  }
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  const float alpha = exp2f(m - m_safe);
  l = l * alpha + sum;
  m = m_new;
  if (parity == 0) factor[r] = alpha;
}

// ---------------------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------------------

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads, 1) attention_fwd_kernel(const Params p) {
  using C = Tile<T, DP>;
  using S = Smem<T, DP>;
  constexpr int BN = C::kStream;
  extern __shared__ __align__(128) unsigned char smem[];
  Carve carve{smem};
  T* q_s = carve.take<T>(S::kOwnTile);
  T* k_s = carve.take<T>(S::kStreamTile);
  T* v_s = carve.take<T>(S::kStreamTile);
  float* scores = carve.take<float>(S::kScores);
  T* probs = carve.take<T>(S::kProbs);
  float* stage = carve.take<float>(S::kStage);
  float* row_f = carve.take<float>(S::kOwnVec);
  int* key_ok = carve.take<int>(S::kStreamVec);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const BlockCoords bc = block_coords(p, false, true);
  if (bc.row0 >= bc.nq) return;  // varlen: past this sequence's queries (uniform across the block)
  const T* k = head_ptr<T>(p.k, p.ks, bc.b, bc.kv_h, bc.k0);
  const T* v = head_ptr<T>(p.v, p.vs, bc.b, bc.kv_h, bc.k0);
  const uint8_t* mask = p.mask != nullptr ? p.mask + bc.b * p.mask_stride_b : nullptr;
  load_rows<T, kRows, DP, C::kLd>(head_ptr<T>(p.q, p.qs, bc.b, bc.h, bc.q0), p.qs, p.q_vec, bc.row0, bc.nq, p.d,
                                  q_s);

  const T* q_w = q_s + warp * 16 * C::kLd;
  float* scores_w = scores + warp * 16 * C::kLdS;
  T* probs_w = probs + warp * 16 * C::kLdP;
  float* stage_w = stage + warp * C::kStage;
  float* factor_w = row_f + warp * 16;
  const int64_t row0_w = bc.row0 + warp * 16;
  const int64_t query = row0_w + (lane >> 1);  // this lane's row in the softmax

  WarpAcc<T, DP> acc;
  acc.zero();
  float m = -INFINITY, l = 0.0f;
  // Causal: keys past the tile's last query are invisible to all of it.
  const int64_t key_end = p.causal && bc.row0 + kRows < bc.nk ? bc.row0 + kRows : bc.nk;
  for (int64_t n0 = 0; n0 < key_end; n0 += BN) {
    __syncthreads();  // every warp is done with the previous k, v tiles (and q_s is complete)
    load_rows<T, BN, DP, C::kLd>(k, p.ks, p.k_vec, n0, bc.nk, p.d, k_s);
    load_rows<T, BN, DP, C::kLd>(v, p.vs, p.v_vec, n0, bc.nk, p.d, v_s);
    load_key_ok<BN>(mask, p.mask_stride_n, n0, bc.nk, key_ok);
    __syncthreads();
    warp_gemm_nt<T, DP, BN>(q_w, C::kLd, k_s, C::kLd, scores_w, C::kLdS);
    __syncwarp();
    online_softmax<T, BN>(scores_w, C::kLdS, probs_w, C::kLdP, factor_w, key_ok, n0, query, p.causal, p.qk_scale,
                          m, l);
    __syncwarp();
    acc.scale_rows(factor_w, stage_w);
    acc.template add_product<BN>(probs_w, C::kLdP, v_s, C::kLd);
  }

  // factor_w is reused for 1 / l: every lane must be done reading the last alpha. A row that saw no key
  // (l == 0) outputs zeros and LSE +inf.
  __syncwarp();
  if ((lane & 1) == 0) {
    factor_w[lane >> 1] = l > 0.0f ? 1.0f / l : 0.0f;
    if (query < bc.nq) p.lse[lse_base(p, bc) + query] = l > 0.0f ? m + log2f(l) : INFINITY;
  }
  __syncwarp();
  T* out = static_cast<T*>(p.out) + out_base(p, bc, bc.q0, bc.nq);
  const int64_t ld = out_ld(p);
  acc.for_each(stage_w, [&](int r, int c, float value) {
    if (row0_w + r < bc.nq && c < p.d) out[(row0_w + r) * ld + c] = from_float<T>(value * factor_w[r]);
  });
}

// dQ = scale * sum over key tiles of dS K, dS = P * (dP - delta), dP = dO V^T.
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads, 1) attention_bwd_dq_kernel(const Params p) {
  using C = Tile<T, DP>;
  using S = Smem<T, DP>;
  constexpr int BN = C::kStream;
  extern __shared__ __align__(128) unsigned char smem[];
  Carve carve{smem};
  T* q_s = carve.take<T>(S::kOwnTile);
  T* do_s = carve.take<T>(S::kOwnTile);
  T* k_s = carve.take<T>(S::kStreamTile);
  T* v_s = carve.take<T>(S::kStreamTile);
  float* scores = carve.take<float>(S::kScores);
  float* dp = carve.take<float>(S::kScores);
  T* ds = carve.take<T>(S::kProbs);
  float* stage = carve.take<float>(S::kStage);
  float* lse_s = carve.take<float>(S::kOwnVec);
  float* delta_s = carve.take<float>(S::kOwnVec);
  int* key_ok = carve.take<int>(S::kStreamVec);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const BlockCoords bc = block_coords(p, false, true);
  if (bc.row0 >= bc.nq) return;  // varlen: past this sequence's queries (uniform across the block)
  const T* k = head_ptr<T>(p.k, p.ks, bc.b, bc.kv_h, bc.k0);
  const T* v = head_ptr<T>(p.v, p.vs, bc.b, bc.kv_h, bc.k0);
  const uint8_t* mask = p.mask != nullptr ? p.mask + bc.b * p.mask_stride_b : nullptr;
  load_rows<T, kRows, DP, C::kLd>(head_ptr<T>(p.q, p.qs, bc.b, bc.h, bc.q0), p.qs, p.q_vec, bc.row0, bc.nq, p.d,
                                  q_s);
  load_rows<T, kRows, DP, C::kLd>(head_ptr<T>(p.grad_out, p.dos, bc.b, bc.h, bc.q0), p.dos, p.do_vec, bc.row0,
                                  bc.nq, p.d, do_s);
  const int64_t stats = lse_base(p, bc);
  for (int i = threadIdx.x; i < kRows; i += kThreads) {
    const int64_t row = bc.row0 + i;  // rows past Nq: P = 0, so they add nothing
    lse_s[i] = row < bc.nq ? p.lse[stats + row] : INFINITY;
    delta_s[i] = row < bc.nq ? p.delta[stats + row] : 0.0f;
  }

  const T* q_w = q_s + warp * 16 * C::kLd;
  const T* do_w = do_s + warp * 16 * C::kLd;
  float* scores_w = scores + warp * 16 * C::kLdS;
  float* dp_w = dp + warp * 16 * C::kLdS;
  T* ds_w = ds + warp * 16 * C::kLdP;
  float* stage_w = stage + warp * C::kStage;
  const float* lse_w = lse_s + warp * 16;
  const float* delta_w = delta_s + warp * 16;
  const int64_t row0_w = bc.row0 + warp * 16;

  WarpAcc<T, DP> acc;
  acc.zero();
  const int64_t key_end = p.causal && bc.row0 + kRows < bc.nk ? bc.row0 + kRows : bc.nk;
  for (int64_t n0 = 0; n0 < key_end; n0 += BN) {
    __syncthreads();
    load_rows<T, BN, DP, C::kLd>(k, p.ks, p.k_vec, n0, bc.nk, p.d, k_s);
    load_rows<T, BN, DP, C::kLd>(v, p.vs, p.v_vec, n0, bc.nk, p.d, v_s);
    load_key_ok<BN>(mask, p.mask_stride_n, n0, bc.nk, key_ok);
    __syncthreads();
    warp_gemm_nt<T, DP, BN>(q_w, C::kLd, k_s, C::kLd, scores_w, C::kLdS);
    warp_gemm_nt<T, DP, BN>(do_w, C::kLd, v_s, C::kLd, dp_w, C::kLdS);
    __syncwarp();
#pragma unroll 2
    for (int e = lane; e < 16 * BN; e += 32) {
      const int r = e / BN, c = e % BN;
      const float prob = probability(scores_w[r * C::kLdS + c], key_ok[c], n0 + c, row0_w + r, p.causal, p.qk_scale,
                                     lse_w[r]);
      ds_w[r * C::kLdP + c] = from_float<T>(prob * (dp_w[r * C::kLdS + c] - delta_w[r]));
    }
    __syncwarp();
    acc.template add_product<BN>(ds_w, C::kLdP, k_s, C::kLd);
  }

  T* dq = static_cast<T*>(p.out) + out_base(p, bc, bc.q0, bc.nq);
  const int64_t ld = out_ld(p);
  acc.for_each(stage_w, [&](int r, int c, float value) {
    if (row0_w + r < bc.nq && c < p.d) dq[(row0_w + r) * ld + c] = from_float<T>(value * p.scale);
  });
}

// dV = sum over query tiles of P^T dO; dK = scale * sum of dS^T Q. The warp owns 16 keys, so it works on the
// transposed tiles: S^T = K Q^T, dP^T = V dO^T.
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads, 1) attention_bwd_dkdv_kernel(const Params p) {
  using C = Tile<T, DP>;
  using S = Smem<T, DP>;
  constexpr int BM = C::kStream;
  extern __shared__ __align__(128) unsigned char smem[];
  Carve carve{smem};
  T* k_s = carve.take<T>(S::kOwnTile);
  T* v_s = carve.take<T>(S::kOwnTile);
  T* q_s = carve.take<T>(S::kStreamTile);
  T* do_s = carve.take<T>(S::kStreamTile);
  float* scores = carve.take<float>(S::kScores);
  float* dp = carve.take<float>(S::kScores);
  T* probs = carve.take<T>(S::kProbs);
  float* stage = carve.take<float>(S::kStage);
  float* lse_s = carve.take<float>(S::kStreamVec);
  float* delta_s = carve.take<float>(S::kStreamVec);
  int* key_ok = carve.take<int>(S::kOwnVec);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const BlockCoords bc = block_coords(p, true, false);
  if (bc.row0 >= bc.nk) return;  // varlen: past this sequence's keys (uniform across the block)
  const T* q = head_ptr<T>(p.q, p.qs, bc.b, bc.h, bc.q0);
  const T* grad_out = head_ptr<T>(p.grad_out, p.dos, bc.b, bc.h, bc.q0);
  const uint8_t* mask = p.mask != nullptr ? p.mask + bc.b * p.mask_stride_b : nullptr;
  load_rows<T, kRows, DP, C::kLd>(head_ptr<T>(p.k, p.ks, bc.b, bc.kv_h, bc.k0), p.ks, p.k_vec, bc.row0, bc.nk, p.d,
                                  k_s);
  load_rows<T, kRows, DP, C::kLd>(head_ptr<T>(p.v, p.vs, bc.b, bc.kv_h, bc.k0), p.vs, p.v_vec, bc.row0, bc.nk, p.d,
                                  v_s);
  load_key_ok<kRows>(mask, p.mask_stride_n, bc.row0, bc.nk, key_ok);
  const int64_t stats = lse_base(p, bc);

  const T* k_w = k_s + warp * 16 * C::kLd;
  const T* v_w = v_s + warp * 16 * C::kLd;
  float* scores_w = scores + warp * 16 * C::kLdS;
  float* dp_w = dp + warp * 16 * C::kLdS;
  T* probs_w = probs + warp * 16 * C::kLdP;
  float* stage_w = stage + warp * C::kStage;
  const int* key_ok_w = key_ok + warp * 16;
  const int64_t key0_w = bc.row0 + warp * 16;
  // Causal: queries before the block's first key see none of its keys.
  const int64_t query_begin = p.causal ? bc.row0 : 0;

  // One sweep over the query tiles, accumulating dV and/or dK.
  auto sweep = [&](auto want_dv, auto want_dk, WarpAcc<T, DP>& dv, WarpAcc<T, DP>& dk) {
    constexpr bool kDv = decltype(want_dv)::value, kDk = decltype(want_dk)::value;
    for (int64_t m0 = query_begin; m0 < bc.nq; m0 += BM) {
      __syncthreads();  // every warp is done with the previous q, dO tiles (and k_s, v_s, key_ok are complete)
      load_rows<T, BM, DP, C::kLd>(q, p.qs, p.q_vec, m0, bc.nq, p.d, q_s);
      load_rows<T, BM, DP, C::kLd>(grad_out, p.dos, p.do_vec, m0, bc.nq, p.d, do_s);
      for (int i = threadIdx.x; i < BM; i += kThreads) {
        const int64_t row = m0 + i;
        lse_s[i] = row < bc.nq ? p.lse[stats + row] : INFINITY;
        delta_s[i] = row < bc.nq ? p.delta[stats + row] : 0.0f;
      }
      __syncthreads();
      warp_gemm_nt<T, DP, BM>(k_w, C::kLd, q_s, C::kLd, scores_w, C::kLdS);
      __syncwarp();
#pragma unroll 2
      for (int e = lane; e < 16 * BM; e += 32) {  // P^T, kept in fp32 in place for dS
        const int r = e / BM, c = e % BM;
        const float prob = probability(scores_w[r * C::kLdS + c], key_ok_w[r], key0_w + r, m0 + c, p.causal,
                                       p.qk_scale, lse_s[c]);
        scores_w[r * C::kLdS + c] = prob;
        if (kDv) probs_w[r * C::kLdP + c] = from_float<T>(prob);
      }
      __syncwarp();
      if constexpr (kDv) dv.template add_product<BM>(probs_w, C::kLdP, do_s, C::kLd);
      if constexpr (kDk) {
        warp_gemm_nt<T, DP, BM>(v_w, C::kLd, do_s, C::kLd, dp_w, C::kLdS);
        __syncwarp();  // also: every lane is done reading P^T before dS^T overwrites it
#pragma unroll 2
        for (int e = lane; e < 16 * BM; e += 32) {
          const int r = e / BM, c = e % BM;
          probs_w[r * C::kLdP + c] = from_float<T>(scores_w[r * C::kLdS + c] * (dp_w[r * C::kLdS + c] - delta_s[c]));
        }
        __syncwarp();
        dk.template add_product<BM>(probs_w, C::kLdP, q_s, C::kLd);
      }
    }
  };
  // Kept in few registers across the sweeps: the warp's first output element and how many of its 16 keys exist.
  const int64_t grad_w = out_base(p, bc, bc.k0, bc.nk) + key0_w * out_ld(p);
  const int keys_w = static_cast<int>(bc.nk - key0_w < 16 ? bc.nk - key0_w : 16);
  auto store = [&](const WarpAcc<T, DP>& acc, float* grad, float multiplier) {
    float* dst = grad + grad_w;
    const int64_t ld = out_ld(p);
    acc.for_each(stage_w, [&](int r, int c, float value) {
      if (r < keys_w && c < p.d) dst[r * ld + c] = value * multiplier;
    });
  };
  using Yes = std::true_type;
  using No = std::false_type;
  if constexpr (C::kSplitDkDv) {
    WarpAcc<T, DP> acc;
    acc.zero();
    sweep(Yes{}, No{}, acc, acc);
    store(acc, p.dv, 1.0f);
    acc.zero();
    sweep(No{}, Yes{}, acc, acc);
    store(acc, p.dk, p.scale);
  } else {
    WarpAcc<T, DP> dv, dk;
    dv.zero();
    dk.zero();
    sweep(Yes{}, Yes{}, dv, dk);
    store(dv, p.dv, 1.0f);
    store(dk, p.dk, p.scale);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------------------

int max_head_dim(int dtype) { return static_cast<DType>(dtype) == DType::kFloat32 ? 128 : 256; }

void check_args(const AttentionSizes& s, int dtype) {
  if (dtype < 0 || dtype > static_cast<int>(DType::kBFloat16)) throw std::invalid_argument("attention: bad dtype code");
  if (s.batch < 0 || s.heads_q < 0 || s.seqlen_q < 0 || s.seqlen_k < 0) {
    throw std::invalid_argument("attention: sizes must be >= 0");
  }
  if (s.heads_kv < 1 || s.heads_q % s.heads_kv != 0) {
    throw std::invalid_argument("attention: heads_q must be a multiple of heads_kv >= 1 (GQA/MQA)");
  }
  if (s.head_dim < 1 || s.head_dim > max_head_dim(dtype)) {
    throw std::invalid_argument("attention: head_dim is " + std::to_string(s.head_dim) + "; the kernels take 1.." +
                                std::to_string(max_head_dim(dtype)) + " for this dtype");
  }
}

// 16-byte copies need a unit dim stride, a head dim and every other stride in whole 16-byte chunks, and an
// aligned base.
bool vector_ok(const void* ptr, const AttentionStrides& s, int64_t d, int64_t elem_bytes) {
  const int64_t vec = 16 / elem_bytes;
  return ptr != nullptr && reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0 && s.dim == 1 && d % vec == 0 &&
         s.token % vec == 0 && s.head % vec == 0 && s.batch % vec == 0;
}

Params base_params(const AttentionSizes& s, const void* q, const AttentionStrides& qs, const void* k,
                   const AttentionStrides& ks, const void* v, const AttentionStrides& vs, const void* mask,
                   int64_t mask_stride_b, int64_t mask_stride_n, double scale, bool causal) {
  Params p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.qs = qs;
  p.ks = ks;
  p.vs = vs;
  p.mask = static_cast<const uint8_t*>(mask);
  p.mask_stride_b = mask_stride_b;
  p.mask_stride_n = mask_stride_n;
  p.hq = s.heads_q;
  p.group = s.heads_q / s.heads_kv;
  p.nq = s.seqlen_q;
  p.nk = s.seqlen_k;
  p.d = static_cast<int>(s.head_dim);
  p.scale = static_cast<float>(scale);
  p.qk_scale = static_cast<float>(scale * kLog2e);
  p.causal = causal;
  return p;
}

// Varlen: the sequence starts, or both null for the padded layout.
void set_varlen(Params& p, const int32_t* cu_q, const int32_t* cu_k, int64_t total_q) {
  if ((cu_q == nullptr) != (cu_k == nullptr)) {
    throw std::invalid_argument("attention: varlen needs both cu_seqlens_q and cu_seqlens_k (or neither)");
  }
  if (cu_q != nullptr && (total_q < 0 || p.mask != nullptr)) {
    throw std::invalid_argument("attention: varlen takes total_q >= 0 and no key-padding mask");
  }
  p.cu_q = cu_q;
  p.cu_k = cu_k;
  p.total_q = total_q;
}

void set_vector_flags(Params& p, int64_t elem_bytes) {
  p.q_vec = vector_ok(p.q, p.qs, p.d, elem_bytes);
  p.k_vec = vector_ok(p.k, p.ks, p.d, elem_bytes);
  p.v_vec = vector_ok(p.v, p.vs, p.d, elem_bytes);
  p.do_vec = vector_ok(p.grad_out, p.dos, p.d, elem_bytes);
}

// fn(T{}, integral_constant<int, DP>{}) for the dtype and the head dim padded to 32, 64, 128 or 256.
template <typename Fn>
void dispatch(int dtype, int64_t head_dim, Fn&& fn) {
  auto by_dim = [&](auto type_tag) {
    using T = decltype(type_tag);
    if (head_dim <= 32) {
      fn(T{}, std::integral_constant<int, 32>{});
    } else if (head_dim <= 64) {
      fn(T{}, std::integral_constant<int, 64>{});
    } else if (head_dim <= 128) {
      fn(T{}, std::integral_constant<int, 128>{});
    } else if constexpr (!std::is_same<T, float>::value) {
      fn(T{}, std::integral_constant<int, 256>{});
    }
  };
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32:
      by_dim(float{});
      break;
    case DType::kFloat16:
      by_dim(__half{});
      break;
    case DType::kBFloat16:
      by_dim(__nv_bfloat16{});
      break;
  }
}

void launch(void (*kernel)(Params), size_t smem_bytes, int64_t blocks, const Params& p, cudaStream_t stream) {
  if (blocks == 0) return;
  if (blocks > 0x7fffffff) throw std::invalid_argument("attention: problem too large for the grid");
  const int optin = smem_optin_bytes();
  if (smem_bytes > static_cast<size_t>(optin)) {
    throw std::runtime_error("attention: head dim " + std::to_string(p.d) + " needs " + std::to_string(smem_bytes) +
                             " bytes of shared memory per block; this GPU allows " + std::to_string(optin));
  }
  set_max_dynamic_smem(kernel, smem_bytes);
  const dim3 grid(static_cast<unsigned>(blocks));
  if (dry_launch(kernel, grid, dim3(kThreads), smem_bytes, false)) return;
  kernel<<<grid, kThreads, smem_bytes, stream>>>(p);
  DEEPFUSE_CUDA_CHECK(cudaGetLastError());
}

// Every instantiation dispatch() can launch: fp32 up to DP = 128, fp16/bf16 up to 256.
const RegisterKernelLabels kKernelLabels{
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<float, 32>),
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<float, 64>),
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<float, 128>),
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<__half, 32>),
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<__half, 64>),
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<__half, 128>),
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<__half, 256>),
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<__nv_bfloat16, 32>),
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<__nv_bfloat16, 64>),
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<__nv_bfloat16, 128>),
    DEEPFUSE_KERNEL_LABEL(attention_fwd_kernel<__nv_bfloat16, 256>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<float, 32>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<float, 64>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<float, 128>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<__half, 32>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<__half, 64>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<__half, 128>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<__half, 256>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<__nv_bfloat16, 32>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<__nv_bfloat16, 64>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<__nv_bfloat16, 128>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dq_kernel<__nv_bfloat16, 256>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<float, 32>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<float, 64>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<float, 128>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<__half, 32>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<__half, 64>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<__half, 128>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<__half, 256>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<__nv_bfloat16, 32>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<__nv_bfloat16, 64>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<__nv_bfloat16, 128>),
    DEEPFUSE_KERNEL_LABEL(attention_bwd_dkdv_kernel<__nv_bfloat16, 256>),
};

}  // namespace

void attention_fwd(const AttentionFwdArgs& args, cudaStream_t stream) {
  const AttentionSizes& s = args.sizes;
  check_args(s, args.dtype);
  check_device_ready();
  Params p = base_params(s, args.q, args.q_strides, args.k, args.k_strides, args.v, args.v_strides,
                         args.key_padding_mask, args.mask_stride_b, args.mask_stride_n, args.scale, args.causal);
  set_varlen(p, args.cu_seqlens_q, args.cu_seqlens_k, args.total_q);
  p.out = args.out;
  p.lse = static_cast<float*>(args.lse);
  const int64_t blocks = s.batch * s.heads_q * ceil_div(s.seqlen_q, kRows);
  dispatch(args.dtype, s.head_dim, [&](auto type_tag, auto dim_tag) {
    using T = decltype(type_tag);
    constexpr int DP = decltype(dim_tag)::value;
    set_vector_flags(p, sizeof(T));
    launch(attention_fwd_kernel<T, DP>, Smem<T, DP>::kFwd, blocks, p, stream);
  });
}

void attention_bwd(const AttentionBwdArgs& args, cudaStream_t stream) {
  const AttentionSizes& s = args.sizes;
  check_args(s, args.dtype);
  check_device_ready();
  Params p = base_params(s, args.q, args.q_strides, args.k, args.k_strides, args.v, args.v_strides,
                         args.key_padding_mask, args.mask_stride_b, args.mask_stride_n, args.scale, args.causal);
  set_varlen(p, args.cu_seqlens_q, args.cu_seqlens_k, args.total_q);
  p.grad_out = args.grad_out;
  p.dos = args.grad_out_strides;
  p.lse = static_cast<float*>(const_cast<void*>(args.lse));  // read only in backward
  p.delta = static_cast<const float*>(args.delta);
  p.dk = static_cast<float*>(args.grad_k);
  p.dv = static_cast<float*>(args.grad_v);
  const int64_t dkdv_blocks = s.batch * s.heads_q * ceil_div(s.seqlen_k, kRows);
  const int64_t dq_blocks = s.batch * s.heads_q * ceil_div(s.seqlen_q, kRows);
  dispatch(args.dtype, s.head_dim, [&](auto type_tag, auto dim_tag) {
    using T = decltype(type_tag);
    constexpr int DP = decltype(dim_tag)::value;
    set_vector_flags(p, sizeof(T));
    launch(attention_bwd_dkdv_kernel<T, DP>, Smem<T, DP>::kDkDv, dkdv_blocks, p, stream);
    Params dq = p;
    dq.out = args.grad_q;
    launch(attention_bwd_dq_kernel<T, DP>, Smem<T, DP>::kDq, dq_blocks, dq, stream);
  });
}

}  // namespace deepfuse
