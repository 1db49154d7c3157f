// dz = dy * act'(saved) and db for the sm_90a backward GEMMs (grad_preact.h). db is deterministic: each block of
// grad_preact_kernel leaves fp32 column sums of its slab of rows, and grad_bias_kernel adds the slabs in order.
#include <algorithm>

#include "common.cuh"
#include "grad_preact.h"

namespace deepfuse {

namespace grad_preact_detail {

// A block of 256 threads, as 8 across x 32 down, covers 64 columns (8 per thread: 16-byte loads) of a slab of rows;
// blockIdx.y picks the slab.
constexpr int kVector = 8, kThreadsX = 8, kThreadsY = 32;
constexpr int kColumns = kVector * kThreadsX, kThreads = kThreadsX * kThreadsY;
constexpr int kMaxSlabs = 64;

template <typename T>
struct Params {
  const T* grad_y;
  const T* saved;
  T* dz;            // or null (not stored: "none", whose dz is grad_y, or db alone)
  float* partials;  // (slabs, N), or null (no bias)
  T* grad_bias;     // (N,)
  int64_t M, N, rows_per_slab;
  int slabs;
  Activation act;
};

}  // namespace grad_preact_detail

template <typename T>
__global__ void __launch_bounds__(grad_preact_detail::kThreads)
    grad_preact_kernel(const grad_preact_detail::Params<T> p) {
  using namespace grad_preact_detail;
  __shared__ float sums[kThreadsY][kColumns + 1];
  const int tx = threadIdx.x % kThreadsX, ty = threadIdx.x / kThreadsX;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kColumns;
  const int64_t col = col0 + tx * kVector;
  const int64_t row_begin = blockIdx.y * p.rows_per_slab;
  const int64_t row_end = p.M < row_begin + p.rows_per_slab ? p.M : row_begin + p.rows_per_slab;
  float acc[kVector] = {};
  if (col < p.N) {
    for (int64_t row = row_begin + ty; row < row_end; row += kThreadsY) {
      const int64_t offset = row * p.N + col;
      uint4 dy_bits = *reinterpret_cast<const uint4*>(p.grad_y + offset);
      uint4 saved_bits = dy_bits;
      if (p.act != Activation::kNone) saved_bits = *reinterpret_cast<const uint4*>(p.saved + offset);
      T* dz = reinterpret_cast<T*>(&dy_bits);
      const T* saved = reinterpret_cast<const T*>(&saved_bits);
#pragma unroll
      for (int i = 0; i < kVector; ++i) {
        if (p.act != Activation::kNone) {
          dz[i] = from_float<T>(to_float(dz[i]) * activation_grad(to_float(saved[i]), p.act));
        }
        acc[i] += to_float(dz[i]);  // db sums dz as the GEMMs read it: rounded to T, as the other paths do
      }
      if (p.dz != nullptr) *reinterpret_cast<uint4*>(p.dz + offset) = dy_bits;
    }
  }
  if (p.partials == nullptr) return;  // uniform across the block
#pragma unroll
  for (int i = 0; i < kVector; ++i) sums[ty][tx * kVector + i] = acc[i];
  __syncthreads();
  const int t = threadIdx.x;
  if (t < kColumns && col0 + t < p.N) {
    float sum = 0.0f;
    for (int r = 0; r < kThreadsY; ++r) sum += sums[r][t];
    p.partials[blockIdx.y * p.N + col0 + t] = sum;
  }
}

template <typename T>
__global__ void __launch_bounds__(256) grad_bias_kernel(const grad_preact_detail::Params<T> p) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= p.N) return;
  float sum = 0.0f;
  for (int slab = 0; slab < p.slabs; ++slab) sum += p.partials[slab * p.N + n];
  p.grad_bias[n] = from_float<T>(sum);
}

namespace {

using namespace grad_preact_detail;

const RegisterKernelLabels kKernelLabels{
    DEEPFUSE_KERNEL_LABEL(grad_preact_kernel<__half>),
    DEEPFUSE_KERNEL_LABEL(grad_preact_kernel<__nv_bfloat16>),
    DEEPFUSE_KERNEL_LABEL(grad_bias_kernel<__half>),
    DEEPFUSE_KERNEL_LABEL(grad_bias_kernel<__nv_bfloat16>),
};

int64_t round_up(int64_t value, int64_t multiple) { return ceil_div(value, multiple) * multiple; }

// The most slabs a call of M rows can have (each slab at least one block's height of rows).
int64_t max_slabs(int64_t M) { return std::min<int64_t>(kMaxSlabs, ceil_div(M, kThreadsY)); }

int64_t dz_bytes(int64_t M, int64_t N, int activation) {
  return activation == static_cast<int>(Activation::kNone) ? 0 : round_up(M * N * 2, 256);
}

template <typename T>
void run(const GradPreactArgs& a, cudaStream_t stream) {
  const bool store_dz = a.store_dz && a.activation != static_cast<int>(Activation::kNone);
  Params<T> p{};
  p.grad_y = static_cast<const T*>(a.grad_y);
  p.saved = static_cast<const T*>(a.saved);
  p.dz = store_dz ? static_cast<T*>(a.workspace) : nullptr;
  p.partials = a.grad_bias == nullptr
                   ? nullptr
                   : reinterpret_cast<float*>(static_cast<char*>(a.workspace) + dz_bytes(a.M, a.N, a.activation));
  p.grad_bias = static_cast<T*>(a.grad_bias);
  p.M = a.M;
  p.N = a.N;
  p.act = static_cast<Activation>(a.activation);
  if (p.dz == nullptr && p.partials == nullptr) return;  // "none" without db: the GEMMs read dy itself
  // Slabs enough for about two blocks per SM, never more than the workspace holds.
  const int64_t column_blocks = ceil_div(a.N, kColumns);
  const int64_t wanted = ceil_div(2 * static_cast<int64_t>(multiprocessor_count()), column_blocks);
  p.rows_per_slab = round_up(ceil_div(a.M, std::clamp<int64_t>(wanted, 1, max_slabs(a.M))), kThreadsY);
  p.slabs = static_cast<int>(ceil_div(a.M, p.rows_per_slab));
  const dim3 grid(static_cast<unsigned>(column_blocks), static_cast<unsigned>(p.slabs));
  if (!dry_launch(&grad_preact_kernel<T>, grid, dim3(kThreads), 0, false)) {
    grad_preact_kernel<T><<<grid, kThreads, 0, stream>>>(p);
    DEEPFUSE_CUDA_CHECK(cudaGetLastError());
  }
  if (p.partials == nullptr) return;
  const dim3 bias_grid(static_cast<unsigned>(ceil_div(a.N, 256)));
  if (!dry_launch(&grad_bias_kernel<T>, bias_grid, dim3(256), 0, false)) {
    grad_bias_kernel<T><<<bias_grid, 256, 0, stream>>>(p);
    DEEPFUSE_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

int64_t grad_preact_workspace_bytes(int64_t M, int64_t N, int activation, bool grad_bias) {
  return dz_bytes(M, N, activation) + (grad_bias ? max_slabs(M) * N * static_cast<int64_t>(sizeof(float)) : 0);
}

const void* run_grad_preact(const GradPreactArgs& args, cudaStream_t stream) {
  if (args.dtype == static_cast<int>(DType::kBFloat16)) {
    run<__nv_bfloat16>(args, stream);
  } else {
    run<__half>(args, stream);
  }
  return args.activation == static_cast<int>(Activation::kNone) ? args.grad_y : args.workspace;
}

}  // namespace deepfuse
