// torch binding of the CPU kernels: module rgd_engine._C.
// Every function writes into caller-provided outputs (the Python wrapper allocates them), so tests can
// hand in poisoned buffers and check that every element is overwritten.
#include <torch/extension.h>

#include "common/checks.h"
#include "decoder_stack.h"
#include "kernels.h"

namespace {

namespace checks = rgd::checks;

// The matrix element types the CPU kernels read natively (the wrapper widens the others to float32).
constexpr at::ScalarType kMatrixDtypes[] = {at::kFloat, at::kBFloat16};

// hidden [B, d] f32 (or bf16 with a bf16 weight), weight [V, d] f32|bf16 -> logprob [B, k] f32, ids [B, k] i64,
// lse [B] f32 (outputs)
void lmhead_topk_out(const torch::Tensor& hidden, const torch::Tensor& weight, int64_t k, torch::Tensor logprob,
                     torch::Tensor ids, torch::Tensor lse) {
  const bool both_bf16 = hidden.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16;
  checks::lmhead_topk(checks::OpArgs::cpu("rgd_engine._C.lmhead_topk", kMatrixDtypes), hidden,
                      both_bf16 ? at::kBFloat16 : at::kFloat, weight, k, logprob, ids, lse);
  const int64_t B = hidden.size(0), d = hidden.size(1), V = weight.size(0);
  if (B == 0) return;
  pybind11::gil_scoped_release no_gil;
  if (both_bf16) {
    rgd::cpu::lmhead_topk_bf16(reinterpret_cast<const rgd::cpu::BFloat16*>(hidden.data_ptr()),
                               reinterpret_cast<const rgd::cpu::BFloat16*>(weight.data_ptr()), B, V, d, k,
                               logprob.data_ptr<float>(), ids.data_ptr<int64_t>(), lse.data_ptr<float>());
  } else if (weight.scalar_type() == at::kFloat) {
    rgd::cpu::lmhead_topk(hidden.data_ptr<float>(), weight.data_ptr<float>(), B, V, d, k, logprob.data_ptr<float>(),
                          ids.data_ptr<int64_t>(), lse.data_ptr<float>());
  } else {
    rgd::cpu::lmhead_topk(hidden.data_ptr<float>(), reinterpret_cast<const rgd::cpu::BFloat16*>(weight.data_ptr()),
                          B, V, d, k, logprob.data_ptr<float>(), ids.data_ptr<int64_t>(), lse.data_ptr<float>());
  }
}

// cand_hidden [B, k, d], bank_w [U, d] (same dtype, f32|bf16), bank_b [U] f32, slot [B] i64, logprob [B, k] f32,
// weight [B] f32, rand [B] f32 (read in sample mode) -> chosen [B] i64, scores [B, k] f32, rewards [B, k] f32
void score_select_out(const torch::Tensor& cand_hidden, const torch::Tensor& bank_w, const torch::Tensor& bank_b,
                      const torch::Tensor& slot, const torch::Tensor& logprob, const torch::Tensor& weight,
                      bool sample, double tau, const torch::Tensor& rand, torch::Tensor chosen, torch::Tensor scores,
                      torch::Tensor rewards) {
  const char* op = "rgd_engine._C.score_select";
  checks::score_select(checks::OpArgs::cpu(op, kMatrixDtypes), cand_hidden, bank_w, bank_b, slot, logprob, weight,
                       sample, tau, rand, chosen, scores, rewards);
  const int64_t B = cand_hidden.size(0), k = cand_hidden.size(1), d = cand_hidden.size(2), U = bank_w.size(0);
  if (B == 0) return;
  // The kernel indexes bank_w with these slots (-1: no head): an out-of-range slot would read outside the buffer.
  const int64_t lo = slot.min().item<int64_t>(), hi = slot.max().item<int64_t>();
  TORCH_CHECK(lo >= -1 && hi < U, op, ": slot values must be in [-1, ", U - 1, "], got [", lo, ", ", hi, "]");
  const float* rand_ptr = sample ? rand.data_ptr<float>() : nullptr;
  pybind11::gil_scoped_release no_gil;
  auto run = [&](auto* cand, auto* bw) {
    rgd::cpu::score_select(cand, bw, bank_b.data_ptr<float>(), slot.data_ptr<int64_t>(), logprob.data_ptr<float>(),
                           weight.data_ptr<float>(), B, k, d, sample, static_cast<float>(tau), rand_ptr,
                           chosen.data_ptr<int64_t>(), scores.data_ptr<float>(), rewards.data_ptr<float>());
  };
  if (cand_hidden.scalar_type() == at::kFloat) {
    run(cand_hidden.data_ptr<float>(), bank_w.data_ptr<float>());
  } else {
    run(reinterpret_cast<const rgd::cpu::BFloat16*>(cand_hidden.data_ptr()),
        reinterpret_cast<const rgd::cpu::BFloat16*>(bank_w.data_ptr()));
  }
}

// query [B, d] f32, emb [V, d] f32|bf16, cand_ids [B, k] i64 in [0, V), offset [B] f32, logprob [B, k] f32,
// weight [B] f32, ratio, rand [B] f32 (read in sample mode) -> chosen [B] i64, scores [B, k] f32, rewards [B, k] f32
void gather_score_select_out(const torch::Tensor& query, const torch::Tensor& emb, const torch::Tensor& cand_ids,
                             const torch::Tensor& offset, const torch::Tensor& logprob, const torch::Tensor& weight,
                             double ratio, bool sample, double tau, const torch::Tensor& rand, torch::Tensor chosen,
                             torch::Tensor scores, torch::Tensor rewards) {
  const char* op = "rgd_engine._C.gather_score_select";
  checks::gather_score_select(checks::OpArgs::cpu(op, kMatrixDtypes), query, emb, cand_ids, offset, logprob, weight,
                              sample, tau, rand, chosen, scores, rewards);
  const int64_t B = query.size(0), d = query.size(1), V = emb.size(0), k = cand_ids.size(1);
  if (B == 0) return;
  // The kernel indexes emb with these ids: an out-of-range id would read outside the buffer.
  const int64_t lo = cand_ids.min().item<int64_t>(), hi = cand_ids.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < V, op, ": cand_ids must be in [0, ", V - 1, "], got [", lo, ", ", hi, "]");
  const float* rand_ptr = sample ? rand.data_ptr<float>() : nullptr;
  pybind11::gil_scoped_release no_gil;
  auto run = [&](auto* e) {
    rgd::cpu::gather_score_select(query.data_ptr<float>(), e, cand_ids.data_ptr<int64_t>(), offset.data_ptr<float>(),
                                  logprob.data_ptr<float>(), weight.data_ptr<float>(), static_cast<float>(ratio), B, k,
                                  d, sample, static_cast<float>(tau), rand_ptr, chosen.data_ptr<int64_t>(),
                                  scores.data_ptr<float>(), rewards.data_ptr<float>());
  };
  if (emb.scalar_type() == at::kFloat) {
    run(emb.data_ptr<float>());
  } else {
    run(reinterpret_cast<const rgd::cpu::BFloat16*>(emb.data_ptr()));
  }
}

