// Shared pieces of every deepfuse CUDA kernel: error checks, dtype and activation codes,
// conversions and the activation functions (forward and derivative).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "dry_run.h"

namespace deepfuse {

// CUDA errors become C++ exceptions carrying the CUDA error string; pybind11 turns them into
// Python RuntimeErrors.
#define DEEPFUSE_CUDA_CHECK(expr)                                                                     \
  do {                                                                                                \
    cudaError_t deepfuse_err_ = (expr);                                                               \
    if (deepfuse_err_ != cudaSuccess) {                                                               \
      throw std::runtime_error(std::string("deepfuse CUDA error: ") + cudaGetErrorName(deepfuse_err_) + \
                               ": " + cudaGetErrorString(deepfuse_err_) + " (" #expr ")");           \
    }                                                                                                 \
  } while (0)

// Must match deepfuse.backend.DTYPE_CODES.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Must match deepfuse.ops.activations.ACTIVATIONS (order = code).
enum class Activation : int {
  kNone = 0,
  kRelu = 1,
  kLeakyRelu = 2,
  kGelu = 3,
  kGeluTanh = 4,
  kSilu = 5,
  kSigmoid = 6,
  kTanh = 7,
};
constexpr int kNumActivations = 8;
constexpr float kLeakyReluSlope = 0.01f;

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float sigmoidf(float z) { return 1.0f / (1.0f + expf(-z)); }

__device__ __forceinline__ float apply_activation(float z, Activation act) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  switch (act) {
    case Activation::kRelu:
      return z > 0.0f ? z : 0.0f;
    case Activation::kLeakyRelu:
      return z > 0.0f ? z : kLeakyReluSlope * z;
    case Activation::kGelu:
      return 0.5f * z * (1.0f + erff(z * 0.7071067811865476f));
    case Activation::kGeluTanh:
      return 0.5f * z * (1.0f + tanhf(kSqrt2OverPi * (z + 0.044715f * z * z * z)));
    case Activation::kSilu:
      return z * sigmoidf(z);
    case Activation::kSigmoid:
      return sigmoidf(z);
    case Activation::kTanh:
      return tanhf(z);
    default:
      return z;
  }
}

// Whether backward needs the pre-activation z. relu and leaky_relu take their derivative from
// y = act(z) (the sign survives rounding), which saves writing z; sigmoid and tanh do not: near
// saturation 1 - y loses every bit to rounding y. Must match deepfuse.ops.activations.NEEDS_PREACTIVATION.
__host__ __device__ __forceinline__ bool needs_preactivation(Activation act) {
  return act != Activation::kNone && act != Activation::kRelu && act != Activation::kLeakyRelu;
}

// d act / d z, given `saved` = z, except relu/leaky_relu, which get y = act(z).
__device__ __forceinline__ float activation_grad(float saved, Activation act) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  constexpr float kInvSqrt2Pi = 0.3989422804014327f;
  switch (act) {
    case Activation::kRelu:
      return saved > 0.0f ? 1.0f : 0.0f;
    case Activation::kLeakyRelu:
      return saved > 0.0f ? 1.0f : kLeakyReluSlope;
    case Activation::kGelu:
      return 0.5f * (1.0f + erff(saved * 0.7071067811865476f)) + saved * kInvSqrt2Pi * expf(-0.5f * saved * saved);
    case Activation::kGeluTanh: {
      const float z = saved;
      const float t = tanhf(kSqrt2OverPi * (z + 0.044715f * z * z * z));
      return 0.5f * (1.0f + t) + 0.5f * z * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * z * z);
    }
    case Activation::kSilu: {
      const float s = sigmoidf(saved);
      return s * (1.0f + saved * (1.0f - s));
    }
    case Activation::kSigmoid: {
      const float s = sigmoidf(saved);
      return s * (1.0f - s);
    }
    case Activation::kTanh: {
      const float t = tanhf(saved);
      return 1.0f - t * t;
    }
    default:
      return 1.0f;
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Fails with the CUDA error string when no usable device/driver is present; called before launches
// so that a machine without a GPU gets a clean exception instead of a silent no-op. A dry run needs no device.
inline void check_device_ready() {
  if (dry_run() != nullptr) return;
  int device = 0;
  DEEPFUSE_CUDA_CHECK(cudaGetDevice(&device));
}

// Per device, an attribute that never changes while the process runs (capability, SM count, shared memory limit),
// queried once: the launchers read them on every call, and a driver query per call is host time that a 5 us kernel
// cannot hide. Slots hold value + 1, so 0 means not yet known. Benign race: two threads store the same value.
inline int current_device() {
  int device = 0;
  DEEPFUSE_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

template <cudaDeviceAttr kAttribute>
int device_attribute() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> slots[kMaxDevices] = {};
  const int device = current_device();
  int value = 0;
  if (device < kMaxDevices && (value = slots[device].load(std::memory_order_relaxed)) != 0) return value - 1;
  DEEPFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttribute, device));
  if (device < kMaxDevices) slots[device].store(value + 1, std::memory_order_relaxed);
  return value;
}

// Compute capability of the current device, major * 10 + minor (90 on an H100/H200): the launchers pick kernels by it.
inline int device_capability() {
  if (const DryRun* dry = dry_run()) return dry->capability;
  return device_attribute<cudaDevAttrComputeCapabilityMajor>() * 10 +
         device_attribute<cudaDevAttrComputeCapabilityMinor>();
}

// Streaming multiprocessors of the current device (132 on an H200): persistent grids are sized by it.
inline int multiprocessor_count() {
  if (const DryRun* dry = dry_run()) return dry->sms;
  return device_attribute<cudaDevAttrMultiProcessorCount>();
}

// Dynamic shared memory per block that the current device allows with the opt-in (227 KiB on sm_90).
inline int smem_optin_bytes() {
  if (const DryRun* dry = dry_run()) return dry->smem_optin;
  return device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>();
}

// Dynamic shared memory above 48 KiB needs this opt-in, per kernel (and before occupancy queries).
template <typename Params>
void set_max_dynamic_smem(void (*kernel)(Params), size_t bytes) {
  if (DryRun* dry = dry_run()) {
    dry->opt_in(reinterpret_cast<const void*>(kernel), bytes);
    return;
  }
  DEEPFUSE_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// In a dry run, records the launch and returns true: the caller then skips it. Otherwise returns false.
template <typename Params>
bool dry_launch(void (*kernel)(Params), dim3 grid, dim3 block, size_t smem, bool cooperative) {
  DryRun* dry = dry_run();
  if (dry == nullptr) return false;
  const void* fn = reinterpret_cast<const void*>(kernel);
  dry->launches.push_back(
      DryLaunch{kernel_label(fn), {grid.x, grid.y, grid.z}, block.x * block.y * block.z, smem, dry->opt_in_of(fn),
                cooperative});
  return true;
}

}  // namespace deepfuse
