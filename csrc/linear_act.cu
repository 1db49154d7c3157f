// linear_act on the fused GEMM (fused_gemm.cuh):
//   forward   y = act(x W^T + b)                  one GEMM, bias and activation in the epilogue
//   backward  dz = dy * act'(saved) is never stored: it is formed while loading tiles, in both
//             dx = dz W        (M x K)            and
//             dW = dz^T x      (N x K), whose first column of tiles also sums db = sum_m dz.
// On a 9.0 device (fp16/bf16, TMA-legal layouts) both directions take the sm_90a CUTLASS kernels instead
// (gemm_sm90.cu, linear_act_bwd_sm90.cu). TMA copies tiles as they are, so there backward stores dz once
// (grad_preact.cu, which also sums db) before the two GEMMs read it.
#include <stdexcept>
#include <string>

#include "fused_gemm.cuh"
#include "linear_act.h"
#if DEEPFUSE_SM90_KERNELS
#include "gemm_sm90.h"
#include "grad_preact.h"
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
namespace {

// dz (and db) by grad_preact.cu's kernels, then the CUTLASS dgrad and wgrad GEMMs on it. db alone stores no dz.
void linear_act_bwd_sm90(const LinearActBwdArgs& a, cudaStream_t stream) {
  const bool gemms = a.grad_x != nullptr || a.grad_weight != nullptr;
  const GradPreactArgs preact{a.grad_y, a.saved, a.grad_bias, a.workspace, a.M, a.N, a.dtype, a.activation, gemms};
  const void* dz = run_grad_preact(preact, stream);
  if (gemms) linear_act_bwd_sm90_gemms(a, dz, stream);
}

}  // namespace
#endif

int64_t linear_act_bwd_workspace_bytes(int64_t M, int64_t N, int dtype, int activation, bool grad_bias) {
  check_codes(dtype, activation);
#if DEEPFUSE_SM90_KERNELS
  if (dtype == static_cast<int>(DType::kFloat32) || device_capability() != 90) return 0;
  return grad_preact_workspace_bytes(M, N, activation, grad_bias);
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
  const int64_t needed = grad_preact_workspace_bytes(args.M, args.N, args.activation, args.grad_bias != nullptr);
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
