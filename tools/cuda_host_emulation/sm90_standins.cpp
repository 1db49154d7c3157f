// Host stand-ins for the sm_90a CUTLASS entry points (gemm_sm90.h, linear_act_bwd_sm90.h, conv2d_act_sm90.h,
// conv2d_act_bwd_sm90.h), which have no host emulation: with them, linear_act.cu and conv2d_act.cu build with
// DEEPFUSE_SM90_KERNELS=1 and the emulated 9.0 device (SHIM_CC) takes the Hopper backward's own host code and kernels:
// the dispatch, the workspace handed in from Python, the grad_preact kernel that stores dz and db's partial sums, and
// the reduction of those sums. Only the CUTLASS GEMMs and convolutions are replaced, by plain fp32 loops over the same
// operands and strides (dz (M, N) row-major: for a convolution packed NHWC, (N * OH * OW, Cout)). The forward
// stand-ins (linear_act's and conv2d_act's) refuse every call, so the forwards run the WMMA kernels as before.
#include "shim.h"

#include <atomic>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "conv2d_act_bwd_sm90.h"
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


// ---------------------------------------------------------------------------------------------- conv2d_act backward
// conv_sm90_common.cuh's CUTLASS-free checks (geometry_refusal, settle_unit_dims, packed_nhwc, aligned,
// strides_aligned), cut from the real header by host_source.py (conv_sm90_checks), not copied: the header itself
// includes CuTe and CUTLASS.
namespace conv_sm90 {
#include "conv_sm90_checks.inc"
}  // namespace conv_sm90

namespace {

// Calls that reached the stand-ins outside a dry run (run_kernels.py reads them through ctypes: a case that expects
// the sm_90a side fails if the real backward fell back to WMMA).
std::atomic<long> g_dgrad_calls{0}, g_wgrad_calls{0};

// Stand-in "kernels": never launched, only named in dry runs (launch_plan), under the labels below.
void conv2d_act_dgrad_standin_half(int) {}
void conv2d_act_dgrad_standin_bf16(int) {}
void conv2d_act_wgrad_standin_half(int) {}
void conv2d_act_wgrad_standin_bf16(int) {}

const RegisterKernelLabels kStandInLabels{
    {reinterpret_cast<const void*>(&conv2d_act_dgrad_standin_half),
     "conv2d_act_dgrad_sm90_kernel<cutlass::half_t> (host stand-in)"},
    {reinterpret_cast<const void*>(&conv2d_act_dgrad_standin_bf16),
     "conv2d_act_dgrad_sm90_kernel<cutlass::bfloat16_t> (host stand-in)"},
    {reinterpret_cast<const void*>(&conv2d_act_wgrad_standin_half),
     "conv2d_act_wgrad_sm90_kernel<cutlass::half_t> (host stand-in)"},
    {reinterpret_cast<const void*>(&conv2d_act_wgrad_standin_bf16),
     "conv2d_act_wgrad_sm90_kernel<cutlass::bfloat16_t> (host stand-in)"},
};

bool is_bf16(int dtype) { return dtype == static_cast<int>(DType::kBFloat16); }

// conv2d_act_bwd_sm90.cu's settled(), dz_strides' layout and shared_refusal(), mirrored (they sit in that file's
// anonymous namespace, next to CUTLASS types).
Conv2dActBwdArgs settled(Conv2dActBwdArgs a) {
  const ConvShape& s = a.shape;
  a.grad_y_strides = conv_sm90::settle_unit_dims(a.grad_y_strides, s.batch, s.out_channels, s.out_height, s.out_width);
  a.x_strides = conv_sm90::settle_unit_dims(a.x_strides, s.batch, s.in_channels, s.height, s.width);
  a.grad_x_strides = conv_sm90::settle_unit_dims(a.grad_x_strides, s.batch, s.in_channels, s.height, s.width);
  a.w_strides = conv_sm90::settle_unit_dims(a.w_strides, s.out_channels, s.in_channels, s.kernel_h, s.kernel_w);
  a.grad_weight_strides =
      conv_sm90::settle_unit_dims(a.grad_weight_strides, s.out_channels, s.in_channels, s.kernel_h, s.kernel_w);
  return a;
}

const char* shared_refusal(const Conv2dActBwdArgs& a) {
  const ConvShape& s = a.shape;
  if (a.dtype != static_cast<int>(DType::kFloat16) && !is_bf16(a.dtype)) {
    return "the sm_90a kernels take float16 and bfloat16 only";
  }
  if (const char* refusal = conv_sm90::geometry_refusal(s)) return refusal;
  if (!conv_sm90::packed_nhwc(a.grad_y_strides, s.out_channels, s.out_height, s.out_width)) {
    return "grad_y is not packed channels_last (dz is formed from it as an (N * OH * OW, Cout) matrix)";
  }
  if (!conv_sm90::aligned(a.grad_y) || !conv_sm90::aligned(a.saved) || !conv_sm90::aligned(a.workspace)) {
    return "a pointer is not 16-byte aligned (TMA needs it)";
  }
  return nullptr;
}

// dx[n, ci, h, w] = sum over (co, kh, kw) of dz[(n, oh, ow), co] * W[co, ci, kh, kw], where
// h = oh * stride - pad_top + kh * dilation (groups == 1: the refusal took only those); fp32 sums, one rounding.
template <typename T>
void dgrad(const Conv2dActBwdArgs& a, const T* dz) {
  const ConvShape& s = a.shape;
  const T* w = static_cast<const T*>(a.weight);
  const Strides4 ws = a.w_strides, gx = a.grad_x_strides;
  for (int64_t n = 0; n < s.batch; ++n) {
    for (int64_t ci = 0; ci < s.in_channels; ++ci) {
      for (int64_t h = 0; h < s.height; ++h) {
        for (int64_t x = 0; x < s.width; ++x) {
          float acc = 0.0f;
          for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
            const int64_t th = h + s.pad_top - kh * s.dilation_h;
            if (th < 0 || th % s.stride_h != 0 || th / s.stride_h >= s.out_height) continue;
            for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
              const int64_t tw = x + s.pad_left - kw * s.dilation_w;
              if (tw < 0 || tw % s.stride_w != 0 || tw / s.stride_w >= s.out_width) continue;
              const int64_t row = (n * s.out_height + th / s.stride_h) * s.out_width + tw / s.stride_w;
              for (int64_t co = 0; co < s.out_channels; ++co) {
                acc += float(dz[row * s.out_channels + co]) * float(w[co * ws.n + ci * ws.c + kh * ws.h + kw * ws.w]);
              }
            }
          }
          static_cast<T*>(a.grad_x)[n * gx.n + ci * gx.c + h * gx.h + x * gx.w] = T(acc);
        }
      }
    }
  }
}

