// deepfuse._C: the one pybind11 module. It includes no torch headers: callers pass raw device
// pointers (as integers; 0 for "absent"), sizes, strides, a dtype code and the CUDA stream handle,
// so one build serves every torch version. The GIL is released around launches; CUDA errors
// surface as RuntimeError with the CUDA error string, bad arguments as ValueError.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <string>

#include "attention.h"
#include "conv2d_act.h"
#include "linear_act.h"
#include "lstm.h"

namespace py = pybind11;

namespace {

const void* as_ptr(std::uintptr_t address) { return reinterpret_cast<const void*>(address); }
void* as_mut_ptr(std::uintptr_t address) { return reinterpret_cast<void*>(address); }
cudaStream_t as_stream(std::uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

void require_positive_or_zero(const char* name, int64_t value) {
  if (value < 0) throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(value));
}

void require_pointer(const char* name, std::uintptr_t address) {
  if (address == 0) throw py::value_error(std::string(name) + " must be a device pointer, got 0");
}

// (ok, message): whether a CUDA device is usable, and the CUDA error string when not.
py::tuple device_status() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls report their own
    return py::make_tuple(false, std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err));
  }
  if (count == 0) return py::make_tuple(false, std::string("no CUDA device"));
  return py::make_tuple(true, std::string());
}

void linear_act_fwd(std::uintptr_t x, int64_t x_stride_m, int64_t x_stride_k, std::uintptr_t weight,
                    int64_t w_stride_n, int64_t w_stride_k, std::uintptr_t bias, std::uintptr_t y,
                    std::uintptr_t preact, int64_t M, int64_t N, int64_t K, int dtype, int activation,
                    std::uintptr_t stream) {
  require_positive_or_zero("M", M);
  require_positive_or_zero("N", N);
  require_positive_or_zero("K", K);
  if (M > 0 && N > 0) {
    require_pointer("y", y);
    if (K > 0) {
      require_pointer("x", x);
      require_pointer("weight", weight);
    }
  }
  const deepfuse::LinearActFwdArgs args{as_ptr(x), x_stride_m,  x_stride_k,    as_ptr(weight), w_stride_n,
                                        w_stride_k, as_ptr(bias), as_mut_ptr(y), as_mut_ptr(preact), M,
                                        N,          K,            dtype,         activation};
  py::gil_scoped_release release;
  deepfuse::linear_act_fwd(args, as_stream(stream));
}

void linear_act_bwd(std::uintptr_t grad_y, std::uintptr_t saved, std::uintptr_t x, int64_t x_stride_m,
                    int64_t x_stride_k, std::uintptr_t weight, int64_t w_stride_n, int64_t w_stride_k,
                    std::uintptr_t grad_x, std::uintptr_t grad_weight, std::uintptr_t grad_bias, int64_t M, int64_t N,
                    int64_t K, int dtype, int activation, std::uintptr_t stream) {
  require_positive_or_zero("M", M);
  require_positive_or_zero("N", N);
  require_positive_or_zero("K", K);
  if (M > 0 && N > 0) {
    require_pointer("grad_y", grad_y);
    if (activation != 0) require_pointer("saved", saved);
    if (grad_x != 0 && K > 0) require_pointer("weight", weight);
    if (grad_weight != 0 && K > 0) require_pointer("x", x);
  }
  const deepfuse::LinearActBwdArgs args{as_ptr(grad_y),     as_ptr(saved),          as_ptr(x),
                                        x_stride_m,         x_stride_k,             as_ptr(weight),
                                        w_stride_n,         w_stride_k,             as_mut_ptr(grad_x),
                                        as_mut_ptr(grad_weight), as_mut_ptr(grad_bias), M,
                                        N,                  K,                      dtype,
                                        activation};
  py::gil_scoped_release release;
  deepfuse::linear_act_bwd(args, as_stream(stream));
}

using Shape16 = std::array<int64_t, 16>;
using Strides = std::array<int64_t, 4>;

