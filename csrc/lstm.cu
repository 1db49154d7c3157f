// lstm: the CUDA twin of kernels/lstm.py (PyTorch's gate order i, f, g, o; c' = f*c + i*g, h' = o*tanh(c')).
//   cell fwd    one kernel: x W_ih^T + h W_hh^T + b for the 4 gates of a hidden slice, the activations and the
//               state update (the per-step forward kernel with two operands)
//   cell bwd    the pre-activation gate gradients and dc_prev, pointwise (the caller runs the GEMMs)
//   seq fwd     one layer and direction from the input projections xp (one GEMM, by the caller): per step
//               gates = xp_t + h_{t-1} W_hh^T, then the cell update; rows past their length store zeros. cs and
//               gates are optional (inference skips them); c_n, each row's final c, is always written
//   seq bwd     BPTT: per step (reverse) the gate gradients from fp32 (dh, dc) carries, then
//               dh_{t-1} = dgates_t W_hh; dW_hh is left to the caller (one GEMM over all steps)
// The sequence kernels have two paths (plan_*; lstm_seq_path says which one a hidden size gets):
//   persistent  one cooperative launch per direction. Block (p, g) owns hidden slice p and batch tiles g, g + G,
//               ...; its slice of W_hh is loaded into shared memory once and stays there, and one grid.sync()
//               separates the steps. Forward slice: the 4 gates' rows of bh hidden units (gate-major); backward:
//               W_hh's columns of the bh units, whose dh the block then owns, so that carry never leaves it.
//   per step    one ordinary launch per step (the launch boundary is the sync); W_hh streamed from L2 in K chunks
//               alongside the activations, 64-row batch tiles so each chunk serves 4 WMMA row tiles.
// Block work: a batch tile times the slice's columns, K split over 8 warps (one 16-row accumulator per row tile
// each, 16 columns wide, 8 in fp32's backward), partial sums reduced in shared memory by the pointwise stage in a
// fixed order (deterministic).
// fp16/bf16 multiply on tensor cores (WMMA 16x16x16, fp32 accumulation); fp32 on exact SIMT FMAs. States
// between steps are fp32 (shared memory for a block's first kCarryTiles tiles, else an fp32 workspace); h_t
// feeds step t + 1 as stored (rounded), as in the Triton kernel. Activations that other blocks wrote during the
// launch are read with L1-bypassing loads (__ldcg).
#include <cooperative_groups.h>
#include <mma.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common.cuh"
#include "lstm.h"

namespace deepfuse {

namespace {

using namespace nvcuda;
namespace cg = cooperative_groups;

// __launch_bounds__(kThreads, 1) on the GEMM-shaped kernels: no register cap beyond the block size's (shared
// memory, the resident W_hh slice, is what should bound residency).
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 16;         // rows of one WMMA tile; a batch tile is kRows * row tiles
constexpr int kChunk = 128;       // K columns per streamed chunk (per step: W and A alike)
constexpr int kMaxACols = 2048;   // persistent: A columns per chunk, as shared memory allows, up to this
constexpr int kCarryTiles = 4;    // a persistent block keeps the fp32 states of its first 4 batch tiles on chip
// NOTE: 256 threads, 128-column chunks, 4 on-chip tiles, and the load batching and prefetch depths below are
// unmeasured choices (no GPU yet).

// Hidden units per block, tried smallest first: the block's columns (forward: 4 gates x bh, backward: bh) make 1, 2,
// 4 or 8 warp tiles, which divides the 8 warps; the rest of each warp split is over K. Warp tiles are 16 wide, but
// 8 wide in fp32's backward, whose slice of W_hh (4H rows) then fits on chip up to H = 1056 on 132 SMs.
constexpr int kSliceSteps[] = {1, 2, 4, 8};
template <typename T>
constexpr int bwd_tile_n() {
  return std::is_same<T, float>::value ? 8 : 16;
}
template <typename T>
int slice_width(bool backward, int step) {
  return kSliceSteps[step] * (backward ? bwd_tile_n<T>() : 4);
}

// Batch row tiles per block tile: one in the persistent kernels (small batches are the latency-bound case they
// serve), four per step, where each streamed W chunk then serves 64 rows.
// NOTE: both unmeasured (no GPU yet).
template <bool kPersistent>
constexpr int row_tiles() {
  return kPersistent ? 1 : 4;
}

// Row pads keep WMMA's ldm a multiple of 16 bytes and rows 16-byte aligned for vector copies.
template <typename T>
constexpr int pad() {
  return 16 / static_cast<int>(sizeof(T));
}

constexpr int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }
constexpr size_t round128(size_t bytes) { return (bytes + 127) / 128 * 128; }

// Byte offsets of the shared-memory regions, each 128-byte aligned: W (resident slice or streamed chunk) |
// A chunk | partial sums | fp32 states.
struct SmemLayout {
  size_t w, a, part, state, total;
};

struct GateGrads {
  float di, df, dg, dout, dc_prev;
};

// One backward pointwise element's inputs: the direct gradients of h_t, c_t, and c_{t-1}, c_t, the 4 gates of t.
struct StepInputs {
  float dh, dc, c_prev, c_new, gate[4];
};

// Pointwise elements per thread whose inputs are loaded before the block's product, to overlap their latency.
constexpr int kPrefetch = 2;

// As kernels/lstm.py's _gate_grads: pre-activation gate gradients and the cell-state gradient for the step before.
__device__ __forceinline__ GateGrads gate_grads(float dh, float dc_in, float c_prev, float c_new, float i, float f,
                                                float g, float o) {
  const float tc = tanhf(c_new);
  const float dc = dc_in + dh * o * (1.0f - tc * tc);
  return {dc * g * i * (1.0f - i), dc * c_prev * f * (1.0f - f), dc * i * (1.0f - g * g), dh * tc * o * (1.0f - o),
          dc * f};
}

// ---------------------------------------------------------------------------------------------------------
// Warp products: acc[m] (16 x N fp32) += A[m * 16 .. +16, 16 k] . B, with A row-major (lda) and B[k][n] =
// b[n * ldb + k] (W's rows, or W^T's, are B's columns). fp32: lane = 8 * rg + cg owns rows rg + 4 * i, columns
// cg (and cg + 8 when N = 16) of each row tile; with row strides of 4 or 20 (mod 32) words each access is
// conflict-free or a broadcast.
// ---------------------------------------------------------------------------------------------------------

template <typename T, int MT, int N = 16, bool kWmma = !std::is_same<T, float>::value>
struct WarpAcc {
  static_assert(N == 16, "WMMA tiles are 16 wide");
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag[MT];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int m = 0; m < MT; ++m) wmma::fill_fragment(frag[m], 0.0f);
  }

  __device__ __forceinline__ void mma(const T* a, int lda, const T* b, int ldb) {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
    wmma::load_matrix_sync(fb, b, ldb);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, a + m * 16 * lda, lda);
      wmma::mma_sync(frag[m], fa, fb, frag[m]);
    }
  }

  __device__ __forceinline__ void store(float* out, int ldo) const {
#pragma unroll
    for (int m = 0; m < MT; ++m) wmma::store_matrix_sync(out + m * 16 * ldo, frag[m], ldo, wmma::mem_row_major);
  }
};

