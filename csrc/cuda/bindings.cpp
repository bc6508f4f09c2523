// torch binding of the CUDA kernels: module rgd_engine._C_cuda.
// Validates tensors, allocates the stage-1 scratch and launches on the current stream. Outputs are passed
// in by the Python wrapper so tests can hand in poisoned buffers.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include "rgd_kernels.cuh"

namespace {

void check(const torch::Tensor& t, const torch::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but inputs are on ", ref.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check(const torch::Tensor& t, const torch::Tensor& ref, const char* op, const char* name, at::ScalarType dtype,
           std::vector<int64_t> shape) {
  check(t, ref, op, name);
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ", at::IntArrayRef(shape),
              ", got ", t.sizes());
}

void check_matrix_dtype(const torch::Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, op, ": ", name,
              " must be float32, float16 or bfloat16, got ", s);
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
}

// Calls fn(typed pointer) for the float32 / float16 / bfloat16 tensor t.
template <typename Fn>
void with_matrix_type(const torch::Tensor& t, Fn fn) {
  switch (t.scalar_type()) {
    case at::kFloat: fn(t.data_ptr<float>()); break;
    case at::kHalf: fn(reinterpret_cast<const __half*>(t.data_ptr())); break;
    default: fn(reinterpret_cast<const __nv_bfloat16*>(t.data_ptr())); break;
  }
}

// hidden [B, d] f32, weight [V, d] f32|f16|bf16 -> logprob [B, k] f32, ids [B, k] i64, lse [B] f32 (outputs)
void lmhead_topk_out(const torch::Tensor& hidden, const torch::Tensor& weight, int64_t k, torch::Tensor logprob,
                     torch::Tensor ids, torch::Tensor lse) {
  const char* op = "rgd_engine._C_cuda.lmhead_topk";
  TORCH_CHECK(hidden.dim() == 2, op, ": hidden must be [B, d], got ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be [V, d], got ", weight.sizes());
  const int64_t B = hidden.size(0), d = hidden.size(1), V = weight.size(0);
  TORCH_CHECK(weight.size(1) == d, op, ": hidden dim ", d, " != weight dim ", weight.size(1));
  TORCH_CHECK(k >= 1 && k <= V, op, ": k=", k, " must be in [1, V=", V, "]");
  check(hidden, hidden, op, "hidden", at::kFloat, {B, d});
  check(weight, hidden, op, "weight");
  check_matrix_dtype(weight, op, "weight");
  check(logprob, hidden, op, "logprob", at::kFloat, {B, k});
  check(ids, hidden, op, "ids", at::kLong, {B, k});
  check(lse, hidden, op, "lse", at::kFloat, {B});
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t nb = rgd::cuda::lmhead_num_blocks(V), kc = rgd::cuda::lmhead_partial_k(k);
  auto f32 = hidden.options().dtype(at::kFloat);
  auto part_m = torch::empty({B, nb}, f32), part_s = torch::empty({B, nb}, f32);
  auto part_v = torch::empty({B, nb, kc}, f32);
  auto part_i = torch::empty({B, nb, kc}, hidden.options().dtype(at::kLong));
  rgd::cuda::LmheadScratch scratch{part_m.data_ptr<float>(), part_s.data_ptr<float>(), part_v.data_ptr<float>(),
                                   part_i.data_ptr<int64_t>()};
  auto stream = at::cuda::getCurrentCUDAStream();
  with_matrix_type(weight, [&](auto* w) {
    check_launch(rgd::cuda::launch_lmhead_topk(hidden.data_ptr<float>(), w, B, V, d, k, scratch,
                                               logprob.data_ptr<float>(), ids.data_ptr<int64_t>(),
                                               lse.data_ptr<float>(), stream),
                 op);
  });
}

