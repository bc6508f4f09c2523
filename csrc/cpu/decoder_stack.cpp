// DecoderStack: every decoder layer of models/fast_llama.py's forward for a step of few rows, in one C++ call.
//
// Per layer, the residual stream h [M, d] (M = B q rows), positions' cos/sin [B, q, D], cache slots [start, T):
//   n = rms_norm_1(h);  [Q | K | V] = n W_qkv^T (+ b);  Q, K <- Q cos + rot(Q) sin, K cos + rot(K) sin
//   cache[start:T] <- K, V;  A = attention(Q, cache K[0:T], cache V[0:T], mask)  (GQA: g query heads per kv head)
//   h <- h + A W_o^T (+ b_o);  n = rms_norm_2(h);  [G | U] = n W_gu^T;  h <- h + (silu(G) * U) W_down^T
// and the final norm. rot(x) = [-x2, x1] for the halves x1, x2 of x.
//
// Why: the Python loop spends ~120 us per layer dispatching ~40 small torch ops (views, rope, adds, silu) around
// the projections, and torch's attention costs 35 - 120 us per layer on so few rows. Here the projections, norms
// and attention are the small_linear / rms_norm / decode_attention kernels; rope, the cache write, the residual
// adds and silu(G) * U are loops over the few rows, and silu stays torch's kernel, called from C++. Every op but
// the projections (fp32 sums in another order than torch's matmul) and attention (probabilities kept in fp32,
// where torch's rounds them to bf16) is computed as the Python loop computes it, each result rounded to the model
// dtype T, so the hidden states agree with the loop's to rounding; tests/engine/test_decoder_stack.py checks that.
#include "decoder_stack.h"

#include <string>
#include <vector>

#include "bf16.h"
#include "common/checks.h"
#include "kernels.h"

namespace rgd {
namespace cpu {
namespace {

constexpr at::ScalarType kDtypes[] = {at::kFloat, at::kBFloat16};
constexpr const char* kOp = "rgd_engine._C.DecoderStack";

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// h[i] <- T(h[i] + y[i])
template <typename T>
void add_into(T* h, const T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) store(h + i, to_float(h[i]) + to_float(y[i]));
}

// out[i] <- T(s[i] * u[i]) for the rows of silu(G) s [M, I] and U (row stride ldu)
template <typename T>
void mul_rows(const T* s, const T* u, int64_t M, int64_t I, int64_t ldu, T* out) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < I; ++i) store(out + m * I + i, to_float(s[m * I + i]) * to_float(u[m * ldu + i]));
}

// qkv [B, q, H + 2 Hkv, D] -> qk [B, q, H + Hkv, D] = rope(Q | K) (T(T(x c) + T(rot(x) s)), as three torch ops);
// the rotated K and V into the cache kc / vc [B, Hkv, S, D] at slots start + t.
template <typename T>
void rope_and_cache(const T* qkv, const T* cos, const T* sin, int64_t B, int64_t nq, int64_t H, int64_t Hkv,
                    int64_t D, int64_t S, int64_t start, T* qk, T* kc, T* vc) {
  const int64_t half = D / 2, heads = H + 2 * Hkv;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < nq; ++t) {
      const T* c = cos + (b * nq + t) * D;
      const T* s = sin + (b * nq + t) * D;
      for (int64_t h = 0; h < heads; ++h) {
        const T* x = qkv + ((b * nq + t) * heads + h) * D;
        if (h >= H + Hkv) {  // V: copied to the cache as is
          T* dst = vc + ((b * Hkv + (h - H - Hkv)) * S + start + t) * D;
          for (int64_t i = 0; i < D; ++i) dst[i] = x[i];
          continue;
        }
        T* y = qk + ((b * nq + t) * (H + Hkv) + h) * D;
        for (int64_t i = 0; i < D; ++i) {
          const float rot = i < half ? -to_float(x[i + half]) : to_float(x[i - half]);
          const float a = round_as(to_float(x[i]) * to_float(c[i]), x);
          const float r = round_as(rot * to_float(s[i]), x);
          store(y + i, a + r);
        }
        if (h >= H) {  // K: its rotated values into the cache too
          T* dst = kc + ((b * Hkv + (h - H)) * S + start + t) * D;
          for (int64_t i = 0; i < D; ++i) dst[i] = y[i];
        }
      }
    }
}

}  // namespace

