// torch binding of the CUDA kernels: module rgd_engine._C_cuda.
// Validates tensors, allocates the stage-1 scratch and launches on the current stream. Outputs are passed
// in by the Python wrapper so tests can hand in poisoned buffers.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include "common/checks.h"
#include "rgd_kernels.cuh"

namespace {

namespace checks = rgd::checks;

// The matrix element types the CUDA kernels read natively (the wrapper widens the others to float32).
constexpr at::ScalarType kMatrixDtypes[] = {at::kFloat, at::kHalf, at::kBFloat16};

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
  checks::lmhead_topk(checks::OpArgs::cuda(op, hidden, kMatrixDtypes), hidden, at::kFloat, weight, k, logprob, ids,
                      lse);
  const int64_t B = hidden.size(0), d = hidden.size(1), V = weight.size(0);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t nb = rgd::cuda::lmhead_num_blocks(V), kc = rgd::cuda::lmhead_partial_k(k);
  auto f32 = hidden.options().dtype(at::kFloat);
  auto part_m = torch::empty({B, nb}, f32), part_s = torch::empty({B, nb}, f32);
  auto part_v = torch::empty({B, nb, kc}, f32);
  auto part_i = torch::empty({B, nb, kc}, hidden.options().dtype(at::kLong));
  rgd::cuda::LmheadScratch scratch{part_m.data_ptr<float>(), part_s.data_ptr<float>(), part_v.data_ptr<float>(),
                                   part_i.data_ptr<int64_t>()};
  auto stream = c10::cuda::getCurrentCUDAStream();
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
  checks::score_select(checks::OpArgs::cuda(op, cand_hidden, kMatrixDtypes), cand_hidden, bank_w, bank_b, slot,
                       logprob, weight, sample, tau, rand, chosen, scores, rewards);
  const int64_t B = cand_hidden.size(0), k = cand_hidden.size(1), d = cand_hidden.size(2);
  // Slot range is validated by the dispatch layer (a device-side check would need a host sync here).
  const c10::cuda::CUDAGuard guard(cand_hidden.device());
  const float* rand_ptr = sample ? rand.data_ptr<float>() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
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
  checks::gather_score_select(checks::OpArgs::cuda(op, query, kMatrixDtypes), query, emb, cand_ids, offset, logprob,
                              weight, sample, tau, rand, chosen, scores, rewards);
  const int64_t B = query.size(0), d = query.size(1), k = cand_ids.size(1);
  // The cand_ids range is validated by the dispatch layer (a device-side check would need a host sync here).
  const c10::cuda::CUDAGuard guard(query.device());
  const float* rand_ptr = sample ? rand.data_ptr<float>() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
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