deepfuse::ConvShape conv_shape(const Shape16& v) {
  for (int64_t value : v) require_positive_or_zero("conv shape entry", value);
  return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]};
}

deepfuse::Strides4 strides4(const Strides& v) { return {v[0], v[1], v[2], v[3]}; }

void conv2d_act_fwd(const Shape16& shape, std::uintptr_t x, const Strides& x_strides, std::uintptr_t weight,
                    const Strides& w_strides, std::uintptr_t bias, std::uintptr_t residual,
                    const Strides& residual_strides, std::uintptr_t y, std::uintptr_t preact, const Strides& y_strides,
                    int dtype, int activation, std::uintptr_t stream) {
  const deepfuse::ConvShape s = conv_shape(shape);
  if (s.batch * s.out_height * s.out_width > 0 && s.out_channels > 0) {
    require_pointer("y", y);
    require_pointer("x", x);
    require_pointer("weight", weight);
  }
  const deepfuse::Conv2dActFwdArgs args{s,         as_ptr(x),         strides4(x_strides), as_ptr(weight),
                                        strides4(w_strides), as_ptr(bias), as_ptr(residual),
                                        strides4(residual_strides), as_mut_ptr(y), as_mut_ptr(preact),
                                        strides4(y_strides), dtype, activation};
  py::gil_scoped_release release;
  deepfuse::conv2d_act_fwd(args, as_stream(stream));
}

void conv2d_act_bwd(const Shape16& shape, std::uintptr_t grad_y, std::uintptr_t saved, const Strides& grad_y_strides,
                    std::uintptr_t x, const Strides& x_strides, std::uintptr_t weight, const Strides& w_strides,
                    std::uintptr_t grad_x, const Strides& grad_x_strides, std::uintptr_t grad_weight,
                    std::uintptr_t grad_bias, int dtype, int activation, std::uintptr_t stream) {
  const deepfuse::ConvShape s = conv_shape(shape);
  if (s.batch * s.out_height * s.out_width > 0 && s.out_channels > 0) {
    require_pointer("grad_y", grad_y);
    if (activation != 0) require_pointer("saved", saved);
    require_pointer("weight", weight);
    require_pointer("x", x);
  }
  const deepfuse::Conv2dActBwdArgs args{s,
                                        as_ptr(grad_y),
                                        as_ptr(saved),
                                        strides4(grad_y_strides),
                                        as_ptr(x),
                                        strides4(x_strides),
                                        as_ptr(weight),
                                        strides4(w_strides),
                                        as_mut_ptr(grad_x),
                                        strides4(grad_x_strides),
                                        as_mut_ptr(grad_weight),
                                        as_mut_ptr(grad_bias),
                                        dtype,
                                        activation};
  py::gil_scoped_release release;
  deepfuse::conv2d_act_bwd(args, as_stream(stream));
}

using Sizes6 = std::array<int64_t, 6>;
using Strides2 = std::array<int64_t, 2>;

deepfuse::AttentionSizes attention_sizes(const Sizes6& v) {
  for (int64_t value : v) require_positive_or_zero("attention size", value);
  return {v[0], v[1], v[2], v[3], v[4], v[5]};
}

deepfuse::AttentionStrides attention_strides(const Strides& v) { return {v[0], v[1], v[2], v[3]}; }

// Varlen's int32 cumulative sequence lengths on the device: both given, or both 0 (padded layout).
void require_varlen(std::uintptr_t cu_seqlens_q, std::uintptr_t cu_seqlens_k, int64_t total_q) {
  if ((cu_seqlens_q == 0) != (cu_seqlens_k == 0)) {
    throw std::invalid_argument("attention: pass both cu_seqlens_q and cu_seqlens_k (varlen) or neither (padded)");
  }
  require_positive_or_zero("total_q", total_q);
}

const int32_t* as_cu_seqlens(std::uintptr_t address) { return reinterpret_cast<const int32_t*>(address); }

