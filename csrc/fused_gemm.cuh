// A strided GEMM with fused prologue and epilogue, the building block of linear_act (and later
// conv's implicit GEMM):
//
//   A'[m, k] = A[m, k] * act'(A_saved[m, k])        (prologue, only when grad_act != kNone)
//   acc[m, n] = sum_k A'[m, k] * B[k, n]              (fp32 accumulation)
//   C[m, n]  = act(acc[m, n] + bias[n])               (epilogue; C_preact gets acc + bias)
//   row_sum[m] = sum_k A'[m, k]                        (optional: the bias gradient in backward)
//
// Every operand is addressed through (row, column) strides, so transposes cost nothing. fp16/bf16
// use tensor cores through WMMA (16x16x16, fp32 accumulators); fp32 uses a register-tiled SIMT path.
#pragma once

#include <mma.h>

#include "common.cuh"

namespace deepfuse {

struct FusedGemmParams {
  const void* a = nullptr;
  int64_t a_stride_m = 0, a_stride_k = 0;
  const void* a_saved = nullptr;  // same strides as a; read only when grad_act != kNone
  Activation grad_act = Activation::kNone;
  const void* b = nullptr;
  int64_t b_stride_k = 0, b_stride_n = 0;
  const void* bias = nullptr;  // (N) or null
  void* c = nullptr;  // null: only row_sum is wanted (one column of tiles runs)
  int64_t c_stride_m = 0, c_stride_n = 0;
  void* c_preact = nullptr;  // optional, same strides as c
  void* row_sum = nullptr;   // optional (M), contiguous
  Activation act = Activation::kNone;
  int64_t M = 0, N = 0, K = 0;
};

namespace gemm_detail {

// Copies the (ROWS x COLS) tile of a strided operand starting at (r0, c0) into shared memory at
// smem[r * sm_r + c * sm_c], zero-filling outside the matrix. Consecutive threads walk the
// operand's unit-stride dimension so global loads coalesce for either layout.
template <typename T, int ROWS, int COLS, int NTHREADS>
__device__ __forceinline__ void load_tile(const T* __restrict__ src, const T* __restrict__ saved, Activation grad_act,
                                          int64_t stride_r, int64_t stride_c, int64_t n_rows, int64_t n_cols,
                                          int64_t r0, int64_t c0, T* smem, int sm_r, int sm_c) {
  const bool cols_contiguous = stride_c == 1;
  for (int i = threadIdx.x; i < ROWS * COLS; i += NTHREADS) {
    const int r = cols_contiguous ? i / COLS : i % ROWS;
    const int c = cols_contiguous ? i % COLS : i / ROWS;
    const int64_t gr = r0 + r, gc = c0 + c;
    float v = 0.0f;
    if (gr < n_rows && gc < n_cols) {
      const int64_t offset = gr * stride_r + gc * stride_c;
      v = to_float(src[offset]);
      if (grad_act != Activation::kNone) v *= activation_grad(to_float(saved[offset]), grad_act);
    }
    smem[r * sm_r + c * sm_c] = from_float<T>(v);
  }
}

// Writes one output element: bias, optional pre-activation, activation, cast once.
template <typename T>
__device__ __forceinline__ void store_output(const FusedGemmParams& p, int64_t m, int64_t n, float acc) {
  if (p.c == nullptr || m >= p.M || n >= p.N) return;
  if (p.bias != nullptr) acc += to_float(static_cast<const T*>(p.bias)[n]);
  const int64_t offset = m * p.c_stride_m + n * p.c_stride_n;
  if (p.c_preact != nullptr) static_cast<T*>(p.c_preact)[offset] = from_float<T>(acc);
  static_cast<T*>(p.c)[offset] = from_float<T>(apply_activation(acc, p.act));
}

// Threads [0, BM) each own one tile row and add that row of the staged A tile to their running sum.
template <typename T, int BM, int BK>
__device__ __forceinline__ void accumulate_row_sum(const T* smem_a, int sm_m, int sm_k, float& row_acc) {
  if (threadIdx.x < BM) {
    for (int k = 0; k < BK; ++k) row_acc += to_float(smem_a[threadIdx.x * sm_m + k * sm_k]);
  }
}

template <typename T>
__device__ __forceinline__ void store_row_sum(const FusedGemmParams& p, int64_t m0, int bm, float row_acc) {
  // Only the first column of tiles sums rows, so each row is written once.
  if (p.row_sum == nullptr || blockIdx.y != 0 || threadIdx.x >= bm) return;
  const int64_t m = m0 + threadIdx.x;
  if (m < p.M) static_cast<T*>(p.row_sum)[m] = from_float<T>(row_acc);
}

// Tensor-core path for fp16/bf16: 64x64 tile, 4 warps in 2x2, each warp 32x32 = 2x2 WMMA fragments.
template <typename T>
__global__ void __launch_bounds__(128) fused_gemm_wmma_kernel(const FusedGemmParams p) {
  using namespace nvcuda;
  constexpr int BM = 64, BN = 64, BK = 32, NTHREADS = 128;
  // Pads keep WMMA's ldm a multiple of 8 halves (4 floats for the fp32 staging tile) and spread banks.
  constexpr int LDA = BK + 8, LDB = BN + 8, LDC = BN + 4;
  __shared__ __align__(128) T smem_a[BM * LDA];
  __shared__ __align__(128) T smem_b[BK * LDB];
  __shared__ __align__(128) float smem_c[BM * LDC];

  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int warp = threadIdx.x / 32;
  const int warp_m = (warp / 2) * 32, warp_n = (warp % 2) * 32;
  const bool want_row_sum = p.row_sum != nullptr && blockIdx.y == 0;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  float row_acc = 0.0f;

  const T* a = static_cast<const T*>(p.a);
  const T* a_saved = static_cast<const T*>(p.a_saved);
  const T* b = static_cast<const T*>(p.b);
  for (int64_t k0 = 0; k0 < p.K; k0 += BK) {
    load_tile<T, BM, BK, NTHREADS>(a, a_saved, p.grad_act, p.a_stride_m, p.a_stride_k, p.M, p.K, m0, k0, smem_a, LDA, 1);
    load_tile<T, BK, BN, NTHREADS>(b, nullptr, Activation::kNone, p.b_stride_k, p.b_stride_n, p.K, p.N, k0, n0, smem_b,
                                   LDB, 1);
    __syncthreads();
    if (want_row_sum) accumulate_row_sum<T, BM, BK>(smem_a, LDA, 1, row_acc);
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], smem_a + (warp_m + 16 * i) * LDA + kk, LDA);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], smem_b + kk * LDB + warp_n + 16 * j, LDB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
  store_row_sum<T>(p, m0, BM, row_acc);

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(smem_c + (warp_m + 16 * i) * LDC + warp_n + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
  __syncthreads();
  const bool out_rows_contiguous = p.c_stride_n != 1 && p.c_stride_m == 1;
  for (int i = threadIdx.x; i < BM * BN; i += NTHREADS) {
    const int r = out_rows_contiguous ? i % BM : i / BN;
    const int c = out_rows_contiguous ? i / BM : i % BN;
    store_output<T>(p, m0 + r, n0 + c, smem_c[r * LDC + c]);
  }
}

// fp32 path (exact fp32 products, like cuBLAS without TF32): 64x64 tile, 16x16 threads, 4x4 each.
__global__ void __launch_bounds__(256) fused_gemm_simt_kernel(const FusedGemmParams p) {
  constexpr int BM = 64, BN = 64, BK = 16, NTHREADS = 256, TM = 4, TN = 4;
  // A is staged k-major so each thread's TM values sit side by side.
  __shared__ float smem_a[BK * BM];
  __shared__ float smem_b[BK * BN];

  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const bool want_row_sum = p.row_sum != nullptr && blockIdx.y == 0;

  float acc[TM][TN] = {};
  float row_acc = 0.0f;
  const float* a = static_cast<const float*>(p.a);
  const float* a_saved = static_cast<const float*>(p.a_saved);
  const float* b = static_cast<const float*>(p.b);
  for (int64_t k0 = 0; k0 < p.K; k0 += BK) {
    load_tile<float, BM, BK, NTHREADS>(a, a_saved, p.grad_act, p.a_stride_m, p.a_stride_k, p.M, p.K, m0, k0, smem_a, 1,
                                       BM);
    load_tile<float, BK, BN, NTHREADS>(b, nullptr, Activation::kNone, p.b_stride_k, p.b_stride_n, p.K, p.N, k0, n0,
                                       smem_b, BN, 1);
    __syncthreads();
    if (want_row_sum) accumulate_row_sum<float, BM, BK>(smem_a, 1, BM, row_acc);
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float av[TM], bv[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = smem_a[kk * BM + ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) bv[j] = smem_b[kk * BN + tx * TN + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
  store_row_sum<float>(p, m0, BM, row_acc);
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) store_output<float>(p, m0 + ty * TM + i, n0 + tx * TN + j, acc[i][j]);
}

}  // namespace gemm_detail

// Launches the fused GEMM on `stream`; throws with the CUDA error string on failure.
inline void launch_fused_gemm(const FusedGemmParams& p, DType dtype, cudaStream_t stream) {
  if (p.M == 0 || (p.N == 0 && p.row_sum == nullptr)) return;
  constexpr int64_t kTile = 64;  // BM == BN == 64 for both kernels
  // One column of tiles when N == 0 or C is not wanted: row_sum is still written.
  const int64_t tiles_n = (p.N == 0 || p.c == nullptr) ? 1 : ceil_div(p.N, kTile);
  if (tiles_n > 65535) throw std::invalid_argument("deepfuse fused GEMM: N too large (more than 65535 column tiles)");
  if (ceil_div(p.M, kTile) > 0x7fffffff) throw std::invalid_argument("deepfuse fused GEMM: M too large");
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, kTile)), static_cast<unsigned>(tiles_n));
  switch (dtype) {
    case DType::kFloat16:
      gemm_detail::fused_gemm_wmma_kernel<__half><<<grid, 128, 0, stream>>>(p);
      break;
    case DType::kBFloat16:
      gemm_detail::fused_gemm_wmma_kernel<__nv_bfloat16><<<grid, 128, 0, stream>>>(p);
      break;
    case DType::kFloat32:
      gemm_detail::fused_gemm_simt_kernel<<<grid, 256, 0, stream>>>(p);
      break;
    default:
      throw std::invalid_argument("deepfuse fused GEMM: unknown dtype code");
  }
  DEEPFUSE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace deepfuse
