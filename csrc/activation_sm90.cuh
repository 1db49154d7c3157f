// deepfuse's activation as a CUTLASS 3.x epilogue compute functor, shared by the sm_90a kernels (gemm_sm90.cu,
// linear_act's forward; conv2d_act_sm90.cu): the activation is a run-time argument of the epilogue, not a template
// parameter, which keeps each build to one instantiation per dtype.
#pragma once

#include <cutlass/array.h>
#include <cutlass/cutlass.h>

#include "common.cuh"

namespace deepfuse {

namespace sm90 {

// deepfuse's activation by its code (common.cuh's apply_activation, so both paths compute the same formulas), as
// a CUTLASS epilogue compute functor: Sm90Compute passes Arguments through from the host. The switch sits outside
// the loop over the fragment.
template <typename T>
struct ActivationByCode {
  struct Arguments {
    int code = 0;
  };
  __device__ float operator()(float z, Arguments const& args) const {
    return apply_activation(z, static_cast<Activation>(args.code));
  }
};

template <int N>
struct ActivationByCode<cutlass::Array<float, N>> {
  using Arguments = typename ActivationByCode<float>::Arguments;

  template <Activation kAct>
  __device__ static cutlass::Array<float, N> map(cutlass::Array<float, N> const& z) {
    cutlass::Array<float, N> out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) out[i] = apply_activation(z[i], kAct);
    return out;
  }

  __device__ cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& z, Arguments const& args) const {
    switch (static_cast<Activation>(args.code)) {
      case Activation::kRelu:
        return map<Activation::kRelu>(z);
      case Activation::kLeakyRelu:
        return map<Activation::kLeakyRelu>(z);
      case Activation::kGelu:
        return map<Activation::kGelu>(z);
      case Activation::kGeluTanh:
        return map<Activation::kGeluTanh>(z);
      case Activation::kSilu:
        return map<Activation::kSilu>(z);
      case Activation::kSigmoid:
        return map<Activation::kSigmoid>(z);
      case Activation::kTanh:
        return map<Activation::kTanh>(z);
      default:
        return z;
    }
  }
};

}  // namespace sm90

}  // namespace deepfuse