void attention_fwd(std::uintptr_t q, const Strides& q_strides, std::uintptr_t k, const Strides& k_strides,
                   std::uintptr_t v, const Strides& v_strides, std::uintptr_t key_padding_mask,
                   const Strides2& mask_strides, std::uintptr_t out, std::uintptr_t lse, const Sizes6& sizes,
                   double scale, bool causal, int dtype, std::uintptr_t stream, std::uintptr_t cu_seqlens_q,
                   std::uintptr_t cu_seqlens_k, int64_t total_q) {
  const deepfuse::AttentionSizes s = attention_sizes(sizes);
  require_varlen(cu_seqlens_q, cu_seqlens_k, total_q);
  if (s.batch * s.heads_q * s.seqlen_q * s.head_dim > 0) {
    require_pointer("q", q);
    require_pointer("out", out);
    require_pointer("lse", lse);
    if (s.seqlen_k > 0) {
      require_pointer("k", k);
      require_pointer("v", v);
    }
  }
  const deepfuse::AttentionFwdArgs args{s,
                                        as_ptr(q),
                                        attention_strides(q_strides),
                                        as_ptr(k),
                                        attention_strides(k_strides),
                                        as_ptr(v),
                                        attention_strides(v_strides),
                                        as_ptr(key_padding_mask),
                                        mask_strides[0],
                                        mask_strides[1],
                                        as_mut_ptr(out),
                                        as_mut_ptr(lse),
                                        scale,
                                        causal,
                                        dtype,
                                        as_cu_seqlens(cu_seqlens_q),
                                        as_cu_seqlens(cu_seqlens_k),
                                        total_q};
  py::gil_scoped_release release;
  deepfuse::attention_fwd(args, as_stream(stream));
}

void attention_bwd(std::uintptr_t grad_out, const Strides& grad_out_strides, std::uintptr_t q,
                   const Strides& q_strides, std::uintptr_t k, const Strides& k_strides, std::uintptr_t v,
                   const Strides& v_strides, std::uintptr_t key_padding_mask, const Strides2& mask_strides,
                   std::uintptr_t lse, std::uintptr_t delta, std::uintptr_t grad_q, std::uintptr_t grad_k,
                   std::uintptr_t grad_v, const Sizes6& sizes, double scale, bool causal, int dtype,
                   std::uintptr_t stream, std::uintptr_t cu_seqlens_q, std::uintptr_t cu_seqlens_k, int64_t total_q) {
  const deepfuse::AttentionSizes s = attention_sizes(sizes);
  require_varlen(cu_seqlens_q, cu_seqlens_k, total_q);
  const bool any_query = s.batch * s.heads_q * s.seqlen_q * s.head_dim > 0;
  const bool any_key = s.batch * s.heads_q * s.seqlen_k * s.head_dim > 0;
  if (any_query) {
    require_pointer("grad_out", grad_out);
    require_pointer("q", q);
    require_pointer("lse", lse);
    require_pointer("delta", delta);
    require_pointer("grad_q", grad_q);
  }
  if (any_key) {
    require_pointer("k", k);
    require_pointer("v", v);
    require_pointer("grad_k", grad_k);
    require_pointer("grad_v", grad_v);
  }
  const deepfuse::AttentionBwdArgs args{s,
                                        as_ptr(grad_out),
                                        attention_strides(grad_out_strides),
                                        as_ptr(q),
                                        attention_strides(q_strides),
                                        as_ptr(k),
                                        attention_strides(k_strides),
                                        as_ptr(v),
                                        attention_strides(v_strides),
                                        as_ptr(key_padding_mask),
                                        mask_strides[0],
                                        mask_strides[1],
                                        as_ptr(lse),
                                        as_ptr(delta),
                                        as_mut_ptr(grad_q),
                                        as_mut_ptr(grad_k),
                                        as_mut_ptr(grad_v),
                                        scale,
                                        causal,
                                        dtype,
                                        as_cu_seqlens(cu_seqlens_q),
                                        as_cu_seqlens(cu_seqlens_k),
                                        total_q};
  py::gil_scoped_release release;
  deepfuse::attention_bwd(args, as_stream(stream));
}

