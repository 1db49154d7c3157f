// A GEMM with fused prologue and epilogue and pluggable operand addressing, the building block of
// linear_act (strided matrices) and conv2d_act (implicit GEMM: patches gathered on the fly):
//
//   A'[m, k] = A[m, k] * act'(A_saved[m, k])             (prologue, only when grad_act != kNone)
//   acc[m, n] = sum_k A'[m, k] * B[k, n]                   (fp32 accumulation)
//   C[m, n]  = act(acc + bias[ch(n)] + residual[m, n])     (epilogue; C_preact gets the value before act)
//   row_sum[m] = sum_k A'[m, k]                             (optional: a bias gradient in backward)
//
// Addressing policies (Addr below) map an operand's (row, column) to an element offset, or say that
// the element lies outside the tensor (read as zero). blockIdx.z is the convolution group; each
// policy applies its group offset itself. fp16/bf16 use tensor cores through WMMA (16x16x16, fp32
// accumulators, sm_80+); fp32 uses a register-tiled SIMT path with exact fp32 products.
#pragma once

#include <mma.h>

#include "common.cuh"

namespace deepfuse {

// A plain strided matrix: element (r, c) at r * stride_r + c * stride_c.
struct StridedMatrix {
  int64_t rows = 0, cols = 0, stride_r = 0, stride_c = 0;
  __device__ __forceinline__ bool offset(int64_t r, int64_t c, int64_t& off) const {
    if (r >= rows || c >= cols) return false;
    off = r * stride_r + c * stride_c;
    return true;
  }
  __device__ __forceinline__ bool cols_contiguous() const { return stride_c == 1; }
};

template <typename AAddr, typename BAddr, typename CAddr>
struct FusedGemm {
  const void* a = nullptr;
  const void* a_saved = nullptr;  // addressed like a; read only when grad_act != kNone
  Activation grad_act = Activation::kNone;
  AAddr a_addr{};
  const void* b = nullptr;
  BAddr b_addr{};
  const void* bias = nullptr;         // indexed by blockIdx.z * group_channels + n
  const void* residual = nullptr;     // addressed by residual_addr
  CAddr residual_addr{};
  void* c = nullptr;                  // null: only row_sum is wanted (one column of tiles runs)
  void* c_preact = nullptr;           // addressed like c
  CAddr c_addr{};
  void* row_sum = nullptr;            // indexed by blockIdx.z * group_channels + m
  int64_t group_channels = 0;
  Activation act = Activation::kNone;
  int64_t M = 0, N = 0, K = 0;
  int groups = 1;
};

namespace gemm_detail {

// Copies the (ROWS x COLS) tile of an operand starting at (r0, c0) into shared memory at
// smem[r * sm_r + c * sm_c], zero-filling what lies outside. Consecutive threads walk the operand's
// unit-stride dimension so global loads coalesce.
template <typename T, int ROWS, int COLS, int NTHREADS, typename Addr>
__device__ __forceinline__ void load_tile(const T* __restrict__ src, const T* __restrict__ saved, Activation grad_act,
                                          const Addr& addr, int64_t r0, int64_t c0, T* smem, int sm_r, int sm_c) {
  const bool cols_contiguous = addr.cols_contiguous();
  for (int i = threadIdx.x; i < ROWS * COLS; i += NTHREADS) {
    const int r = cols_contiguous ? i / COLS : i % ROWS;
    const int c = cols_contiguous ? i % COLS : i / ROWS;
    int64_t offset = 0;
    float v = 0.0f;
    if (addr.offset(r0 + r, c0 + c, offset)) {
      v = to_float(src[offset]);
      if (grad_act != Activation::kNone) v *= activation_grad(to_float(saved[offset]), grad_act);
    }
    smem[r * sm_r + c * sm_c] = from_float<T>(v);
  }
}

// Writes one output element: bias, residual, optional pre-activation, activation, cast once.
template <typename T, typename P>
__device__ __forceinline__ void store_output(const P& p, int64_t m, int64_t n, float acc) {
  int64_t offset = 0;
  if (p.c == nullptr || m >= p.M || n >= p.N || !p.c_addr.offset(m, n, offset)) return;
  if (p.bias != nullptr) acc += to_float(static_cast<const T*>(p.bias)[blockIdx.z * p.group_channels + n]);
  int64_t res_offset = 0;
  if (p.residual != nullptr && p.residual_addr.offset(m, n, res_offset)) {
    acc += to_float(static_cast<const T*>(p.residual)[res_offset]);
  }
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

template <typename T, typename P>
__device__ __forceinline__ void store_row_sum(const P& p, int64_t m0, int bm, float row_acc) {
  // Only the first column of tiles sums rows, so each row is written once.
  if (p.row_sum == nullptr || blockIdx.y != 0 || threadIdx.x >= bm) return;
  const int64_t m = m0 + threadIdx.x;
  if (m < p.M) static_cast<T*>(p.row_sum)[blockIdx.z * p.group_channels + m] = from_float<T>(row_acc);
}

// Tensor-core path for fp16/bf16: 64x64 tile, 4 warps in 2x2, each warp 32x32 = 2x2 WMMA fragments.
template <typename T, typename P>
__global__ void __launch_bounds__(128) fused_gemm_wmma_kernel(const P p) {
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
    load_tile<T, BM, BK, NTHREADS>(a, a_saved, p.grad_act, p.a_addr, m0, k0, smem_a, LDA, 1);
    load_tile<T, BK, BN, NTHREADS>(b, nullptr, Activation::kNone, p.b_addr, k0, n0, smem_b, LDB, 1);
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
  const bool out_cols_contiguous = p.c_addr.cols_contiguous();
  for (int i = threadIdx.x; i < BM * BN; i += NTHREADS) {
    const int r = out_cols_contiguous ? i / BN : i % BM;
    const int c = out_cols_contiguous ? i % BN : i / BM;
    store_output<T>(p, m0 + r, n0 + c, smem_c[r * LDC + c]);
  }
}

// fp32 path (exact fp32 products, like cuBLAS without TF32): 64x64 tile, 16x16 threads, 4x4 each.
// NOTE: __launch_bounds__(256, 2): with (256) alone ptxas aimed at 64 registers and spilled 16 bytes in the linear
// instantiation; with a 2-block minimum it takes 94 and spills nothing (ptxas sm_90, CUDA 13.0). Speed unmeasured.
template <typename P>
__global__ void __launch_bounds__(256, 2) fused_gemm_simt_kernel(const P p) {
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
    load_tile<float, BM, BK, NTHREADS>(a, a_saved, p.grad_act, p.a_addr, m0, k0, smem_a, 1, BM);
    load_tile<float, BK, BN, NTHREADS>(b, nullptr, Activation::kNone, p.b_addr, k0, n0, smem_b, BN, 1);
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

// Launches the fused GEMM on `stream` (grid: M tiles x N tiles x groups); throws with the CUDA error
// string on failure.
template <typename AAddr, typename BAddr, typename CAddr>
void launch_fused_gemm(const FusedGemm<AAddr, BAddr, CAddr>& p, DType dtype, cudaStream_t stream) {
  using P = FusedGemm<AAddr, BAddr, CAddr>;
  if (p.M == 0 || p.groups == 0 || (p.N == 0 && p.row_sum == nullptr)) return;
  constexpr int64_t kTile = 64;  // BM == BN == 64 for both kernels
  // One column of tiles when N == 0 or C is not wanted: row_sum is still written.
  const int64_t tiles_n = (p.N == 0 || p.c == nullptr) ? 1 : ceil_div(p.N, kTile);
  const int64_t tiles_m = ceil_div(p.M, kTile);
  if (tiles_n > 65535 || p.groups > 65535 || tiles_m > 0x7fffffff) {
    throw std::invalid_argument("deepfuse fused GEMM: problem too large for the grid");
  }
  const dim3 grid(static_cast<unsigned>(tiles_m), static_cast<unsigned>(tiles_n), static_cast<unsigned>(p.groups));
  // Static shared memory only.
  auto run = [&](void (*kernel)(P), int threads) {
    if (dry_launch(kernel, grid, dim3(threads), 0, false)) return;
    kernel<<<grid, threads, 0, stream>>>(p);
    DEEPFUSE_CUDA_CHECK(cudaGetLastError());
  };
  switch (dtype) {
    case DType::kFloat16:
      run(gemm_detail::fused_gemm_wmma_kernel<__half, P>, 128);
      break;
    case DType::kBFloat16:
      run(gemm_detail::fused_gemm_wmma_kernel<__nv_bfloat16, P>, 128);
      break;
    case DType::kFloat32:
      run(gemm_detail::fused_gemm_simt_kernel<P>, 256);
      break;
    default:
      throw std::invalid_argument("deepfuse fused GEMM: unknown dtype code");
  }
}

}  // namespace deepfuse