// cand_hidden [B, k, d], bank_w [U, d] (same dtype), bank_b [U] f32, slot [B] i64, logprob [B, k] f32,
// weight [B] f32, rand [B] f32 (sample) -> chosen [B] i64, scores [B, k] f32, rewards [B, k] f32 (outputs)
void score_select_out(const torch::Tensor& cand_hidden, const torch::Tensor& bank_w, const torch::Tensor& bank_b,
                      const torch::Tensor& slot, const torch::Tensor& logprob, const torch::Tensor& weight,
                      bool sample, double tau, const torch::Tensor& rand, torch::Tensor chosen, torch::Tensor scores,
                      torch::Tensor rewards) {
  const char* op = "rgd_engine._C_cuda.score_select";
  TORCH_CHECK(cand_hidden.dim() == 3, op, ": cand_hidden must be [B, k, d], got ", cand_hidden.sizes());
  TORCH_CHECK(bank_w.dim() == 2, op, ": bank_w must be [U, d], got ", bank_w.sizes());
  const int64_t B = cand_hidden.size(0), k = cand_hidden.size(1), d = cand_hidden.size(2), U = bank_w.size(0);
  TORCH_CHECK(k >= 1, op, ": need at least one candidate per row");
  check(cand_hidden, cand_hidden, op, "cand_hidden");
  check_matrix_dtype(cand_hidden, op, "cand_hidden");
  check(bank_w, cand_hidden, op, "bank_w", cand_hidden.scalar_type(), {U, d});
  check(bank_b, cand_hidden, op, "bank_b", at::kFloat, {U});
  check(slot, cand_hidden, op, "slot", at::kLong, {B});
  check(logprob, cand_hidden, op, "logprob", at::kFloat, {B, k});
  check(weight, cand_hidden, op, "weight", at::kFloat, {B});
  check(chosen, cand_hidden, op, "chosen", at::kLong, {B});
  check(scores, cand_hidden, op, "scores", at::kFloat, {B, k});
  check(rewards, cand_hidden, op, "rewards", at::kFloat, {B, k});
  if (sample) {
    check(rand, cand_hidden, op, "rand", at::kFloat, {B});
    TORCH_CHECK(tau > 0, op, ": tau must be > 0, got ", tau);
  }
  // Slot range is validated by the dispatch layer (a device-side check would need a host sync here).
  const c10::cuda::CUDAGuard guard(cand_hidden.device());
  const float* rand_ptr = sample ? rand.data_ptr<float>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  with_matrix_type(cand_hidden, [&](auto* cand) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(cand)>>;
    check_launch(rgd::cuda::launch_score_select<T>(
                     cand, reinterpret_cast<const T*>(bank_w.data_ptr()), bank_b.data_ptr<float>(),
                     slot.data_ptr<int64_t>(), logprob.data_ptr<float>(), weight.data_ptr<float>(), B, k, d, sample,
                     static_cast<float>(tau), rand_ptr, chosen.data_ptr<int64_t>(), scores.data_ptr<float>(),
                     rewards.data_ptr<float>(), stream),
                 op);
  });
}

// query [B, d] f32, emb [V, d] f32|f16|bf16, cand_ids [B, k] i64, offset [B] f32, logprob [B, k] f32, weight [B] f32,
// ratio, rand [B] f32 (sample) -> chosen [B] i64, scores [B, k] f32, rewards [B, k] f32 (outputs)
void gather_score_select_out(const torch::Tensor& query, const torch::Tensor& emb, const torch::Tensor& cand_ids,
                             const torch::Tensor& offset, const torch::Tensor& logprob, const torch::Tensor& weight,
                             double ratio, bool sample, double tau, const torch::Tensor& rand, torch::Tensor chosen,
                             torch::Tensor scores, torch::Tensor rewards) {
  const char* op = "rgd_engine._C_cuda.gather_score_select";
  TORCH_CHECK(query.dim() == 2, op, ": query must be [B, d], got ", query.sizes());
  TORCH_CHECK(emb.dim() == 2, op, ": emb must be [V, d], got ", emb.sizes());
  TORCH_CHECK(cand_ids.dim() == 2, op, ": cand_ids must be [B, k], got ", cand_ids.sizes());
  const int64_t B = query.size(0), d = query.size(1), k = cand_ids.size(1);
  TORCH_CHECK(k >= 1, op, ": need at least one candidate per row");
  check(query, query, op, "query", at::kFloat, {B, d});
  check(emb, query, op, "emb");
  check_matrix_dtype(emb, op, "emb");
  TORCH_CHECK(emb.size(1) == d, op, ": query dim ", d, " != emb dim ", emb.size(1));
  check(cand_ids, query, op, "cand_ids", at::kLong, {B, k});
  check(offset, query, op, "offset", at::kFloat, {B});
  check(logprob, query, op, "logprob", at::kFloat, {B, k});
  check(weight, query, op, "weight", at::kFloat, {B});
  check(chosen, query, op, "chosen", at::kLong, {B});
  check(scores, query, op, "scores", at::kFloat, {B, k});
  check(rewards, query, op, "rewards", at::kFloat, {B, k});
  if (sample) {
    check(rand, query, op, "rand", at::kFloat, {B});
    TORCH_CHECK(tau > 0, op, ": tau must be > 0, got ", tau);
  }
  // The cand_ids range is validated by the dispatch layer (a device-side check would need a host sync here).
  const c10::cuda::CUDAGuard guard(query.device());
  const float* rand_ptr = sample ? rand.data_ptr<float>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  with_matrix_type(emb, [&](auto* e) {
    check_launch(rgd::cuda::launch_gather_score_select(
                     query.data_ptr<float>(), e, cand_ids.data_ptr<int64_t>(), offset.data_ptr<float>(),
                     logprob.data_ptr<float>(), weight.data_ptr<float>(), static_cast<float>(ratio), B, k, d, sample,
                     static_cast<float>(tau), rand_ptr, chosen.data_ptr<int64_t>(), scores.data_ptr<float>(),
                     rewards.data_ptr<float>(), stream),
                 op);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rgd-engine fused CUDA kernels";
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