template <typename T, int MT, int N>
struct WarpAcc<T, MT, N, false> {
  static constexpr int kCols = N / 8;
  float acc[MT][4][kCols];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < kCols; ++j) acc[m][i][j] = 0.0f;
  }

  __device__ __forceinline__ void mma(const T* a, int lda, const T* b, int ldb) {
    const int lane = threadIdx.x & 31, rg = lane >> 3, cg = lane & 7;
#pragma unroll
    for (int kk = 0; kk < 16; ++kk) {
      float bv[kCols];
#pragma unroll
      for (int j = 0; j < kCols; ++j) bv[j] = to_float(b[(cg + 8 * j) * ldb + kk]);
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float av = to_float(a[(m * 16 + rg + 4 * i) * lda + kk]);
#pragma unroll
          for (int j = 0; j < kCols; ++j) acc[m][i][j] = fmaf(av, bv[j], acc[m][i][j]);
        }
    }
  }

  __device__ __forceinline__ void store(float* out, int ldo) const {
    const int lane = threadIdx.x & 31, rg = lane >> 3, cg = lane & 7;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < kCols; ++j) out[(m * 16 + rg + 4 * i) * ldo + cg + 8 * j] = acc[m][i][j];
  }
};

// ---------------------------------------------------------------------------------------------------------
// Tile copies into shared memory (zero-filled past the matrix, so padding adds nothing to any product)
// ---------------------------------------------------------------------------------------------------------

// dst element i = load(i) for i < count, kBatch loads in flight per thread before their stores: a step's critical
// path is mostly load latency, and the compiler cannot hoist global loads over shared stores it cannot tell apart.
template <int kBatch, typename V, typename Load, typename Store>
__device__ __forceinline__ void batched_copy(int count, Load&& load, Store&& store) {
  for (int i0 = threadIdx.x; i0 < count; i0 += kBatch * kThreads) {
    V value[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      const int i = i0 + q * kThreads;
      value[q] = i < count ? load(i) : V{};
    }
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      const int i = i0 + q * kThreads;
      if (i < count) store(i, value[q]);
    }
  }
}

constexpr int kVecBatch = 4;     // 16-byte loads in flight per thread
constexpr int kScalarBatch = 8;  // element loads in flight per thread

// Rows b0 .. b0 + ROWS of A (B x K, strides sb, sk), columns k0 .. k0 + cols (a multiple of 16) -> dst (ld).
// L1-bypassing loads: in the persistent kernels other blocks wrote A earlier in the same launch.
template <typename T, int ROWS>
__device__ __forceinline__ void load_a_chunk(const T* a, int64_t sb, int64_t sk, bool vec, int64_t b0, int64_t B,
                                             int64_t k0, int cols, int64_t K, T* dst, int ld) {
  if (vec) {  // unit k stride; K, sb and the base in whole 16-byte vectors
    constexpr int kVec = 16 / sizeof(T);
    const int per_row = cols / kVec;
    batched_copy<kVecBatch, uint4>(
        ROWS * per_row,
        [&](int i) {
          const int r = i / per_row, c = i % per_row * kVec;
          return b0 + r < B && k0 + c < K ? __ldcg(reinterpret_cast<const uint4*>(a + (b0 + r) * sb + k0 + c))
                                          : make_uint4(0u, 0u, 0u, 0u);
        },
        [&](int i, uint4 v) {
          *reinterpret_cast<uint4*>(dst + (i / per_row) * ld + (i % per_row) * kVec) = v;
        });
  } else {
    const bool k_fastest = sk == 1 || sb != 1;  // consecutive threads walk the unit-stride dimension
    auto at = [&](int i, int& r, int& c) {
      r = k_fastest ? i / cols : i % ROWS;
      c = k_fastest ? i % cols : i / ROWS;
    };
    batched_copy<kScalarBatch, T>(
        ROWS * cols,
        [&](int i) {
          int r, c;
          at(i, r, c);
          return b0 + r < B && k0 + c < K ? __ldcg(a + (b0 + r) * sb + (k0 + c) * sk) : from_float<T>(0.0f);
        },
        [&](int i, T v) {
          int r, c;
          at(i, r, c);
          dst[r * ld + c] = v;
        });
  }
}

// The forward's W slice: dst row n = gate * bh + u holds W row gate * H + j0 + u (zero past H), columns
// k0 .. k0 + cols of K.
template <typename T>
__device__ __forceinline__ void load_gate_rows(const T* w, int64_t sr, int64_t sk, bool vec, int64_t j0, int bh,
                                               int64_t H, int64_t k0, int cols, int64_t K, T* dst, int ld) {
  const int rows = 4 * bh;
  // W's row for dst row n, or -1 past H
  auto w_row = [&](int n) { return j0 + n % bh < H ? (n / bh) * H + j0 + n % bh : int64_t{-1}; };
  if (vec) {
    constexpr int kVec = 16 / sizeof(T);
    const int per_row = cols / kVec;
    batched_copy<kVecBatch, uint4>(
        rows * per_row,
        [&](int i) {
          const int64_t row = w_row(i / per_row);
          const int c = i % per_row * kVec;
          return row >= 0 && k0 + c < K ? *reinterpret_cast<const uint4*>(w + row * sr + k0 + c)
                                        : make_uint4(0u, 0u, 0u, 0u);
        },
        [&](int i, uint4 v) { *reinterpret_cast<uint4*>(dst + (i / per_row) * ld + (i % per_row) * kVec) = v; });
  } else {
    const bool k_fastest = sk == 1 || sr != 1;
    auto at = [&](int i, int& n, int& c) {
      n = k_fastest ? i / cols : i % rows;
      c = k_fastest ? i % cols : i / rows;
    };
    batched_copy<kScalarBatch, T>(
        rows * cols,
        [&](int i) {
          int n, c;
          at(i, n, c);
          const int64_t row = w_row(n);
          return row >= 0 && k0 + c < K ? w[row * sr + (k0 + c) * sk] : from_float<T>(0.0f);
        },
        [&](int i, T v) {
          int n, c;
          at(i, n, c);
          dst[n * ld + c] = v;
        });
  }
}