// LSTM: lengths int32 (B,) on the device or 0; fp32 scratch buffers from the caller.
const int32_t* as_lengths(std::uintptr_t address) { return reinterpret_cast<const int32_t*>(address); }
float* as_floats(std::uintptr_t address) { return reinterpret_cast<float*>(address); }

void lstm_cell_fwd(std::uintptr_t x, int64_t x_stride_b, int64_t x_stride_k, std::uintptr_t h, int64_t h_stride_b,
                   int64_t h_stride_k, std::uintptr_t c, int64_t c_stride_b, int64_t c_stride_j, std::uintptr_t w_ih,
                   int64_t w_ih_stride_r, int64_t w_ih_stride_k, std::uintptr_t w_hh, int64_t w_hh_stride_r,
                   int64_t w_hh_stride_k, std::uintptr_t bias, std::uintptr_t h_next, std::uintptr_t c_next,
                   std::uintptr_t gates, int64_t B, int64_t IN, int64_t H, int dtype, std::uintptr_t stream) {
  require_positive_or_zero("B", B);
  require_positive_or_zero("IN", IN);
  require_positive_or_zero("H", H);
  if (B > 0 && H > 0) {
    require_pointer("h", h);
    require_pointer("c", c);
    require_pointer("w_hh", w_hh);
    require_pointer("h_next", h_next);
    require_pointer("c_next", c_next);
    if (IN > 0) {
      require_pointer("x", x);
      require_pointer("w_ih", w_ih);
    }
  }
  const deepfuse::LstmCellFwdArgs args{as_ptr(x), x_stride_b, x_stride_k, as_ptr(h), h_stride_b, h_stride_k,
                                       as_ptr(c), c_stride_b, c_stride_j, as_ptr(w_ih), w_ih_stride_r, w_ih_stride_k,
                                       as_ptr(w_hh), w_hh_stride_r, w_hh_stride_k, as_ptr(bias), as_mut_ptr(h_next),
                                       as_mut_ptr(c_next), as_mut_ptr(gates), B, IN, H, dtype};
  py::gil_scoped_release release;
  deepfuse::lstm_cell_fwd(args, as_stream(stream));
}

void lstm_cell_grad_gates(std::uintptr_t grad_h, std::uintptr_t grad_c, std::uintptr_t c, std::uintptr_t c_next,
                          std::uintptr_t gates, std::uintptr_t dgates, std::uintptr_t dc_prev, int64_t B, int64_t H,
                          int dtype, std::uintptr_t stream) {
  require_positive_or_zero("B", B);
  require_positive_or_zero("H", H);
  if (B > 0 && H > 0) {
    require_pointer("grad_h", grad_h);
    require_pointer("c", c);
    require_pointer("c_next", c_next);
    require_pointer("gates", gates);
    require_pointer("dgates", dgates);
    require_pointer("dc_prev", dc_prev);
  }
  const deepfuse::LstmCellGradGatesArgs args{as_ptr(grad_h), as_ptr(grad_c), as_ptr(c), as_ptr(c_next),
                                             as_ptr(gates), as_mut_ptr(dgates), as_mut_ptr(dc_prev), B, H, dtype};
  py::gil_scoped_release release;
  deepfuse::lstm_cell_grad_gates(args, as_stream(stream));
}

void lstm_seq_fwd(std::uintptr_t xp, std::uintptr_t w_hh, int64_t w_stride_r, int64_t w_stride_k,
                  std::uintptr_t lengths, std::uintptr_t hs, std::uintptr_t c0, std::uintptr_t cs,
                  std::uintptr_t gates, std::uintptr_t c_n, std::uintptr_t c_work, int64_t T, int64_t B, int64_t H,
                  int dtype, int path, std::uintptr_t stream) {
  require_positive_or_zero("T", T);
  require_positive_or_zero("B", B);
  require_positive_or_zero("H", H);
  if (T > 0 && B > 0 && H > 0) {
    require_pointer("xp", xp);
    require_pointer("w_hh", w_hh);
    require_pointer("hs", hs);
    require_pointer("c0", c0);
    require_pointer("c_n", c_n);
    require_pointer("c_work", c_work);
  }
  const deepfuse::LstmSeqFwdArgs args{as_ptr(xp), as_ptr(w_hh), w_stride_r, w_stride_k, as_lengths(lengths),
                                      as_mut_ptr(hs), as_ptr(c0), as_mut_ptr(cs), as_mut_ptr(gates),
                                      as_mut_ptr(c_n), as_floats(c_work), T, B, H, dtype, path};
  py::gil_scoped_release release;
  deepfuse::lstm_seq_fwd(args, as_stream(stream));
}