class DecoderStack {
 public:
  // layers: per layer [w_qkv [Q, d], b_qkv [Q] or None, w_o [d, H D], b_o [d] or None, w_gate_up [2 I, d],
  // w_down [d, I], norm1 [d], norm2 [d]] (Q = (H + 2 Hkv) D), all of one dtype, contiguous, on the CPU.
  DecoderStack(std::vector<std::vector<c10::optional<at::Tensor>>> layers, at::Tensor final_norm, int64_t n_heads,
               int64_t n_kv, int64_t head_dim, double eps)
      : final_norm_(std::move(final_norm)), H_(n_heads), Hkv_(n_kv), D_(head_dim), eps_(static_cast<float>(eps)) {
    const auto a = checks::OpArgs::cpu(kOp, kDtypes);
    TORCH_CHECK(!layers.empty(), kOp, ": no layers");
    TORCH_CHECK(H_ > 0 && Hkv_ > 0 && H_ % Hkv_ == 0, kOp, ": n_heads (", H_, ") must be a positive multiple of n_kv (",
                Hkv_, ")");
    TORCH_CHECK(D_ > 0 && D_ % 2 == 0, kOp, ": head_dim must be positive and even, got ", D_);
    a.matrix(final_norm_, "final_norm");
    dtype_ = final_norm_.scalar_type();
    d_ = final_norm_.size(0);
    TORCH_CHECK(small_linear_is_native(dtype_ == at::kBFloat16), kOp, ": this CPU cannot run small_linear in ",
                checks::dtype_name(dtype_));
    for (size_t i = 0; i < layers.size(); ++i) {
      const auto& l = layers[i];
      TORCH_CHECK(l.size() == 8, kOp, ": layer ", i, " has ", l.size(), " tensors, expected 8");
      const std::string p = "layer " + std::to_string(i) + " ";
      auto need = [&](int j, const char* name, at::IntArrayRef shape) {
        TORCH_CHECK(l[j].has_value(), kOp, ": ", p, name, " is missing");
        a.tensor(*l[j], (p + name).c_str(), dtype_, shape);
        return *l[j];
      };
      Layer w;
      const int64_t Q = (H_ + 2 * Hkv_) * D_;
      w.w_qkv = need(0, "w_qkv", {Q, d_});
      if (l[1]) w.b_qkv = need(1, "b_qkv", {Q});
      w.w_o = need(2, "w_o", {d_, H_ * D_});
      if (l[3]) w.b_o = need(3, "b_o", {d_});
      TORCH_CHECK(l[4].has_value() && l[4]->dim() == 2 && l[4]->size(0) % 2 == 0, kOp, ": ", p,
                  "w_gate_up must be [2 I, d]");
      if (i == 0) I_ = l[4]->size(0) / 2;
      w.w_gate_up = need(4, "w_gate_up", {2 * I_, d_});
      w.w_down = need(5, "w_down", {d_, I_});
      w.norm1 = need(6, "norm1", {d_});
      w.norm2 = need(7, "norm2", {d_});
      layers_.push_back(std::move(w));
    }
  }