// The backward's W slice, transposed: dst row n holds W's column j0 + n (zero past H), W rows k0 .. k0 + cols of K.
template <typename T>
__device__ __forceinline__ void load_gate_cols(const T* w, int64_t sr, int64_t sk, int64_t j0, int bh, int64_t H,
                                               int64_t k0, int cols, int64_t K, T* dst, int ld) {
  const bool n_fastest = sk == 1 || sr != 1;
  auto at = [&](int i, int& n, int& c) {
    n = n_fastest ? i % bh : i / cols;
    c = n_fastest ? i / bh : i % cols;
  };
  batched_copy<kScalarBatch, T>(
      bh * cols,
      [&](int i) {
        int n, c;
        at(i, n, c);
        return j0 + n < H && k0 + c < K ? w[(k0 + c) * sr + (j0 + n) * sk] : from_float<T>(0.0f);
      },
      [&](int i, T v) {
        int n, c;
        at(i, n, c);
        dst[n * ld + c] = v;
      });
}

// ---------------------------------------------------------------------------------------------------------
// Forward: the cell, and the recurrence's steps
// ---------------------------------------------------------------------------------------------------------

// A (B x K) times W (4H x K)^T: x and W_ih, h and W_hh for the cell; h_{t-1} (hs[t]) and W_hh for the recurrence.
struct FwdOperand {
  const void* a;  // step t's A at a + t * a_step
  int64_t a_step, a_sb, a_sk;
  const void* w;
  int64_t w_sr, w_sk;
  int64_t K;
  bool a_vec, w_vec;
};

struct FwdParams {
  FwdOperand op[2];
  int num_ops;         // persistent: 1 (W_hh resident)
  const void* xp;      // (T, B, 4H) contiguous, or null
  const void* bias;    // (4H,), or null
  const void* c0;      // c before step 0
  int64_t c0_sb, c0_sj;
  float* c_work;       // (B, H) fp32: c between steps for tiles not kept on chip (unused when T == 1)
  void* h_out;         // step t's h at h_out + t * B * H, (B, H) contiguous
  void* c_out;         // likewise, or null (the states not saved)
  void* c_n;           // (B, H) contiguous: each row's c after its last valid step (c0 for length 0), or null
  void* gates;         // step t's (B, 4H) at gates + t * B * 4H, or null
  const int32_t* lengths;
  int64_t T, B, H;
  int bh;              // hidden units per block
  int ldw;             // row stride of the W region (elements)
  int a_cols;          // A columns per chunk (a multiple of 16; per step: kChunk, as W's chunks)
  int carry_tiles;     // tiles whose c stays in shared memory (persistent)
  SmemLayout smem;
  int64_t t_begin, t_end;  // the steps this launch runs
};

