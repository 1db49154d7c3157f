// Host stand-ins for the sm_90a CUTLASS entry points (gemm_sm90.h, linear_act_bwd_sm90.h, conv2d_act_sm90.h),
// which have no host emulation: with them, linear_act.cu and conv2d_act.cu build with DEEPFUSE_SM90_KERNELS=1 and
// the emulated 9.0 device (SHIM_CC) takes the Hopper backward's own host code and kernels: the dispatch, the
// workspace handed in from Python, the grad_preact kernel that stores dz and db's partial sums, and the reduction of
// those sums. Only the two CUTLASS GEMMs are replaced, by plain loops over the same operands and strides (dz (M, N)
// row-major, W and x with their row strides). The forward stand-ins (linear_act's and conv2d_act's) refuse every
// call, so the forwards run the WMMA kernels as before.
#include "shim.h"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "conv2d_act_sm90.h"
#include "gemm_sm90.h"
#include "linear_act_bwd_sm90.h"

namespace deepfuse {

const char* linear_act_fwd_sm90_refusal(const LinearActFwdArgs&) {
  return "the CUTLASS forward has no host emulation (tools/cuda_host_emulation/sm90_standins.cpp)";
}

const char* linear_act_fwd_sm90_kernel_label(int) { return "linear_act_sm90_kernel (host stand-in)"; }

void linear_act_fwd_sm90(const LinearActFwdArgs&, cudaStream_t) {
  throw std::logic_error("host stand-in: the sm_90a forward refuses every call");
}

const char* conv2d_act_fwd_sm90_refusal(const Conv2dActFwdArgs&) {
  return "the CUTLASS conv forward has no host emulation (tools/cuda_host_emulation/sm90_standins.cpp)";
}

const char* conv2d_act_fwd_sm90_kernel_label(int) { return "conv2d_act_sm90_kernel (host stand-in)"; }

const char* conv2d_act_fwd_sm90_activation_pass_label(int) {
  return "conv2d_act_activation_pass_kernel (host stand-in)";
}

void conv2d_act_fwd_sm90(const Conv2dActFwdArgs&, cudaStream_t) {
  throw std::logic_error("host stand-in: the sm_90a conv forward refuses every call");
}

// The real refusal's conditions that the grad_preact kernel relies on too (16-byte vectors of dy, saved, dz).
const char* linear_act_bwd_sm90_refusal(const LinearActBwdArgs& a) {
  if (a.dtype != static_cast<int>(DType::kFloat16) && a.dtype != static_cast<int>(DType::kBFloat16)) {
    return "the sm_90a kernels take float16 and bfloat16 only";
  }
  if (a.M == 0 || a.N == 0 || a.K == 0) return "an empty product (M, N or K is 0)";
  if (a.x_stride_k != 1 || a.w_stride_k != 1) return "x or weight has a non-contiguous K dimension (TMA needs it)";
  if (a.N % 8 != 0 || a.K % 8 != 0) return "N or K is not a multiple of 8 (TMA needs 16-byte row strides)";
  for (const void* p : {a.grad_y, a.saved, a.x, a.weight, static_cast<const void*>(a.grad_x),
                        static_cast<const void*>(a.grad_weight), static_cast<const void*>(a.workspace)}) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return "a pointer is not 16-byte aligned (TMA needs it)";
  }
  return nullptr;
}

std::string linear_act_bwd_sm90_kernel_labels(int) { return "linear_act_dgrad/wgrad_sm90_kernel (host stand-ins)"; }

namespace {

template <typename T>
void gemms(const LinearActBwdArgs& a, const T* dz) {
  const T* w = static_cast<const T*>(a.weight);
  const T* x = static_cast<const T*>(a.x);
  if (a.grad_x != nullptr) {
    for (int64_t m = 0; m < a.M; ++m) {
      for (int64_t k = 0; k < a.K; ++k) {
        float acc = 0.0f;
        for (int64_t n = 0; n < a.N; ++n) acc += float(dz[m * a.N + n]) * float(w[n * a.w_stride_n + k]);
        static_cast<T*>(a.grad_x)[m * a.K + k] = T(acc);
      }
    }
  }
  if (a.grad_weight != nullptr) {
    for (int64_t n = 0; n < a.N; ++n) {
      for (int64_t k = 0; k < a.K; ++k) {
        float acc = 0.0f;
        for (int64_t m = 0; m < a.M; ++m) acc += float(dz[m * a.N + n]) * float(x[m * a.x_stride_m + k]);
        static_cast<T*>(a.grad_weight)[n * a.K + k] = T(acc);
      }
    }
  }
}

}  // namespace

void linear_act_bwd_sm90_gemms(const LinearActBwdArgs& args, const void* dz, cudaStream_t) {
  if (const char* refusal = linear_act_bwd_sm90_refusal(args)) {
    throw std::invalid_argument(std::string("linear_act sm_90a backward: ") + refusal);
  }
  if (args.dtype == static_cast<int>(DType::kBFloat16)) {
    gemms(args, static_cast<const __nv_bfloat16*>(dz));
  } else {
    gemms(args, static_cast<const __half*>(dz));
  }
}

}  // namespace deepfuse