// The few-row kernels (small_linear, decode_attention) run only where small_linear_is_native(bf16).
void require_native(const checks::OpArgs& a, bool bf16) {
  TORCH_CHECK(rgd::cpu::small_linear_is_native(bf16), a.op(), ": this CPU lacks ",
              bf16 ? "AVX-512 with AVX512-BF16" : "AVX-512F/BW/VL", " (see small_linear_is_native)");
}

// x [M, K], weight [N, K] (f32|bf16, the same), bias [N] of that dtype or None -> out [M, N] of that dtype.
void small_linear_out(const torch::Tensor& x, const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias,
                      torch::Tensor out) {
  const auto a = checks::OpArgs::cpu("rgd_engine._C.small_linear", kMatrixDtypes);
  a.dims(x, "x", 2, "[M, K]");
  a.dims(weight, "weight", 2, "[N, K]");
  a.matrix(weight, "weight");
  const auto dtype = weight.scalar_type();
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  a.tensor(x, "x", dtype, {M, weight.size(1)});
  if (bias) a.tensor(*bias, "bias", dtype, {N});
  a.tensor(out, "out", dtype, {M, N});
  const bool bf16 = dtype == at::kBFloat16;
  require_native(a, bf16);
  if (M == 0 || N == 0) return;
  pybind11::gil_scoped_release no_gil;
  if (bf16) {
    using rgd::cpu::BFloat16;
    rgd::cpu::small_linear(reinterpret_cast<const BFloat16*>(x.data_ptr()),
                           reinterpret_cast<const BFloat16*>(weight.data_ptr()),
                           bias ? reinterpret_cast<const BFloat16*>(bias->data_ptr()) : nullptr, M, N, K,
                           reinterpret_cast<BFloat16*>(out.data_ptr()));
  } else {
    rgd::cpu::small_linear(x.data_ptr<float>(), weight.data_ptr<float>(), bias ? bias->data_ptr<float>() : nullptr, M,
                           N, K, out.data_ptr<float>());
  }
}

// x [M, d], weight [d] (f32|bf16, the same), eps -> out [M, d] of that dtype.
void rms_norm_out(const torch::Tensor& x, const torch::Tensor& weight, double eps, torch::Tensor out) {
  const auto a = checks::OpArgs::cpu("rgd_engine._C.rms_norm", kMatrixDtypes);
  a.dims(x, "x", 2, "[M, d]");
  a.matrix(weight, "weight");
  const auto dtype = weight.scalar_type();
  const int64_t M = x.size(0), d = x.size(1);
  a.tensor(weight, "weight", dtype, {d});
  a.tensor(x, "x", dtype, {M, d});
  a.tensor(out, "out", dtype, {M, d});
  TORCH_CHECK(eps >= 0, a.op(), ": eps must be >= 0, got ", eps);
  if (M == 0 || d == 0) return;
  if (dtype == at::kBFloat16) {
    using rgd::cpu::BFloat16;
    rgd::cpu::rms_norm(reinterpret_cast<const BFloat16*>(x.data_ptr()),
                       reinterpret_cast<const BFloat16*>(weight.data_ptr()), M, d, static_cast<float>(eps),
                       reinterpret_cast<BFloat16*>(out.data_ptr()));
  } else {
    rgd::cpu::rms_norm(x.data_ptr<float>(), weight.data_ptr<float>(), M, d, static_cast<float>(eps),
                       out.data_ptr<float>());
  }
}