template <typename T, bool kPersistent>
__global__ void __launch_bounds__(kThreads, 1) lstm_fwd_kernel(const FwdParams p) {
  constexpr int MT = row_tiles<kPersistent>();
  constexpr int kTile = kRows * MT;
  const int a_cols = p.a_cols, lda = a_cols + pad<T>();
  extern __shared__ __align__(128) unsigned char smem[];
  T* w_s = reinterpret_cast<T*>(smem + p.smem.w);
  T* a_s = reinterpret_cast<T*>(smem + p.smem.a);
  float* part = reinterpret_cast<float*>(smem + p.smem.part);
  float* c_s = reinterpret_cast<float*>(smem + p.smem.state);

  const int bh = p.bh, cols_out = 4 * bh, ldp = cols_out + 4;
  const int col_tiles = cols_out / 16, splits = kWarps / col_tiles;
  const int warp = threadIdx.x >> 5, nt = warp % col_tiles, split = warp / col_tiles;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * bh;
  const int64_t B = p.B, H = p.H, tiles = (B + kTile - 1) / kTile;
  if constexpr (kPersistent) {
    const FwdOperand& op = p.op[0];
    const int cols = static_cast<int>(round_up(op.K, 16));  // all of K; visible after the first chunk's sync
    load_gate_rows(static_cast<const T*>(op.w), op.w_sr, op.w_sk, op.w_vec, j0, bh, H, 0, cols, op.K, w_s, p.ldw);
  }

  for (int64_t t = p.t_begin; t < p.t_end; ++t) {
    int local = 0;  // this block's tile count, indexing its on-chip states
    for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y, ++local) {
      const int64_t b0 = tile * kTile;
      // Pointwise element e = r * bh + u is (row b0 + r, unit j0 + u); `add` = its xp_t (+ bias), 4 gates.
      auto load_add = [&](int e, float (&add)[4]) {
        const int64_t b = b0 + e / bh, j = j0 + e % bh;
#pragma unroll
        for (int g = 0; g < 4; ++g) add[g] = 0.0f;
        if (e >= kTile * bh || b >= B || j >= H) return;
        if (p.xp != nullptr) {
          const T* xp = static_cast<const T*>(p.xp) + (t * B + b) * 4 * H + j;
#pragma unroll
          for (int g = 0; g < 4; ++g) add[g] += to_float(xp[g * H]);
        }
        if (p.bias != nullptr) {
          const T* bias = static_cast<const T*>(p.bias) + j;
#pragma unroll
          for (int g = 0; g < 4; ++g) add[g] += to_float(bias[g * H]);
        }
      };
      auto pointwise = [&](int e, const float (&add)[4]) {
        const int r = e / bh, u = e % bh;
        const int64_t b = b0 + r, j = j0 + u;
        if (b >= B || j >= H) return;
        float pre[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          float sum = add[g];
          for (int q = 0; q < splits; ++q) sum += part[(q * kTile + r) * ldp + g * bh + u];
          pre[g] = sum;
        }
        float* c_state = nullptr;  // c after this step, read back by this thread at t + 1 (none for the cell)
        if (local < p.carry_tiles) {
          c_state = c_s + (local * kTile + r) * bh + u;
        } else if (p.c_work != nullptr) {
          c_state = p.c_work + b * H + j;
        }
        const float c_prev = t == 0 ? to_float(static_cast<const T*>(p.c0)[b * p.c0_sb + j * p.c0_sj]) : *c_state;
        const float i = sigmoidf(pre[0]), f = sigmoidf(pre[1]), g = tanhf(pre[2]), o = sigmoidf(pre[3]);
        const float c_new = f * c_prev + i * g;
        const float h_new = o * tanhf(c_new);
        const bool valid = p.lengths == nullptr || t < p.lengths[b];
        const int64_t out = (t * B + b) * H + j;
        static_cast<T*>(p.h_out)[out] = from_float<T>(valid ? h_new : 0.0f);
        if (p.c_out != nullptr) static_cast<T*>(p.c_out)[out] = from_float<T>(valid ? c_new : 0.0f);
        if (p.c_n != nullptr) {
          // The row's final state, rounded once from fp32: after step min(length, T) - 1, or c0 for length <= 0.
          const int64_t len = p.lengths == nullptr ? p.T : p.lengths[b];
          const int64_t last = len < 0 ? 0 : (len > p.T ? p.T : len);
          if (t + 1 == last || (last == 0 && t == 0)) {
            static_cast<T*>(p.c_n)[b * H + j] = from_float<T>(last == 0 ? c_prev : c_new);
          }
        }
        if (p.gates != nullptr) {
          T* gates = static_cast<T*>(p.gates) + (t * B + b) * 4 * H + j;
          gates[0] = from_float<T>(valid ? i : 0.0f);
          gates[H] = from_float<T>(valid ? f : 0.0f);
          gates[2 * H] = from_float<T>(valid ? g : 0.0f);
          gates[3 * H] = from_float<T>(valid ? o : 0.0f);
        }
        if (t + 1 < p.T) *c_state = valid ? c_new : 0.0f;
      };
      // The first kPrefetch elements' xp before the product, so that their latency overlaps it.
      float add[kPrefetch][4];
#pragma unroll
      for (int q = 0; q < kPrefetch; ++q) load_add(threadIdx.x + q * kThreads, add[q]);

      WarpAcc<T, MT> acc;
      acc.zero();
      for (int o = 0; o < p.num_ops; ++o) {
        const FwdOperand& op = p.op[o];
        const T* a = static_cast<const T*>(op.a) + t * op.a_step;
        for (int64_t k0 = 0; k0 < op.K; k0 += a_cols) {
          const int cols = static_cast<int>(round_up(std::min<int64_t>(a_cols, op.K - k0), 16));
          __syncthreads();  // the previous chunk is consumed, and the previous tile's partial sums are read
          load_a_chunk<T, kTile>(a, op.a_sb, op.a_sk, op.a_vec, b0, B, k0, cols, op.K, a_s, lda);
          if constexpr (!kPersistent) {
            load_gate_rows(static_cast<const T*>(op.w), op.w_sr, op.w_sk, op.w_vec, j0, bh, H, k0, cols, op.K, w_s,
                           p.ldw);
          }
          __syncthreads();
          const T* b = w_s + nt * 16 * p.ldw + (kPersistent ? k0 : 0);
          for (int s = split; s < cols / 16; s += splits) acc.mma(a_s + s * 16, lda, b + s * 16, p.ldw);
        }
      }
      // Every operand has K >= 1 (H >= 1), so a __syncthreads above separated this from the last tile's reads.
      acc.store(part + split * kTile * ldp + nt * 16, ldp);
      __syncthreads();

#pragma unroll
      for (int q = 0; q < kPrefetch; ++q) {
        if (threadIdx.x + q * kThreads < kTile * bh) pointwise(threadIdx.x + q * kThreads, add[q]);
      }
      for (int e = threadIdx.x + kPrefetch * kThreads; e < kTile * bh; e += kThreads) {
        float more[4];
        load_add(e, more);
        pointwise(e, more);
      }
    }
    if constexpr (kPersistent) {
      if (t + 1 < p.t_end) cg::this_grid().sync();  // h_t complete everywhere before any block reads it
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) lstm_cell_grad_gates_kernel(const LstmCellGradGatesArgs p) {
  const int64_t n = p.B * p.H;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t b = e / p.H, j = e % p.H;
    const T* gates = static_cast<const T*>(p.gates) + b * 4 * p.H + j;
    auto at = [&](const void* ptr) { return to_float(static_cast<const T*>(ptr)[e]); };
    const GateGrads d = gate_grads(at(p.grad_h), p.grad_c != nullptr ? at(p.grad_c) : 0.0f, at(p.c), at(p.c_next),
                                   to_float(gates[0]), to_float(gates[p.H]), to_float(gates[2 * p.H]),
                                   to_float(gates[3 * p.H]));
    T* dgates = static_cast<T*>(p.dgates) + b * 4 * p.H + j;
    dgates[0] = from_float<T>(d.di);
    dgates[p.H] = from_float<T>(d.df);
    dgates[2 * p.H] = from_float<T>(d.dg);
    dgates[3 * p.H] = from_float<T>(d.dout);
    static_cast<T*>(p.dc_prev)[e] = from_float<T>(d.dc_prev);
  }
}

struct BwdParams {
  const void *dhs, *dcs, *cs;  // (T + 1, B, H) contiguous
  const void* gates;           // (T, B, 4H) contiguous
  const void* w;               // W_hh (4H, H)
  int64_t w_sr, w_sk;
  bool dg_vec;  // dgates rows in whole 16-byte vectors
  const int32_t* lengths;
  void* dgates;  // (T, B, 4H) contiguous
  void *dh0, *dc0;
  float *dh_work, *dc_work;  // (B, H) fp32: carries of tiles not kept on chip
  int64_t T, B, H;
  int bh, ldw, a_cols, carry_tiles;
  SmemLayout smem;
  int64_t u_begin, u_end;  // the phases this launch runs, u_begin down to u_end
};

