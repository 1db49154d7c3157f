// linear_act on the fused GEMM (fused_gemm.cuh):
//   forward   y = act(x W^T + b)                  one GEMM, bias and activation in the epilogue
//   backward  dz = dy * act'(saved) is never stored: it is formed while loading tiles, in both
//             dx = dz W        (M x K)            and
//             dW = dz^T x      (N x K), whose first column of tiles also sums db = sum_m dz.
// On a 9.0 device (fp16/bf16, TMA-legal layouts) both directions take the sm_90a CUTLASS kernels instead
// (gemm_sm90.cu, linear_act_bwd_sm90.cu). TMA copies tiles as they are, so there backward stores dz once (the
// grad_preact kernel below, which also sums db's partials) before the two GEMMs read it.
#include <algorithm>
#include <stdexcept>

#include "fused_gemm.cuh"
#include "linear_act.h"
#if DEEPFUSE_SM90_KERNELS
#include "gemm_sm90.h"
#include "linear_act_bwd_sm90.h"
#endif

namespace deepfuse {

namespace {

void check_codes(int dtype, int activation) {
  if (dtype < 0 || dtype > static_cast<int>(DType::kBFloat16)) throw std::invalid_argument("linear_act: bad dtype code");
  if (activation < 0 || activation >= kNumActivations) throw std::invalid_argument("linear_act: bad activation code");
}

}  // namespace

using StridedGemm = FusedGemm<StridedMatrix, StridedMatrix, StridedMatrix>;

namespace {

const KernelLabel kSimt =
    DEEPFUSE_KERNEL_LABEL(gemm_detail::fused_gemm_simt_kernel<FusedGemm<StridedMatrix, StridedMatrix, StridedMatrix>>);
const KernelLabel kWmmaHalf = DEEPFUSE_KERNEL_LABEL(
    gemm_detail::fused_gemm_wmma_kernel<__half, FusedGemm<StridedMatrix, StridedMatrix, StridedMatrix>>);
const KernelLabel kWmmaBf16 = DEEPFUSE_KERNEL_LABEL(
    gemm_detail::fused_gemm_wmma_kernel<__nv_bfloat16, FusedGemm<StridedMatrix, StridedMatrix, StridedMatrix>>);
const RegisterKernelLabels kKernelLabels{kSimt, kWmmaHalf, kWmmaBf16};

}  // namespace

LinearActKernelChoice choose_linear_act_fwd_kernel(const LinearActFwdArgs& args, int capability) {
  check_codes(args.dtype, args.activation);
  const char* fallback = args.dtype == static_cast<int>(DType::kFloat32)   ? kSimt.label
                         : args.dtype == static_cast<int>(DType::kFloat16) ? kWmmaHalf.label
                                                                            : kWmmaBf16.label;
  const std::string path = args.dtype == static_cast<int>(DType::kFloat32) ? "SIMT fp32 kernel: "
                                                                           : "WMMA (mma.sync) kernel: ";
#if DEEPFUSE_SM90_KERNELS
  if (capability != 90) {
    return {fallback,
            path + "device capability " + std::to_string(capability / 10) + "." + std::to_string(capability % 10) +
                " (the sm_90a TMA + wgmma kernel needs 9.0)",
            false};
  }
  if (const char* refusal = linear_act_fwd_sm90_refusal(args)) return {fallback, path + refusal, false};
  return {linear_act_fwd_sm90_kernel_label(args.dtype),
          "sm_90a CUTLASS kernel: TMA loads, wgmma, warp-specialised (setmaxnreg), persistent; bias, activation and "
          "pre-activation fused in its epilogue",
          true};
#else
  (void)capability;
  return {fallback, path + "this deepfuse._C was built without the sm_90a kernels (DEEPFUSE_SM90=0)", false};
#endif
}

#if DEEPFUSE_SM90_KERNELS
// ------------------------------------------------------------------------------ dz stored, db summed (sm_90a path)
namespace {

// A block of 256 threads, as 8 across x 32 down, covers 64 columns (8 per thread: 16-byte loads) of a slab of rows;
// blockIdx.y picks the slab. Each block leaves its 64 column sums of dz in partials[slab][column] (fp32);
// linear_act_grad_bias_kernel adds the slabs in order, so db is deterministic.
constexpr int kDzVector = 8, kDzThreadsX = 8, kDzThreadsY = 32;
constexpr int kDzColumns = kDzVector * kDzThreadsX, kDzThreads = kDzThreadsX * kDzThreadsY;
constexpr int kDzMaxSlabs = 64;

template <typename T>
struct GradPreactParams {
  const T* grad_y;   // (M, N) contiguous, 16-byte aligned, N % 8 == 0
  const T* saved;    // like grad_y; unread for "none"
  T* dz;             // like grad_y, or null (not stored: "none", whose dz is grad_y, or db alone)
  float* partials;   // (slabs, N), or null (no bias)
  T* grad_bias;      // (N,)
  int64_t M, N, rows_per_slab;
  int slabs;
  Activation act;
};

template <typename T>
__global__ void __launch_bounds__(kDzThreads) linear_act_grad_preact_kernel(const GradPreactParams<T> p) {
  __shared__ float sums[kDzThreadsY][kDzColumns + 1];
  const int tx = threadIdx.x % kDzThreadsX, ty = threadIdx.x / kDzThreadsX;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kDzColumns;
  const int64_t col = col0 + tx * kDzVector;
  const int64_t row_begin = blockIdx.y * p.rows_per_slab;
  const int64_t row_end = p.M < row_begin + p.rows_per_slab ? p.M : row_begin + p.rows_per_slab;
  float acc[kDzVector] = {};
  if (col < p.N) {
    for (int64_t row = row_begin + ty; row < row_end; row += kDzThreadsY) {
      const int64_t offset = row * p.N + col;
      uint4 dy_bits = *reinterpret_cast<const uint4*>(p.grad_y + offset);
      uint4 saved_bits = dy_bits;
      if (p.act != Activation::kNone) saved_bits = *reinterpret_cast<const uint4*>(p.saved + offset);
      T* dz = reinterpret_cast<T*>(&dy_bits);
      const T* saved = reinterpret_cast<const T*>(&saved_bits);
#pragma unroll
      for (int i = 0; i < kDzVector; ++i) {
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
  for (int i = 0; i < kDzVector; ++i) sums[ty][tx * kDzVector + i] = acc[i];
  __syncthreads();
  const int t = threadIdx.x;
  if (t < kDzColumns && col0 + t < p.N) {
    float sum = 0.0f;
    for (int r = 0; r < kDzThreadsY; ++r) sum += sums[r][t];
    p.partials[blockIdx.y * p.N + col0 + t] = sum;
  }
}

template <typename T>
__global__ void __launch_bounds__(256) linear_act_grad_bias_kernel(const GradPreactParams<T> p) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= p.N) return;
  float sum = 0.0f;
  for (int slab = 0; slab < p.slabs; ++slab) sum += p.partials[slab * p.N + n];
  p.grad_bias[n] = from_float<T>(sum);
}

const RegisterKernelLabels kGradPreactLabels{
    DEEPFUSE_KERNEL_LABEL(linear_act_grad_preact_kernel<__half>),
    DEEPFUSE_KERNEL_LABEL(linear_act_grad_preact_kernel<__nv_bfloat16>),
    DEEPFUSE_KERNEL_LABEL(linear_act_grad_bias_kernel<__half>),
    DEEPFUSE_KERNEL_LABEL(linear_act_grad_bias_kernel<__nv_bfloat16>),
};

int64_t round_up(int64_t value, int64_t multiple) { return ceil_div(value, multiple) * multiple; }

// The most slabs a call of M rows can have (each slab at least one block's height of rows).
int64_t max_slabs(int64_t M) { return std::min<int64_t>(kDzMaxSlabs, ceil_div(M, kDzThreadsY)); }

// The workspace: dz (M, N) in a 2-byte type first, padded to 256 bytes (none for "none": dz = dy), then the partial
// sums (max_slabs(M), N) in fp32 when db is wanted.
int64_t dz_bytes(int64_t M, int64_t N, int activation) {
  return activation == static_cast<int>(Activation::kNone) ? 0 : round_up(M * N * 2, 256);
}

int64_t sm90_workspace_bytes(int64_t M, int64_t N, int activation, bool grad_bias) {
  return dz_bytes(M, N, activation) + (grad_bias ? max_slabs(M) * N * static_cast<int64_t>(sizeof(float)) : 0);
}

template <typename T>
void run_grad_preact(const LinearActBwdArgs& a, void* dz, cudaStream_t stream) {
  GradPreactParams<T> p{};
  p.grad_y = static_cast<const T*>(a.grad_y);
  p.saved = static_cast<const T*>(a.saved);
  p.dz = static_cast<T*>(dz);
  p.partials = a.grad_bias == nullptr
                   ? nullptr
                   : reinterpret_cast<float*>(static_cast<char*>(a.workspace) + dz_bytes(a.M, a.N, a.activation));
  p.grad_bias = static_cast<T*>(a.grad_bias);
  p.M = a.M;
  p.N = a.N;
  p.act = static_cast<Activation>(a.activation);
  // Slabs enough for about two blocks per SM, never more than the workspace holds.
  const int64_t column_blocks = ceil_div(a.N, kDzColumns);
  const int64_t wanted = ceil_div(2 * static_cast<int64_t>(multiprocessor_count()), column_blocks);
  p.rows_per_slab = round_up(ceil_div(a.M, std::clamp<int64_t>(wanted, 1, max_slabs(a.M))), kDzThreadsY);
  p.slabs = static_cast<int>(ceil_div(a.M, p.rows_per_slab));
  const dim3 grid(static_cast<unsigned>(column_blocks), static_cast<unsigned>(p.slabs));
  if (!dry_launch(&linear_act_grad_preact_kernel<T>, grid, dim3(kDzThreads), 0, false)) {
    linear_act_grad_preact_kernel<T><<<grid, kDzThreads, 0, stream>>>(p);
    DEEPFUSE_CUDA_CHECK(cudaGetLastError());
  }
  if (p.partials == nullptr) return;
  const dim3 bias_grid(static_cast<unsigned>(ceil_div(a.N, 256)));
  if (!dry_launch(&linear_act_grad_bias_kernel<T>, bias_grid, dim3(256), 0, false)) {
    linear_act_grad_bias_kernel<T><<<bias_grid, 256, 0, stream>>>(p);
    DEEPFUSE_CUDA_CHECK(cudaGetLastError());
  }
}

// dz (and db) by the grad_preact kernel, then the CUTLASS dgrad and wgrad GEMMs on it. db alone stores no dz.
void linear_act_bwd_sm90(const LinearActBwdArgs& a, cudaStream_t stream) {
  const bool gemms = a.grad_x != nullptr || a.grad_weight != nullptr;
  const bool store_dz = gemms && a.activation != static_cast<int>(Activation::kNone);
  if (store_dz || a.grad_bias != nullptr) {
    void* dz = store_dz ? a.workspace : nullptr;
    if (a.dtype == static_cast<int>(DType::kBFloat16)) {
      run_grad_preact<__nv_bfloat16>(a, dz, stream);
    } else {
      run_grad_preact<__half>(a, dz, stream);
    }
  }
  if (gemms) {
    const bool dz_is_dy = a.activation == static_cast<int>(Activation::kNone);
    linear_act_bwd_sm90_gemms(a, dz_is_dy ? a.grad_y : a.workspace, stream);
  }
}

}  // namespace
#endif

int64_t linear_act_bwd_workspace_bytes(int64_t M, int64_t N, int dtype, int activation, bool grad_bias) {
  check_codes(dtype, activation);
#if DEEPFUSE_SM90_KERNELS
  if (dtype == static_cast<int>(DType::kFloat32) || device_capability() != 90) return 0;
  return sm90_workspace_bytes(M, N, activation, grad_bias);
#else
  (void)M, (void)N, (void)grad_bias;
  return 0;
#endif
}

LinearActBwdKernelChoice choose_linear_act_bwd_kernel(const LinearActBwdArgs& args, int capability) {
  check_codes(args.dtype, args.activation);
  const std::string fallback = args.dtype == static_cast<int>(DType::kFloat32)   ? kSimt.label
                               : args.dtype == static_cast<int>(DType::kFloat16) ? kWmmaHalf.label
                                                                                  : kWmmaBf16.label;
  const std::string path = args.dtype == static_cast<int>(DType::kFloat32)
                               ? "SIMT fp32 kernels (dz formed while loading tiles): "
                               : "WMMA (mma.sync) kernels (dz formed while loading tiles): ";
#if DEEPFUSE_SM90_KERNELS
  if (capability != 90) {
    return {fallback,
            path + "device capability " + std::to_string(capability / 10) + "." + std::to_string(capability % 10) +
                " (the sm_90a TMA + wgmma kernels need 9.0)",
            false};
  }
  if (const char* refusal = linear_act_bwd_sm90_refusal(args)) return {fallback, path + refusal, false};
  const int64_t needed = sm90_workspace_bytes(args.M, args.N, args.activation, args.grad_bias != nullptr);
  if (needed > 0 && (args.workspace == nullptr || args.workspace_bytes < needed)) {
    return {fallback,
            path + "no workspace of " + std::to_string(needed) +
                " bytes was passed for dz (see _C.linear_act_bwd_workspace_bytes)",
            false};
  }
  return {linear_act_bwd_sm90_kernel_labels(args.dtype),
          "sm_90a CUTLASS kernels: dz = dy * act'(saved) stored once (db summed with it), then dgrad and wgrad "
          "GEMMs with TMA loads, wgmma, warp specialisation (setmaxnreg), persistent",
          true};
#else
  (void)capability;
  return {fallback, path + "this deepfuse._C was built without the sm_90a kernels (DEEPFUSE_SM90=0)", false};
#endif
}

void linear_act_fwd(const LinearActFwdArgs& args, cudaStream_t stream) {
  check_codes(args.dtype, args.activation);
  check_device_ready();
#if DEEPFUSE_SM90_KERNELS
  if (args.M > 0 && args.N > 0 && choose_linear_act_fwd_kernel(args, device_capability()).sm90) {
    linear_act_fwd_sm90(args, stream);
    return;
  }
#endif
  StridedGemm p;
  p.a = args.x;
  p.a_addr = {args.M, args.K, args.x_stride_m, args.x_stride_k};
  p.b = args.weight;  // B[k, n] = W[n, k]
  p.b_addr = {args.K, args.N, args.w_stride_k, args.w_stride_n};
  p.bias = args.bias;
  p.c = args.y;
  p.c_preact = args.preact;
  p.c_addr = {args.M, args.N, args.N, 1};
  p.act = static_cast<Activation>(args.activation);
  p.M = args.M;
  p.N = args.N;
  p.K = args.K;
  launch_fused_gemm(p, static_cast<DType>(args.dtype), stream);
}

void linear_act_bwd(const LinearActBwdArgs& args, cudaStream_t stream) {
  check_codes(args.dtype, args.activation);
  check_device_ready();
#if DEEPFUSE_SM90_KERNELS
  if (args.M > 0 && args.N > 0 && choose_linear_act_bwd_kernel(args, device_capability()).sm90) {
    linear_act_bwd_sm90(args, stream);
    return;
  }
#endif
  const auto act = static_cast<Activation>(args.activation);
  const auto dtype = static_cast<DType>(args.dtype);
  if (args.grad_x != nullptr) {
    // dx[m, k] = sum_n dz[m, n] W[n, k]
    StridedGemm p;
    p.a = args.grad_y;
    p.a_saved = args.saved;
    p.grad_act = act;
    p.a_addr = {args.M, args.N, args.N, 1};
    p.b = args.weight;
    p.b_addr = {args.N, args.K, args.w_stride_n, args.w_stride_k};
    p.c = args.grad_x;
    p.c_addr = {args.M, args.K, args.K, 1};
    p.M = args.M;
    p.N = args.K;
    p.K = args.N;
    launch_fused_gemm(p, dtype, stream);
  }
  if (args.grad_weight != nullptr || args.grad_bias != nullptr) {
    // dW[n, k] = sum_m dz[m, n] x[m, k]; A = dz^T through swapped strides. Without grad_weight (frozen
    // weight, trainable bias) only the first column of tiles runs, for db.
    StridedGemm p;
    p.a = args.grad_y;
    p.a_saved = args.saved;
    p.grad_act = act;
    p.a_addr = {args.N, args.M, 1, args.N};
    p.b = args.x;
    p.b_addr = {args.M, args.K, args.x_stride_m, args.x_stride_k};
    p.c = args.grad_weight;
    p.c_addr = {args.N, args.K, args.K, 1};
    p.row_sum = args.grad_bias;
    p.M = args.N;
    p.N = args.K;
    p.K = args.M;
    launch_fused_gemm(p, dtype, stream);
  }
}

}  // namespace deepfuse