// dW[co, ci, kh, kw] = sum over the output pixels (n, oh, ow) of dz[(n, oh, ow), co] * x[n, ci, h, w] (zero padding).
template <typename T>
void wgrad(const Conv2dActBwdArgs& a, const T* dz) {
  const ConvShape& s = a.shape;
  const T* x = static_cast<const T*>(a.x);
  const Strides4 xs = a.x_strides, gw = a.grad_weight_strides;
  for (int64_t co = 0; co < s.out_channels; ++co) {
    for (int64_t ci = 0; ci < s.in_channels; ++ci) {
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          float acc = 0.0f;
          for (int64_t n = 0; n < s.batch; ++n) {
            for (int64_t oh = 0; oh < s.out_height; ++oh) {
              const int64_t h = oh * s.stride_h - s.pad_top + kh * s.dilation_h;
              if (h < 0 || h >= s.height) continue;
              for (int64_t ow = 0; ow < s.out_width; ++ow) {
                const int64_t w = ow * s.stride_w - s.pad_left + kw * s.dilation_w;
                if (w < 0 || w >= s.width) continue;
                const int64_t row = (n * s.out_height + oh) * s.out_width + ow;
                acc += float(dz[row * s.out_channels + co]) * float(x[n * xs.n + ci * xs.c + h * xs.h + w * xs.w]);
              }
            }
          }
          static_cast<T*>(a.grad_weight)[co * gw.n + ci * gw.c + kh * gw.h + kw * gw.w] = T(acc);
        }
      }
    }
  }
}

}  // namespace