// q [B, nq, H, D], k / v [B, Hkv, S, D], mask [B, 1, nq, T] additive (T <= S slots used), all f32 or all bf16
// -> out [B, nq, H, D]: softmax(q k^T / sqrt(D) + mask) v, query head h reading kv head h / (H / Hkv).
void decode_attention_out(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& mask, torch::Tensor out) {
  const auto a = checks::OpArgs::cpu("rgd_engine._C.decode_attention", kMatrixDtypes);
  a.dims(q, "q", 4, "[B, nq, H, D]");
  a.dims(k, "k", 4, "[B, Hkv, S, D]");
  a.dims(mask, "mask", 4, "[B, 1, nq, T]");
  a.matrix(q, "q");
  const auto dtype = q.scalar_type();
  const int64_t B = q.size(0), nq = q.size(1), H = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  const int64_t T = mask.size(3);
  a.tensor(k, "k", dtype, {B, Hkv, S, D});
  a.tensor(v, "v", dtype, {B, Hkv, S, D});
  a.tensor(mask, "mask", dtype, {B, 1, nq, T});
  a.tensor(out, "out", dtype, {B, nq, H, D});
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, a.op(), ": the query heads (", H, ") must be a multiple of the kv heads (",
              Hkv, ")");
  TORCH_CHECK(T >= 1 && T <= S, a.op(), ": mask covers ", T, " slots; it must cover 1 to S = ", S);
  const bool bf16 = dtype == at::kBFloat16;
  require_native(a, bf16);
  if (B == 0 || nq == 0 || H == 0 || D == 0) return;
  const rgd::cpu::AttentionShape shape{B, nq, H, Hkv, D, S, T, nq * H * D, H * D};
  pybind11::gil_scoped_release no_gil;
  if (bf16) {
    using rgd::cpu::BFloat16;
    auto p = [](const torch::Tensor& t) { return reinterpret_cast<const BFloat16*>(t.data_ptr()); };
    rgd::cpu::decode_attention(p(q), p(k), p(v), p(mask), shape, reinterpret_cast<BFloat16*>(out.data_ptr()));
  } else {
    rgd::cpu::decode_attention(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), mask.data_ptr<float>(),
                               shape, out.data_ptr<float>());
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rgd-engine fused CPU kernels (C++17 + OpenMP)";
  m.def("lmhead_topk_bf16_is_native", &rgd::cpu::lmhead_topk_bf16_is_native,
        "whether bf16 x bf16 lmhead_topk runs on AVX512-BF16 (else the hidden rows are widened to fp32)");
  m.def("small_linear_is_native", &rgd::cpu::small_linear_is_native, pybind11::arg("bf16"),
        "whether small_linear runs on this CPU (AVX-512F/BW/VL; AVX512-BF16 too for bf16)");
  m.def("small_linear_out", &small_linear_out, "y = x W^T (+ b) for few-row x, into out", pybind11::arg("x"),
        pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("out"));
  m.def("decode_attention_out", &decode_attention_out, "attention of few query rows over a KV cache, into out",
        pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("mask"), pybind11::arg("out"));
  m.def("rms_norm_out", &rms_norm_out, "HF's RMSNorm (fp32 statistics) into out", pybind11::arg("x"),
        pybind11::arg("weight"), pybind11::arg("eps"), pybind11::arg("out"));
  m.def("lmhead_topk_out", &lmhead_topk_out, "top-k log-softmax of the LM head into outputs",
        pybind11::arg("hidden"), pybind11::arg("weight"), pybind11::arg("k"), pybind11::arg("logprob"),
        pybind11::arg("ids"), pybind11::arg("lse"));
  m.def("score_select_out", &score_select_out, "ARGS score + select into outputs", pybind11::arg("cand_hidden"),
        pybind11::arg("bank_w"), pybind11::arg("bank_b"), pybind11::arg("slot"), pybind11::arg("logprob"),
        pybind11::arg("weight"), pybind11::arg("sample"), pybind11::arg("tau"), pybind11::arg("rand"),
        pybind11::arg("chosen"), pybind11::arg("scores"), pybind11::arg("rewards"));
  m.def("gather_score_select_out", &gather_score_select_out, "token-level gather + score + select into outputs",
        pybind11::arg("query"), pybind11::arg("emb"), pybind11::arg("cand_ids"), pybind11::arg("offset"),
        pybind11::arg("logprob"), pybind11::arg("weight"), pybind11::arg("ratio"), pybind11::arg("sample"),
        pybind11::arg("tau"), pybind11::arg("rand"), pybind11::arg("chosen"), pybind11::arg("scores"),
        pybind11::arg("rewards"));
  rgd::cpu::bind_decoder_stack(m);
}