// Phase u (T down to 0): for u < T, the block's dh carry = dgates_u W_hh[:, slice] for valid rows (the others keep
// theirs); then for u > 0 the gate gradients of step u - 1 (at u = T from zero carries), else dh0 and dc0.
// Persistent: one grid.sync() between phases, as step u's gate gradients come from every block. Per step: one
// launch per phase, T + 1 in all.
template <typename T, bool kPersistent>
__global__ void __launch_bounds__(kThreads, 1) lstm_bwd_kernel(const BwdParams p) {
  constexpr int MT = row_tiles<kPersistent>();
  constexpr int kTile = kRows * MT;
  const int a_cols = p.a_cols, lda = a_cols + pad<T>();
  extern __shared__ __align__(128) unsigned char smem[];
  T* w_s = reinterpret_cast<T*>(smem + p.smem.w);
  T* a_s = reinterpret_cast<T*>(smem + p.smem.a);
  float* part = reinterpret_cast<float*>(smem + p.smem.part);
  float* carry_s = reinterpret_cast<float*>(smem + p.smem.state);

  constexpr int kN = bwd_tile_n<T>();
  const int bh = p.bh, ldp = bh + 4;
  const int col_tiles = bh / kN, splits = kWarps / col_tiles;
  const int warp = threadIdx.x >> 5, nt = warp % col_tiles, split = warp / col_tiles;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * bh;
  const int64_t B = p.B, H = p.H, K = 4 * H, steps = p.T, tiles = (B + kTile - 1) / kTile;
  const T* w = static_cast<const T*>(p.w);
  if constexpr (kPersistent) {
    load_gate_cols(w, p.w_sr, p.w_sk, j0, bh, H, 0, static_cast<int>(round_up(K, 16)), K, w_s, p.ldw);
  }

  for (int64_t u = p.u_begin; u >= p.u_end; --u) {
    int local = 0;
    for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y, ++local) {
      const int64_t b0 = tile * kTile;
      auto carries = [&](int r, int u_col, int64_t b, int64_t j, float*& dh, float*& dc) {
        if (local < p.carry_tiles) {
          dh = carry_s + ((local * 2) * kTile + r) * bh + u_col;
          dc = carry_s + ((local * 2 + 1) * kTile + r) * bh + u_col;
        } else {
          dh = p.dh_work + b * H + j;
          dc = p.dc_work + b * H + j;
        }
      };
      // Pointwise element e = r * bh + uc is (row b0 + r, unit j0 + uc). Its inputs, which do not depend on this
      // phase's product: step u - 1's direct gradients, states and gates, or at u = 0 those of h0 and c0.
      auto load_inputs = [&](int e, StepInputs& in) {
        const int64_t b = b0 + e / bh, j = j0 + e % bh;
        in = StepInputs{};
        if (e >= kTile * bh || b >= B || j >= H) return;
        const T *dhs = static_cast<const T*>(p.dhs), *dcs = static_cast<const T*>(p.dcs);
        const int64_t now = (u * B + b) * H + j;  // (u, b, j)
        in.dh = to_float(dhs[now]);
        in.dc = to_float(dcs[now]);
        if (u == 0) return;
        const T* cs = static_cast<const T*>(p.cs);
        const T* gates = static_cast<const T*>(p.gates) + ((u - 1) * B + b) * K + j;
        in.c_prev = to_float(cs[now - B * H]);
        in.c_new = to_float(cs[now]);
#pragma unroll
        for (int g = 0; g < 4; ++g) in.gate[g] = to_float(gates[g * H]);
      };
      auto pointwise = [&](int e, const StepInputs& in) {
        const int r = e / bh, uc = e % bh;
        const int64_t b = b0 + r, j = j0 + uc;
        if (b >= B || j >= H) return;
        float *dh_carry, *dc_carry;
        carries(r, uc, b, j, dh_carry, dc_carry);
        const bool first = u == steps;
        const float dh_c = first ? 0.0f : *dh_carry, dc_c = first ? 0.0f : *dc_carry;
        if (u == 0) {
          static_cast<T*>(p.dh0)[b * H + j] = from_float<T>(dh_c + in.dh);
          static_cast<T*>(p.dc0)[b * H + j] = from_float<T>(dc_c + in.dc);
          return;
        }
        const int64_t t = u - 1;
        const GateGrads d = gate_grads(dh_c + in.dh, dc_c + in.dc, in.c_prev, in.c_new, in.gate[0], in.gate[1],
                                       in.gate[2], in.gate[3]);
        const bool valid = p.lengths == nullptr || t < p.lengths[b];
        T* dgates = static_cast<T*>(p.dgates) + (t * B + b) * K + j;
        dgates[0] = from_float<T>(valid ? d.di : 0.0f);
        dgates[H] = from_float<T>(valid ? d.df : 0.0f);
        dgates[2 * H] = from_float<T>(valid ? d.dg : 0.0f);
        dgates[3 * H] = from_float<T>(valid ? d.dout : 0.0f);
        *dc_carry = valid ? d.dc_prev : dc_c;
        if (first) *dh_carry = 0.0f;
      };
      StepInputs in[kPrefetch];  // the first kPrefetch elements', loaded before the product to overlap it
#pragma unroll
      for (int q = 0; q < kPrefetch; ++q) load_inputs(threadIdx.x + q * kThreads, in[q]);

      if (u < steps) {
        WarpAcc<T, MT, kN> acc;
        acc.zero();
        const T* dgates = static_cast<const T*>(p.dgates) + u * B * K;
        for (int64_t k0 = 0; k0 < K; k0 += a_cols) {
          const int cols = static_cast<int>(round_up(std::min<int64_t>(a_cols, K - k0), 16));
          __syncthreads();  // the previous chunk is consumed, and the previous tile's partial sums are read
          load_a_chunk<T, kTile>(dgates, K, 1, p.dg_vec, b0, B, k0, cols, K, a_s, lda);
          if constexpr (!kPersistent) load_gate_cols(w, p.w_sr, p.w_sk, j0, bh, H, k0, cols, K, w_s, p.ldw);
          __syncthreads();
          const T* b = w_s + nt * kN * p.ldw + (kPersistent ? k0 : 0);
          for (int s = split; s < cols / 16; s += splits) acc.mma(a_s + s * 16, lda, b + s * 16, p.ldw);
        }
        acc.store(part + split * kTile * ldp + nt * kN, ldp);
        __syncthreads();
        for (int e = threadIdx.x; e < kTile * bh; e += kThreads) {  // the same element -> thread map as pointwise
          const int r = e / bh, uc = e % bh;
          const int64_t b = b0 + r, j = j0 + uc;
          if (b >= B || j >= H) continue;
          if (p.lengths != nullptr && u >= p.lengths[b]) continue;  // past its length: the carry passes through
          float sum = 0.0f;
          for (int q = 0; q < splits; ++q) sum += part[(q * kTile + r) * ldp + uc];
          float *dh, *dc;
          carries(r, uc, b, j, dh, dc);
          *dh = sum;
        }
      }

#pragma unroll
      for (int q = 0; q < kPrefetch; ++q) {
        if (threadIdx.x + q * kThreads < kTile * bh) pointwise(threadIdx.x + q * kThreads, in[q]);
      }
      for (int e = threadIdx.x + kPrefetch * kThreads; e < kTile * bh; e += kThreads) {
        StepInputs more;
        load_inputs(e, more);
        pointwise(e, more);
      }
    }
    if constexpr (kPersistent) {
      if (u > p.u_end) cg::this_grid().sync();  // dgates_{u-1} complete everywhere before any block reads it
    }
  }
}