void lstm_seq_bwd(std::uintptr_t dhs, std::uintptr_t dcs, std::uintptr_t cs, std::uintptr_t gates,
                  std::uintptr_t w_hh, int64_t w_stride_r, int64_t w_stride_k, std::uintptr_t lengths,
                  std::uintptr_t dgates, std::uintptr_t dh0, std::uintptr_t dc0, std::uintptr_t work, int64_t T,
                  int64_t B, int64_t H, int dtype, int path, std::uintptr_t stream) {
  require_positive_or_zero("T", T);
  require_positive_or_zero("B", B);
  require_positive_or_zero("H", H);
  if (T > 0 && B > 0 && H > 0) {
    require_pointer("dhs", dhs);
    require_pointer("dcs", dcs);
    require_pointer("cs", cs);
    require_pointer("gates", gates);
    require_pointer("w_hh", w_hh);
    require_pointer("dgates", dgates);
    require_pointer("dh0", dh0);
    require_pointer("dc0", dc0);
    require_pointer("work", work);
  }
  const deepfuse::LstmSeqBwdArgs args{as_ptr(dhs), as_ptr(dcs), as_ptr(cs), as_ptr(gates), as_ptr(w_hh), w_stride_r,
                                      w_stride_k, as_lengths(lengths), as_mut_ptr(dgates), as_mut_ptr(dh0),
                                      as_mut_ptr(dc0), as_floats(work), T, B, H, dtype, path};
  py::gil_scoped_release release;
  deepfuse::lstm_seq_bwd(args, as_stream(stream));
}

