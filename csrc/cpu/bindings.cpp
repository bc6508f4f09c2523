// torch binding of the CPU kernels: module rgd_engine._C.
// Every function writes into caller-provided outputs (the Python wrapper allocates them), so tests can
// hand in poisoned buffers and check that every element is overwritten.
#include <torch/extension.h>

#include "kernels.h"

namespace {

void check_cpu_contig(const torch::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check(const torch::Tensor& t, const char* op, const char* name, at::ScalarType dtype,
           std::vector<int64_t> shape) {
  check_cpu_contig(t, op, name);
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ", at::IntArrayRef(shape),
              ", got ", t.sizes());
}

void check_matrix_dtype(const torch::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, op, ": ", name,
              " must be float32 or bfloat16, got ", t.scalar_type());
}

// hidden [B, d] f32 (or bf16 with a bf16 weight), weight [V, d] f32|bf16 -> logprob [B, k] f32, ids [B, k] i64,
// lse [B] f32 (outputs)
void lmhead_topk_out(const torch::Tensor& hidden, const torch::Tensor& weight, int64_t k, torch::Tensor logprob,
                     torch::Tensor ids, torch::Tensor lse) {
  const char* op = "rgd_engine._C.lmhead_topk";
  TORCH_CHECK(hidden.dim() == 2, op, ": hidden must be [B, d], got ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be [V, d], got ", weight.sizes());
  const int64_t B = hidden.size(0), d = hidden.size(1), V = weight.size(0);
  TORCH_CHECK(weight.size(1) == d, op, ": hidden dim ", d, " != weight dim ", weight.size(1));
  TORCH_CHECK(k >= 1 && k <= V, op, ": k=", k, " must be in [1, V=", V, "]");
  const bool both_bf16 = hidden.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16;
  check(hidden, op, "hidden", both_bf16 ? at::kBFloat16 : at::kFloat, {B, d});
  check_cpu_contig(weight, op, "weight");
  check_matrix_dtype(weight, op, "weight");
  check(logprob, op, "logprob", at::kFloat, {B, k});
  check(ids, op, "ids", at::kLong, {B, k});
  check(lse, op, "lse", at::kFloat, {B});
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

// The arguments every score-and-choose op shares: logprob [B, k], weight [B], the outputs, and rand / tau.
void check_selection(const char* op, int64_t B, int64_t k, const torch::Tensor& logprob, const torch::Tensor& weight,
                     bool sample, double tau, const torch::Tensor& rand, const torch::Tensor& chosen,
                     const torch::Tensor& scores, const torch::Tensor& rewards) {
  check(logprob, op, "logprob", at::kFloat, {B, k});
  check(weight, op, "weight", at::kFloat, {B});
  check(chosen, op, "chosen", at::kLong, {B});
  check(scores, op, "scores", at::kFloat, {B, k});
  check(rewards, op, "rewards", at::kFloat, {B, k});
  TORCH_CHECK(k >= 1, op, ": need at least one candidate per row");
  if (sample) {
    check(rand, op, "rand", at::kFloat, {B});
    TORCH_CHECK(tau > 0, op, ": tau must be > 0, got ", tau);
  }
}

// cand_hidden [B, k, d], bank_w [U, d] (same dtype, f32|bf16), bank_b [U] f32, slot [B] i64, logprob [B, k] f32,
// weight [B] f32, rand [B] f32 (read in sample mode) -> chosen [B] i64, scores [B, k] f32, rewards [B, k] f32
void score_select_out(const torch::Tensor& cand_hidden, const torch::Tensor& bank_w, const torch::Tensor& bank_b,
                      const torch::Tensor& slot, const torch::Tensor& logprob, const torch::Tensor& weight,
                      bool sample, double tau, const torch::Tensor& rand, torch::Tensor chosen, torch::Tensor scores,
                      torch::Tensor rewards) {
  const char* op = "rgd_engine._C.score_select";
  TORCH_CHECK(cand_hidden.dim() == 3, op, ": cand_hidden must be [B, k, d], got ", cand_hidden.sizes());
  TORCH_CHECK(bank_w.dim() == 2, op, ": bank_w must be [U, d], got ", bank_w.sizes());
  const int64_t B = cand_hidden.size(0), k = cand_hidden.size(1), d = cand_hidden.size(2), U = bank_w.size(0);
  check_cpu_contig(cand_hidden, op, "cand_hidden");
  check_matrix_dtype(cand_hidden, op, "cand_hidden");
  check(bank_w, op, "bank_w", cand_hidden.scalar_type(), {U, d});
  check(bank_b, op, "bank_b", at::kFloat, {U});
  check(slot, op, "slot", at::kLong, {B});
  check_selection(op, B, k, logprob, weight, sample, tau, rand, chosen, scores, rewards);
  if (B > 0) {
    const int64_t lo = slot.min().item<int64_t>(), hi = slot.max().item<int64_t>();
    TORCH_CHECK(lo >= -1 && hi < U, op, ": slot values must be in [-1, ", U - 1, "], got [", lo, ", ", hi, "]");
  } else {
    return;
  }
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
  TORCH_CHECK(query.dim() == 2, op, ": query must be [B, d], got ", query.sizes());
  TORCH_CHECK(emb.dim() == 2, op, ": emb must be [V, d], got ", emb.sizes());
  TORCH_CHECK(cand_ids.dim() == 2, op, ": cand_ids must be [B, k], got ", cand_ids.sizes());
  const int64_t B = query.size(0), d = query.size(1), V = emb.size(0), k = cand_ids.size(1);
  check(query, op, "query", at::kFloat, {B, d});
  check_cpu_contig(emb, op, "emb");
  check_matrix_dtype(emb, op, "emb");
  TORCH_CHECK(emb.size(1) == d, op, ": query dim ", d, " != emb dim ", emb.size(1));
  check(cand_ids, op, "cand_ids", at::kLong, {B, k});
  check(offset, op, "offset", at::kFloat, {B});
  check_selection(op, B, k, logprob, weight, sample, tau, rand, chosen, scores, rewards);
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rgd-engine fused CPU kernels (C++17 + OpenMP)";
  m.def("lmhead_topk_bf16_is_native", &rgd::cpu::lmhead_topk_bf16_is_native,
        "whether bf16 x bf16 lmhead_topk runs on AVX512-BF16 (else the hidden rows are widened to fp32)");
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
}