// Every instantiation the launchers use.
const RegisterKernelLabels kKernelLabels{
    DEEPFUSE_KERNEL_LABEL(lstm_fwd_kernel<float, true>),
    DEEPFUSE_KERNEL_LABEL(lstm_fwd_kernel<float, false>),
    DEEPFUSE_KERNEL_LABEL(lstm_fwd_kernel<__half, true>),
    DEEPFUSE_KERNEL_LABEL(lstm_fwd_kernel<__half, false>),
    DEEPFUSE_KERNEL_LABEL(lstm_fwd_kernel<__nv_bfloat16, true>),
    DEEPFUSE_KERNEL_LABEL(lstm_fwd_kernel<__nv_bfloat16, false>),
    DEEPFUSE_KERNEL_LABEL(lstm_bwd_kernel<float, true>),
    DEEPFUSE_KERNEL_LABEL(lstm_bwd_kernel<float, false>),
    DEEPFUSE_KERNEL_LABEL(lstm_bwd_kernel<__half, true>),
    DEEPFUSE_KERNEL_LABEL(lstm_bwd_kernel<__half, false>),
    DEEPFUSE_KERNEL_LABEL(lstm_bwd_kernel<__nv_bfloat16, true>),
    DEEPFUSE_KERNEL_LABEL(lstm_bwd_kernel<__nv_bfloat16, false>),
    DEEPFUSE_KERNEL_LABEL(lstm_cell_grad_gates_kernel<float>),
    DEEPFUSE_KERNEL_LABEL(lstm_cell_grad_gates_kernel<__half>),
    DEEPFUSE_KERNEL_LABEL(lstm_cell_grad_gates_kernel<__nv_bfloat16>),
};

// ---------------------------------------------------------------------------------------------------------
// Device queries and launches: the only code that talks to the runtime about the device
// (and, in a dry run, answers for it: see dry_run.h)
// ---------------------------------------------------------------------------------------------------------

struct DeviceCaps {
  int sms = 0, smem_optin = 0;
  bool cooperative = false;
};

DeviceCaps device_caps() {
  if (const DryRun* dry = dry_run()) return DeviceCaps{dry->sms, dry->smem_optin, dry->cooperative};
  // Each queried once per device (common.cuh).
  return DeviceCaps{multiprocessor_count(), smem_optin_bytes(),
                    device_attribute<cudaDevAttrCooperativeLaunch>() != 0};
}

// Dynamic shared memory above 48 KB needs this opt-in, per kernel (also before occupancy queries).
template <typename Params>
void allow_smem(void (*kernel)(Params), size_t smem_bytes) {
  set_max_dynamic_smem(kernel, smem_bytes);
}

// How many blocks of `kernel` with this much shared memory one SM holds at once.
template <typename Params>
int blocks_per_sm(void (*kernel)(Params), size_t smem_bytes) {
  allow_smem(kernel, smem_bytes);
  if (const DryRun* dry = dry_run()) return dry->blocks_per_sm(kThreads, smem_bytes);
  int blocks = 0;
  DEEPFUSE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, smem_bytes));
  return blocks;
}

// Cooperative: every block resident at once (the plans size the grid so), as grid.sync() requires.
template <typename Params>
void launch_kernel(void (*kernel)(Params), dim3 grid, size_t smem_bytes, const Params& p, bool cooperative,
                   cudaStream_t stream) {
  if (dry_launch(kernel, grid, dim3(kThreads), smem_bytes, cooperative)) return;
  if (cooperative) {
    void* args[] = {const_cast<Params*>(&p)};
    DEEPFUSE_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, dim3(kThreads), args,
                                                    smem_bytes, stream));
  } else {
    kernel<<<grid, kThreads, smem_bytes, stream>>>(p);
    DEEPFUSE_CUDA_CHECK(cudaGetLastError());
  }
}

// ---------------------------------------------------------------------------------------------------------
// Plans: block slices, grids and shared memory
// ---------------------------------------------------------------------------------------------------------

SmemLayout make_layout(size_t elem, int64_t w_rows, int64_t ldw, int rows, int64_t a_cols, int cols_out, int splits,
                       int64_t state_floats) {
  SmemLayout s{};
  s.w = 0;
  s.a = s.w + round128(elem * w_rows * ldw);
  s.part = s.a + round128(elem * rows * (a_cols + 16 / elem));
  s.state = s.part + round128(sizeof(float) * splits * rows * (cols_out + 4));
  s.total = s.state + round128(sizeof(float) * state_floats);
  return s;
}

struct Plan {
  bool persistent = false;
  int bh = 0, ldw = 0, a_cols = 0, carry_tiles = 0;
  dim3 grid;
  SmemLayout smem{};
};

// The forward's or backward's shared memory for slice width bh. Resident: the slice's W for all of K, A in chunks of
// a_cols columns; per step: W and A both in chunks of kChunk columns.
template <typename T>
SmemLayout slice_layout(bool backward, int bh, int64_t H, bool resident, int64_t a_cols, int carry_tiles,
                        int64_t* ldw) {
  const int64_t K = backward ? 4 * H : H;
  *ldw = (resident ? round_up(K, 16) : kChunk) + pad<T>();
  const int rows = resident ? kRows : kRows * row_tiles<false>();
  const int cols_out = backward ? bh : 4 * bh;
  const int splits = kWarps / (cols_out / (backward ? bwd_tile_n<T>() : 16));
  const int64_t state = static_cast<int64_t>(carry_tiles) * kRows * bh * (backward ? 2 : 1);
  return make_layout(sizeof(T), backward ? bh : 4 * bh, *ldw, rows, resident ? a_cols : kChunk, cols_out, splits,
                     state);
}