std::string lstm_seq_path(int64_t H, int dtype) {
  require_positive_or_zero("H", H);
  py::gil_scoped_release release;
  return deepfuse::lstm_seq_path(H, dtype) == deepfuse::LstmPath::kPersistent ? "persistent" : "per_step";
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "deepfuse CUDA C++ kernels (raw pointers in; no torch headers)";
  // std::invalid_argument -> ValueError, std::runtime_error (CUDA errors) -> RuntimeError: pybind11's defaults.
  m.attr("DTYPE_CODES") = py::dict(py::arg("float32") = 0, py::arg("float16") = 1, py::arg("bfloat16") = 2);
  m.attr("ACTIVATION_CODES") =
      py::dict(py::arg("none") = 0, py::arg("relu") = 1, py::arg("leaky_relu") = 2, py::arg("gelu") = 3,
               py::arg("gelu_tanh") = 4, py::arg("silu") = 5, py::arg("sigmoid") = 6, py::arg("tanh") = 7);
  m.attr("CUDA_RUNTIME_VERSION") = CUDART_VERSION;

  m.def("device_status", &device_status, "(ok, message): whether a CUDA device is usable, else the CUDA error");
  m.def("linear_act_fwd", &linear_act_fwd, "y = act(x @ W^T + b); optionally also writes the pre-activation",
        py::arg("x"), py::arg("x_stride_m"), py::arg("x_stride_k"), py::arg("weight"), py::arg("w_stride_n"),
        py::arg("w_stride_k"), py::arg("bias"), py::arg("y"), py::arg("preact"), py::arg("M"), py::arg("N"),
        py::arg("K"), py::arg("dtype"), py::arg("activation"), py::arg("stream"));
  m.def("linear_act_bwd", &linear_act_bwd, "dx, dW, db of linear_act with the activation derivative fused",
        py::arg("grad_y"), py::arg("saved"), py::arg("x"), py::arg("x_stride_m"), py::arg("x_stride_k"),
        py::arg("weight"), py::arg("w_stride_n"), py::arg("w_stride_k"), py::arg("grad_x"), py::arg("grad_weight"),
        py::arg("grad_bias"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("dtype"), py::arg("activation"),
        py::arg("stream"));
  m.def("conv2d_act_fwd", &conv2d_act_fwd,
        "y = act(conv2d(x, W) + b + residual). shape: (batch, C, H, W, Cout, OH, OW, KH, KW, SH, SW, pad_top, "
        "pad_left, DH, DW, groups); strides are logical NCHW strides (W: Cout, Cin/groups, KH, KW)",
        py::arg("shape"), py::arg("x"), py::arg("x_strides"), py::arg("weight"), py::arg("w_strides"),
        py::arg("bias"), py::arg("residual"), py::arg("residual_strides"), py::arg("y"), py::arg("preact"),
        py::arg("y_strides"), py::arg("dtype"), py::arg("activation"), py::arg("stream"));
  m.def("conv2d_act_bwd", &conv2d_act_bwd,
        "dx, dW, db of conv2d_act with the activation derivative fused; grad_weight is contiguous",
        py::arg("shape"), py::arg("grad_y"), py::arg("saved"), py::arg("grad_y_strides"), py::arg("x"),
        py::arg("x_strides"), py::arg("weight"), py::arg("w_strides"), py::arg("grad_x"), py::arg("grad_x_strides"),
        py::arg("grad_weight"), py::arg("grad_bias"), py::arg("dtype"), py::arg("activation"), py::arg("stream"));
  m.def("attention_fwd", &attention_fwd,
        "flash attention forward: out (B, Hq, Nq, D) contiguous and lse (B, Hq, Nq) fp32 base 2 (+inf: no key). "
        "sizes: (B, Hq, Hkv, Nq, Nk, D); strides in (batch, head, token, dim) order; key_padding_mask uint8 "
        "(B, Nk), nonzero = ignore, or 0. Varlen: cu_seqlens_q/k int32 device pointers (0 = padded); q (Tq, Hq, D), "
        "k, v (Tk, Hkv, D) as (1, H, T, D) strides, sizes (num_seqs, Hq, Hkv, max_seqlen_q, max_seqlen_k, D), out "
        "(Tq, Hq, D), lse (Hq, total_q)",
        py::arg("q"), py::arg("q_strides"), py::arg("k"), py::arg("k_strides"), py::arg("v"), py::arg("v_strides"),
        py::arg("key_padding_mask"), py::arg("mask_strides"), py::arg("out"), py::arg("lse"), py::arg("sizes"),
        py::arg("scale"), py::arg("causal"), py::arg("dtype"), py::arg("stream"), py::arg("cu_seqlens_q") = 0,
        py::arg("cu_seqlens_k") = 0, py::arg("total_q") = 0);
  m.def("attention_bwd", &attention_bwd,
        "flash attention backward: grad_q (B, Hq, Nq, D) in q's dtype; grad_k, grad_v fp32 (B, Hq, Nk, D) per "
        "query head (sum each GQA group); delta = rowsum(dO * O) fp32 (B, Hq, Nq). Varlen as attention_fwd: "
        "grad_q (Tq, Hq, D), grad_k, grad_v fp32 (Tk, Hq, D), lse and delta (Hq, total_q)",
        py::arg("grad_out"), py::arg("grad_out_strides"), py::arg("q"), py::arg("q_strides"), py::arg("k"),
        py::arg("k_strides"), py::arg("v"), py::arg("v_strides"), py::arg("key_padding_mask"),
        py::arg("mask_strides"), py::arg("lse"), py::arg("delta"), py::arg("grad_q"), py::arg("grad_k"),
        py::arg("grad_v"), py::arg("sizes"), py::arg("scale"), py::arg("causal"), py::arg("dtype"),
        py::arg("stream"), py::arg("cu_seqlens_q") = 0, py::arg("cu_seqlens_k") = 0, py::arg("total_q") = 0);
  m.def("lstm_cell_fwd", &lstm_cell_fwd,
        "one fused LSTM step (gate order i, f, g, o): h_next, c_next (B, H) contiguous and, when gates != 0, the "
        "activated gates (B, 4H). x (B, IN), h, c (B, H), w_ih (4H, IN), w_hh (4H, H) with any strides; bias "
        "(4H,) contiguous = b_ih + b_hh, or 0",
        py::arg("x"), py::arg("x_stride_b"), py::arg("x_stride_k"), py::arg("h"), py::arg("h_stride_b"),
        py::arg("h_stride_k"), py::arg("c"), py::arg("c_stride_b"), py::arg("c_stride_j"), py::arg("w_ih"),
        py::arg("w_ih_stride_r"), py::arg("w_ih_stride_k"), py::arg("w_hh"), py::arg("w_hh_stride_r"),
        py::arg("w_hh_stride_k"), py::arg("bias"), py::arg("h_next"), py::arg("c_next"), py::arg("gates"),
        py::arg("B"), py::arg("IN"), py::arg("H"), py::arg("dtype"), py::arg("stream"));
  m.def("lstm_cell_grad_gates", &lstm_cell_grad_gates,
        "pre-activation gate gradients dgates (B, 4H) and dc_prev (B, H) of one LSTM step; all contiguous, grad_c "
        "may be 0 (zero)",
        py::arg("grad_h"), py::arg("grad_c"), py::arg("c"), py::arg("c_next"), py::arg("gates"), py::arg("dgates"),
        py::arg("dc_prev"), py::arg("B"), py::arg("H"), py::arg("dtype"), py::arg("stream"));
  m.def("lstm_seq_fwd", &lstm_seq_fwd,
        "LSTM recurrence over T steps from xp (T, B, 4H) contiguous: hs (T + 1, B, H) contiguous with h0 already "
        "at index 0; c0 (B, H) contiguous; cs (T + 1, B, H) contiguous with c0 already at index 0, or 0 (not "
        "saved); gates (T, B, 4H) activated, or 0; c_n (B, H) contiguous: each row's cell state after its last "
        "valid step (c0 for length 0); lengths int32 (B,) or 0 (rows past their length store zeros); c_work fp32 "
        "(B, H) scratch; path: 0 auto, 1 persistent, 2 per step. T = 0 launches nothing (c_n = c0 is the caller's)",
        py::arg("xp"), py::arg("w_hh"), py::arg("w_stride_r"), py::arg("w_stride_k"), py::arg("lengths"),
        py::arg("hs"), py::arg("c0"), py::arg("cs"), py::arg("gates"), py::arg("c_n"), py::arg("c_work"),
        py::arg("T"), py::arg("B"), py::arg("H"), py::arg("dtype"), py::arg("path"), py::arg("stream"));
  m.def("lstm_seq_bwd", &lstm_seq_bwd,
        "BPTT of lstm_seq_fwd: dgates (T, B, 4H) pre-activation, dh0, dc0 (B, H); dhs, dcs, cs (T + 1, B, H) and "
        "gates (T, B, 4H) contiguous; work fp32 (2, B, H) scratch; path as lstm_seq_fwd. T = 0 launches nothing",
        py::arg("dhs"), py::arg("dcs"), py::arg("cs"), py::arg("gates"), py::arg("w_hh"), py::arg("w_stride_r"),
        py::arg("w_stride_k"), py::arg("lengths"), py::arg("dgates"), py::arg("dh0"), py::arg("dc0"), py::arg("work"),
        py::arg("T"), py::arg("B"), py::arg("H"), py::arg("dtype"), py::arg("path"), py::arg("stream"));
  m.def("lstm_seq_path", &lstm_seq_path,
        "\"persistent\" or \"per_step\": the path lstm_seq_fwd/bwd take with path 0 on the current device",
        py::arg("H"), py::arg("dtype"));
}