// The real refusals' conditions, in their order and with their messages, less CUTLASS's can_implement.
const char* conv2d_act_dgrad_sm90_refusal(const Conv2dActBwdArgs& call) {
  const Conv2dActBwdArgs a = settled(call);
  if (const char* refusal = shared_refusal(a)) return refusal;
  const ConvShape& s = a.shape;
  if (s.stride_h != 1 || s.stride_w != 1) {
    return "a strided convolution (CUTLASS 4.2 tests its sm_90 dgrad at unit stride only)";
  }
  if (a.w_strides.c != 1) return "weight is not channels_last (the kernel reads it as KRSC)";
  if (a.grad_x_strides.c != 1) return "grad_x is not channels_last (the epilogue stores NHWC)";
  if (!conv_sm90::strides_aligned(a.w_strides) || !conv_sm90::strides_aligned(a.grad_x_strides)) {
    return "a stride of weight or grad_x is not a multiple of 8 elements (TMA needs 16-byte strides)";
  }
  if (!conv_sm90::aligned(a.weight) || !conv_sm90::aligned(a.grad_x)) {
    return "a pointer is not 16-byte aligned (TMA needs it)";
  }
  return nullptr;
}

const char* conv2d_act_wgrad_sm90_refusal(const Conv2dActBwdArgs& call) {
  const Conv2dActBwdArgs a = settled(call);
  if (const char* refusal = shared_refusal(a)) return refusal;
  if (a.grad_weight == nullptr) return nullptr;  // db alone: grad_preact.cu sums it, no GEMM runs
  const ConvShape& s = a.shape;
  if (!conv_sm90::packed_nhwc(a.x_strides, s.in_channels, s.height, s.width)) {
    return "x is not packed channels_last (CUTLASS 4.2's sm_90 wgrad reads it as packed NHWC)";
  }
  if (!conv_sm90::packed_nhwc(a.grad_weight_strides, s.in_channels, s.kernel_h, s.kernel_w)) {
    return "grad_weight is not packed channels_last (the kernel stores it as packed KRSC)";
  }
  if (!conv_sm90::aligned(a.x) || !conv_sm90::aligned(a.grad_weight)) {
    return "a pointer is not 16-byte aligned (TMA needs it)";
  }
  return nullptr;
}

const char* conv2d_act_dgrad_sm90_kernel_label(int dtype) {
  return is_bf16(dtype) ? "conv2d_act_dgrad_sm90_kernel<cutlass::bfloat16_t> (host stand-in)"
                        : "conv2d_act_dgrad_sm90_kernel<cutlass::half_t> (host stand-in)";
}

const char* conv2d_act_wgrad_sm90_kernel_label(int dtype) {
  return is_bf16(dtype) ? "conv2d_act_wgrad_sm90_kernel<cutlass::bfloat16_t> (host stand-in)"
                        : "conv2d_act_wgrad_sm90_kernel<cutlass::half_t> (host stand-in)";
}

// As the real entry points: refuse what the refusal refuses, record the launch in a dry run, else compute.
void conv2d_act_dgrad_sm90(const Conv2dActBwdArgs& args, const void* dz, cudaStream_t) {
  if (const char* refusal = conv2d_act_dgrad_sm90_refusal(args)) {
    throw std::invalid_argument(std::string("conv2d_act sm_90a dgrad: ") + refusal);
  }
  const bool bf16 = is_bf16(args.dtype);
  if (dry_launch(bf16 ? &conv2d_act_dgrad_standin_bf16 : &conv2d_act_dgrad_standin_half, dim3(1), dim3(1), 0, false)) {
    return;
  }
  ++g_dgrad_calls;
  if (bf16) {
    dgrad(args, static_cast<const __nv_bfloat16*>(dz));
  } else {
    dgrad(args, static_cast<const __half*>(dz));
  }
}

void conv2d_act_wgrad_sm90(const Conv2dActBwdArgs& args, const void* dz, cudaStream_t) {
  if (const char* refusal = conv2d_act_wgrad_sm90_refusal(args)) {
    throw std::invalid_argument(std::string("conv2d_act sm_90a wgrad: ") + refusal);
  }
  const bool bf16 = is_bf16(args.dtype);
  if (dry_launch(bf16 ? &conv2d_act_wgrad_standin_bf16 : &conv2d_act_wgrad_standin_half, dim3(1), dim3(1), 0, false)) {
    return;
  }
  ++g_wgrad_calls;
  if (bf16) {
    wgrad(args, static_cast<const __nv_bfloat16*>(dz));
  } else {
    wgrad(args, static_cast<const __half*>(dz));
  }
}

}  // namespace deepfuse

extern "C" long deepfuse_host_conv_standin_calls(int wgrad) {
  return wgrad ? deepfuse::g_wgrad_calls.load() : deepfuse::g_dgrad_calls.load();
}