// Persistent: the narrowest slice whose blocks number at most one per SM, if its shared memory fits (with A chunks
// of min(K, kChunk) columns) and the blocks can all be resident; the remaining residency goes to batch groups.
// A chunks then widen, up to kMaxACols, as far as the shared memory allows: each chunk costs the step a round trip
// to L2. B-independent feasibility (tiles = 1 answers lstm_seq_path).
// NOTE: one slice per SM (each SM streams h or dgates once per step, batch groups fill the rest) and A chunks as
// wide as fit (which can cost batch groups residency) are heuristics: unmeasured (no GPU yet).
template <typename T, typename Params>
bool plan_persistent(void (*kernel)(Params), bool backward, const DeviceCaps& caps, int64_t H, int64_t tiles,
                     Plan* plan) {
  if (!caps.cooperative || H < 1) return false;
  for (int step = 0; step < 4; ++step) {
    const int bh = slice_width<T>(backward, step);
    const int64_t slices = ceil_div(H, bh);
    if (slices > caps.sms) continue;
    const size_t optin = static_cast<size_t>(caps.smem_optin);
    const int64_t k16 = round_up(backward ? 4 * H : H, 16), min_cols = std::min<int64_t>(k16, kChunk);
    int64_t ldw = 0;
    // Wider slices need more.
    if (slice_layout<T>(backward, bh, H, true, min_cols, kCarryTiles, &ldw).total > optin) return false;
    int64_t a_cols = std::min<int64_t>(k16, kMaxACols);
    while (a_cols > min_cols && slice_layout<T>(backward, bh, H, true, a_cols, kCarryTiles, &ldw).total > optin) {
      a_cols -= 16;
    }
    const SmemLayout most = slice_layout<T>(backward, bh, H, true, a_cols, kCarryTiles, &ldw);
    const int per_sm = blocks_per_sm(kernel, most.total);
    if (per_sm < 1) return false;
    const int64_t groups = std::max<int64_t>(1, std::min<int64_t>(tiles, per_sm * caps.sms / slices));
    plan->persistent = true;
    plan->bh = bh;
    plan->a_cols = static_cast<int>(a_cols);
    plan->carry_tiles = static_cast<int>(std::min<int64_t>(kCarryTiles, ceil_div(tiles, groups)));
    plan->smem = slice_layout<T>(backward, bh, H, true, a_cols, plan->carry_tiles, &ldw);  // no more than `most`
    plan->ldw = static_cast<int>(ldw);
    plan->grid = dim3(static_cast<unsigned>(slices), static_cast<unsigned>(groups));
    return true;
  }
  return false;
}

// Per step: the narrowest slice with at most one block per SM per batch tile (else the widest), 64-row tiles.
template <typename T>
Plan plan_per_step(bool backward, const DeviceCaps& caps, int64_t H, int64_t B) {
  int bh = slice_width<T>(backward, 3);
  for (int step = 0; step < 4; ++step) {
    if (ceil_div(H, slice_width<T>(backward, step)) <= caps.sms) {
      bh = slice_width<T>(backward, step);
      break;
    }
  }
  Plan plan;
  int64_t ldw = 0;
  plan.bh = bh;
  plan.smem = slice_layout<T>(backward, bh, H, false, kChunk, 0, &ldw);
  plan.ldw = static_cast<int>(ldw);
  plan.a_cols = kChunk;
  const int64_t slices = ceil_div(H, bh);
  const int64_t tiles = ceil_div(B, kRows * row_tiles<false>());
  if (slices > 0x7fffffff) throw std::invalid_argument("lstm: hidden size too large for the grid");
  plan.grid = dim3(static_cast<unsigned>(slices), static_cast<unsigned>(std::min<int64_t>(tiles, 65535)));
  return plan;
}

void check_dtype(int dtype) {
  if (dtype < 0 || dtype > static_cast<int>(DType::kBFloat16)) throw std::invalid_argument("lstm: bad dtype code");
}

LstmPath check_path(int path) {
  if (path < 0 || path > static_cast<int>(LstmPath::kPerStep)) throw std::invalid_argument("lstm: bad path code");
  return static_cast<LstmPath>(path);
}

template <typename Fn>
void dispatch(int dtype, Fn&& fn) {
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32:
      fn(float{});
      break;
    case DType::kFloat16:
      fn(__half{});
      break;
    case DType::kBFloat16:
      fn(__nv_bfloat16{});
      break;
  }
}

// Both directions persistent, or neither: lstm_seq_path names one path for the pair.
template <typename T>
bool persistent_ok(const DeviceCaps& caps, int64_t H) {
  Plan fwd, bwd;
  return plan_persistent<T>(lstm_fwd_kernel<T, true>, false, caps, H, 1, &fwd) &&
         plan_persistent<T>(lstm_bwd_kernel<T, true>, true, caps, H, 1, &bwd);
}

template <typename T>
bool choose_persistent(LstmPath path, const DeviceCaps& caps, int64_t H) {
  if (path == LstmPath::kPerStep) return false;
  const bool ok = persistent_ok<T>(caps, H);
  if (path == LstmPath::kPersistent && !ok) {
    throw std::runtime_error("lstm: the persistent path does not fit hidden size " + std::to_string(H) +
                             " on this GPU (shared memory, SM count or cooperative launch)");
  }
  return ok;
}

bool vector_ok(const void* ptr, std::initializer_list<int64_t> multiples, int64_t unit_stride, int64_t elem) {
  const int64_t vec = 16 / elem;
  if (ptr == nullptr || reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0 || unit_stride != 1) return false;
  for (int64_t m : multiples) {
    if (m % vec != 0) return false;
  }
  return true;
}

}  // namespace

void lstm_cell_fwd(const LstmCellFwdArgs& args, cudaStream_t stream) {
  check_dtype(args.dtype);
  if (args.B < 0 || args.IN < 0 || args.H < 0) throw std::invalid_argument("lstm_cell_fwd: sizes must be >= 0");
  check_device_ready();
  if (args.B == 0 || args.H == 0) return;
  const DeviceCaps caps = device_caps();
  dispatch(args.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const int64_t elem = sizeof(T);
    const Plan plan = plan_per_step<T>(false, caps, args.H, args.B);
    FwdParams p{};
    p.op[0] = {args.x, 0, args.x_stride_b, args.x_stride_k, args.w_ih, args.w_ih_stride_r, args.w_ih_stride_k,
               args.IN, vector_ok(args.x, {args.x_stride_b, args.IN}, args.x_stride_k, elem),
               vector_ok(args.w_ih, {args.w_ih_stride_r, args.IN}, args.w_ih_stride_k, elem)};
    p.op[1] = {args.h, 0, args.h_stride_b, args.h_stride_k, args.w_hh, args.w_hh_stride_r, args.w_hh_stride_k,
               args.H, vector_ok(args.h, {args.h_stride_b, args.H}, args.h_stride_k, elem),
               vector_ok(args.w_hh, {args.w_hh_stride_r, args.H}, args.w_hh_stride_k, elem)};
    p.num_ops = 2;
    p.bias = args.bias;
    p.c0 = args.c;
    p.c0_sb = args.c_stride_b;
    p.c0_sj = args.c_stride_j;
    p.h_out = args.h_next;
    p.c_out = args.c_next;
    p.gates = args.gates;
    p.T = 1;
    p.B = args.B;
    p.H = args.H;
    p.bh = plan.bh;
    p.ldw = plan.ldw;
    p.a_cols = plan.a_cols;
    p.smem = plan.smem;
    p.t_begin = 0;
    p.t_end = 1;
    allow_smem(lstm_fwd_kernel<T, false>, plan.smem.total);
    launch_kernel(lstm_fwd_kernel<T, false>, plan.grid, plan.smem.total, p, false, stream);
  });
}