  // x [B, q, d] embeddings, cos / sin [B, q, D], mask [B, 1, q, T] additive over slots [0, T = start + q),
  // kv [L, 2, B, Hkv, S, D] the cache (new K/V written at slots [start, T)) -> hidden [B, q, d] after the final norm.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                     const at::Tensor& kv, int64_t start) const {
    const auto a = checks::OpArgs::cpu(kOp, kDtypes);
    a.dims(x, "x", 3, "[B, q, d]");
    const int64_t B = x.size(0), nq = x.size(1), L = static_cast<int64_t>(layers_.size());
    a.tensor(x, "x", dtype_, {B, nq, d_});
    a.tensor(cos, "cos", dtype_, {B, nq, D_});
    a.tensor(sin, "sin", dtype_, {B, nq, D_});
    a.dims(kv, "kv", 6, "[L, 2, B, Hkv, S, D]");
    const int64_t S = kv.size(4);
    a.tensor(kv, "kv", dtype_, {L, 2, B, Hkv_, S, D_});
    TORCH_CHECK(start >= 0 && start + nq <= S, kOp, ": slots [", start, ", ", start + nq, ") do not fit the cache's ",
                S, " slots");
    a.dims(mask, "mask", 4, "[B, 1, q, T]");
    TORCH_CHECK(mask.size(0) == B && mask.size(1) == 1 && mask.size(2) == nq && mask.size(3) == start + nq, kOp,
                ": mask must have shape [", B, ", 1, ", nq, ", ", start + nq, "], got ", mask.sizes());
    TORCH_CHECK(mask.device().is_cpu() && mask.scalar_type() == dtype_, kOp, ": mask must be a CPU ",
                checks::dtype_name(dtype_), " tensor, got ", checks::dtype_name(mask.scalar_type()), " on ",
                mask.device());
    if (dtype_ == at::kBFloat16) return run<BFloat16>(x, cos, sin, mask, kv, start);
    return run<float>(x, cos, sin, mask, kv, start);
  }

 private:
  struct Layer {
    at::Tensor w_qkv, b_qkv, w_o, b_o, w_gate_up, w_down, norm1, norm2;  // b_*: undefined when absent
  };

  // T: the storage type of the model dtype (float or BFloat16)
  template <typename T>
  at::Tensor run(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                 const at::Tensor& kv, int64_t start) const {
    const int64_t B = x.size(0), nq = x.size(1), M = B * nq, H = H_, Hkv = Hkv_, D = D_;
    const int64_t end = start + nq, slots = kv.size(4), Q = (H + 2 * Hkv) * D;
    const auto opt = x.options();
    at::Tensor h = x.reshape({M, d_}).clone();  // the residual stream, updated in place
    at::Tensor n = at::empty({M, d_}, opt), qkv = at::empty({M, Q}, opt), o = at::empty({M, d_}, opt);
    at::Tensor qk = at::empty({B, nq, H + Hkv, D}, opt), gu = at::empty({M, 2 * I_}, opt);
    at::Tensor act = at::empty({M, I_}, opt), silu = at::empty({M, I_}, opt), out = at::empty({B, nq, d_}, opt);
    at::Tensor flat = at::empty({M, H * D}, opt);  // attention output [B, nq, H, D]
    const at::Tensor m = mask.contiguous();
    const AttentionShape shape{B, nq, H, Hkv, D, slots, end, nq * (H + Hkv) * D, (H + Hkv) * D};
    auto linear = [&](const at::Tensor& in, const at::Tensor& w, const at::Tensor& b, at::Tensor& y) {
      small_linear(ptr<const T>(in), ptr<const T>(w), b.defined() ? ptr<const T>(b) : nullptr, M, w.size(0),
                   w.size(1), ptr<T>(y));
    };
    auto norm = [&](const at::Tensor& in, const at::Tensor& w, at::Tensor& y) {
      rms_norm(ptr<const T>(in), ptr<const T>(w), M, d_, eps_, ptr<T>(y));
    };
    for (int64_t i = 0; i < static_cast<int64_t>(layers_.size()); ++i) {
      const Layer& w = layers_[i];
      const at::Tensor kc = kv[i][0], vc = kv[i][1];  // [B, Hkv, S, D]
      norm(h, w.norm1, n);
      linear(n, w.w_qkv, w.b_qkv, qkv);
      rope_and_cache(ptr<const T>(qkv), ptr<const T>(cos), ptr<const T>(sin), B, nq, H, Hkv, D, slots, start,
                     ptr<T>(qk), ptr<T>(kc), ptr<T>(vc));
      decode_attention(ptr<const T>(qk), ptr<const T>(kc), ptr<const T>(vc), ptr<const T>(m), shape, ptr<T>(flat));
      linear(flat, w.w_o, w.b_o, o);
      add_into(ptr<T>(h), ptr<const T>(o), M * d_);
      norm(h, w.norm2, n);
      linear(n, w.w_gate_up, at::Tensor(), gu);
      at::silu_out(silu, gu.narrow(1, 0, I_));
      mul_rows(ptr<const T>(silu), ptr<const T>(gu) + I_, M, I_, 2 * I_, ptr<T>(act));
      linear(act, w.w_down, at::Tensor(), o);
      add_into(ptr<T>(h), ptr<const T>(o), M * d_);
    }
    norm(h, final_norm_, out);
    return out;
  }

  std::vector<Layer> layers_;
  at::Tensor final_norm_;
  at::ScalarType dtype_;
  int64_t H_, Hkv_, D_, d_ = 0, I_ = 0;
  float eps_;
};

void bind_decoder_stack(pybind11::module& m) {
  pybind11::class_<DecoderStack>(m, "DecoderStack",
                                 "the fast forward's decoder layers and final norm for few-row steps, in one call")
      .def(pybind11::init<std::vector<std::vector<c10::optional<at::Tensor>>>, at::Tensor, int64_t, int64_t,
                          int64_t, double>(),
           pybind11::arg("layers"), pybind11::arg("final_norm"), pybind11::arg("n_heads"), pybind11::arg("n_kv"),
           pybind11::arg("head_dim"), pybind11::arg("eps"))
      .def("forward", &DecoderStack::forward, pybind11::arg("x"), pybind11::arg("cos"), pybind11::arg("sin"),
           pybind11::arg("mask"), pybind11::arg("kv"), pybind11::arg("start"),
           pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace cpu
}  // namespace rgd