void lstm_cell_grad_gates(const LstmCellGradGatesArgs& args, cudaStream_t stream) {
  check_dtype(args.dtype);
  if (args.B < 0 || args.H < 0) throw std::invalid_argument("lstm_cell_grad_gates: sizes must be >= 0");
  check_device_ready();
  const int64_t n = args.B * args.H;
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, kThreads), 1 << 20));
  dispatch(args.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    launch_kernel(lstm_cell_grad_gates_kernel<T>, dim3(blocks), 0, args, false, stream);
  });
}

void lstm_seq_fwd(const LstmSeqFwdArgs& args, cudaStream_t stream) {
  check_dtype(args.dtype);
  const LstmPath path = check_path(args.path);
  if (args.T < 0 || args.B < 0 || args.H < 0) throw std::invalid_argument("lstm_seq_fwd: sizes must be >= 0");
  check_device_ready();
  if (args.T == 0 || args.B == 0 || args.H == 0) return;
  const DeviceCaps caps = device_caps();
  dispatch(args.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const int64_t elem = sizeof(T), B = args.B, H = args.H;
    const bool persistent = choose_persistent<T>(path, caps, H);
    Plan plan;
    if (persistent) {
      plan_persistent<T>(lstm_fwd_kernel<T, true>, false, caps, H, ceil_div(B, kRows), &plan);
    } else {
      plan = plan_per_step<T>(false, caps, H, B);
    }
    FwdParams p{};
    p.op[0] = {args.hs, B * H, H, 1, args.w_hh, args.w_stride_r, args.w_stride_k, H,
               vector_ok(args.hs, {H}, 1, elem), vector_ok(args.w_hh, {args.w_stride_r, H}, args.w_stride_k, elem)};
    p.num_ops = 1;
    p.xp = args.xp;
    p.c0 = args.c0;
    p.c0_sb = H;
    p.c0_sj = 1;
    p.c_work = args.c_work;
    p.h_out = static_cast<T*>(args.hs) + B * H;
    p.c_out = args.cs != nullptr ? static_cast<T*>(args.cs) + B * H : nullptr;
    p.c_n = args.c_n;
    p.gates = args.gates;
    p.lengths = args.lengths;
    p.T = args.T;
    p.B = B;
    p.H = H;
    p.bh = plan.bh;
    p.ldw = plan.ldw;
    p.a_cols = plan.a_cols;
    p.carry_tiles = plan.carry_tiles;
    p.smem = plan.smem;
    if (persistent) {
      p.t_begin = 0;
      p.t_end = args.T;
      allow_smem(lstm_fwd_kernel<T, true>, plan.smem.total);
      launch_kernel(lstm_fwd_kernel<T, true>, plan.grid, plan.smem.total, p, true, stream);
      return;
    }
    allow_smem(lstm_fwd_kernel<T, false>, plan.smem.total);
    for (int64_t t = 0; t < args.T; ++t) {
      p.t_begin = t;
      p.t_end = t + 1;
      launch_kernel(lstm_fwd_kernel<T, false>, plan.grid, plan.smem.total, p, false, stream);
    }
  });
}

void lstm_seq_bwd(const LstmSeqBwdArgs& args, cudaStream_t stream) {
  check_dtype(args.dtype);
  const LstmPath path = check_path(args.path);
  if (args.T < 0 || args.B < 0 || args.H < 0) throw std::invalid_argument("lstm_seq_bwd: sizes must be >= 0");
  check_device_ready();
  if (args.T == 0 || args.B == 0 || args.H == 0) return;  // the caller's dh0, dc0 are dhs[0], dcs[0]
  const DeviceCaps caps = device_caps();
  dispatch(args.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const int64_t B = args.B, H = args.H;
    const bool persistent = choose_persistent<T>(path, caps, H);
    Plan plan;
    if (persistent) {
      plan_persistent<T>(lstm_bwd_kernel<T, true>, true, caps, H, ceil_div(B, kRows), &plan);
    } else {
      plan = plan_per_step<T>(true, caps, H, B);
    }
    BwdParams p{};
    p.dhs = args.dhs;
    p.dcs = args.dcs;
    p.cs = args.cs;
    p.gates = args.gates;
    p.w = args.w_hh;
    p.w_sr = args.w_stride_r;
    p.w_sk = args.w_stride_k;
    p.dg_vec = vector_ok(args.dgates, {4 * H, B * 4 * H}, 1, sizeof(T));
    p.lengths = args.lengths;
    p.dgates = args.dgates;
    p.dh0 = args.dh0;
    p.dc0 = args.dc0;
    p.dh_work = args.work;
    p.dc_work = args.work + B * H;
    p.T = args.T;
    p.B = B;
    p.H = H;
    p.bh = plan.bh;
    p.ldw = plan.ldw;
    p.a_cols = plan.a_cols;
    p.carry_tiles = plan.carry_tiles;
    p.smem = plan.smem;
    if (persistent) {
      p.u_begin = args.T;
      p.u_end = 0;
      allow_smem(lstm_bwd_kernel<T, true>, plan.smem.total);
      launch_kernel(lstm_bwd_kernel<T, true>, plan.grid, plan.smem.total, p, true, stream);
      return;
    }
    allow_smem(lstm_bwd_kernel<T, false>, plan.smem.total);
    for (int64_t u = args.T; u >= 0; --u) {
      p.u_begin = p.u_end = u;
      launch_kernel(lstm_bwd_kernel<T, false>, plan.grid, plan.smem.total, p, false, stream);
    }
  });
}

LstmPath lstm_seq_path(int64_t H, int dtype) {
  check_dtype(dtype);
  if (H < 0) throw std::invalid_argument("lstm_seq_path: hidden size must be >= 0");
  check_device_ready();
  const DeviceCaps caps = device_caps();
  bool persistent = false;
  dispatch(dtype, [&](auto type_tag) { persistent = persistent_ok<decltype(type_tag)>(caps, H); });
  return persistent ? LstmPath::kPersistent : LstmPath::kPerStep;
}

}  // namespace deepfuse
