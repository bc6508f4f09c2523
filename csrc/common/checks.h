// Argument checks of the fused ops, shared by the CPU binding (rgd_engine._C, csrc/cpu) and the CUDA binding
// (rgd_engine._C_cuda, csrc/cuda) so that each check and its error message exist once. Header-only, C++17, and
// only ATen/c10 APIs that CPU-only torch builds have too. Messages name the op, the argument and what it got.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace rgd::checks {

// Python's names ("float32"), for the dtypes the kernels take.
inline std::string dtype_name(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kBool: return "bool";
    default: return c10::toString(s);
  }
}

// "a", "a or b", "a, b or c"
inline std::string dtype_names(c10::ArrayRef<at::ScalarType> dtypes) {
  std::string out;
  for (size_t i = 0; i < dtypes.size(); ++i) {
    if (i > 0) out += i + 1 == dtypes.size() ? " or " : ", ";
    out += dtype_name(dtypes[i]);
  }
  return out;
}

// The arguments of one call of one op. Every tensor must be contiguous and on the op's device: any CPU tensor
// for a CPU op; for a CUDA op the device (type and index) of its first input, where the kernels launch. The
// large matrices may have any of the backend's `matrix_dtypes`, which must outlive this object (the bindings
// pass static arrays).
class OpArgs {
 public:
  static OpArgs cpu(const char* op, c10::ArrayRef<at::ScalarType> matrix_dtypes) {
    return OpArgs(op, c10::Device(c10::kCPU), matrix_dtypes);
  }

  // A `first` that is not on CUDA gets no device index, so its own placement check reports it.
  static OpArgs cuda(const char* op, const at::Tensor& first, c10::ArrayRef<at::ScalarType> matrix_dtypes) {
    return OpArgs(op, first.is_cuda() ? first.device() : c10::Device(c10::kCUDA), matrix_dtypes);
  }

  const char* op() const { return op_; }

  // t has `dims` dimensions; `layout` names them for the message, e.g. "[B, d]".
  void dims(const at::Tensor& t, const char* name, int64_t dims, const char* layout) const {
    TORCH_CHECK(t.dim() == dims, op_, ": ", name, " must be ", layout, ", got ", t.sizes());
  }

  // Contiguous and on the op's device.
  void placed(const at::Tensor& t, const char* name) const {
    TORCH_CHECK(t.device().type() == device_.type(), op_, ": ", name, " must be a ",
                c10::DeviceTypeName(device_.type()), " tensor, got device ", t.device());
    TORCH_CHECK(!device_.has_index() || t.device() == device_, op_, ": ", name, " is on ", t.device(),
                " but inputs are on ", device_);
    TORCH_CHECK(t.is_contiguous(), op_, ": ", name, " must be contiguous");
  }

  // Placed, with dtype `dtype` and shape `shape`.
  void tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape) const {
    placed(t, name);
    TORCH_CHECK(t.scalar_type() == dtype, op_, ": ", name, " must be ", dtype_name(dtype), ", got ",
                dtype_name(t.scalar_type()));
    TORCH_CHECK(t.sizes() == shape, op_, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  }

  // Placed, with one of the backend's matrix dtypes (any shape: the caller checks it).
  void matrix(const at::Tensor& t, const char* name) const {
    placed(t, name);
    const auto s = t.scalar_type();
    TORCH_CHECK(std::find(matrix_dtypes_.begin(), matrix_dtypes_.end(), s) != matrix_dtypes_.end(), op_, ": ", name,
                " must be ", dtype_names(matrix_dtypes_), ", got ", dtype_name(s));
  }

 private:
  OpArgs(const char* op, c10::Device device, c10::ArrayRef<at::ScalarType> matrix_dtypes)
      : op_(op), device_(device), matrix_dtypes_(matrix_dtypes) {}

  const char* op_;
  c10::Device device_;
  c10::ArrayRef<at::ScalarType> matrix_dtypes_;
};

// hidden [B, d] of hidden_dtype, weight [V, d] (a matrix), k in [1, V]
// -> logprob [B, k] f32, ids [B, k] i64, lse [B] f32 (outputs)
inline void lmhead_topk(const OpArgs& a, const at::Tensor& hidden, at::ScalarType hidden_dtype,
                        const at::Tensor& weight, int64_t k, const at::Tensor& logprob, const at::Tensor& ids,
                        const at::Tensor& lse) {
  a.dims(hidden, "hidden", 2, "[B, d]");
  a.dims(weight, "weight", 2, "[V, d]");
  const int64_t B = hidden.size(0), d = hidden.size(1), V = weight.size(0);
  TORCH_CHECK(weight.size(1) == d, a.op(), ": hidden dim ", d, " != weight dim ", weight.size(1));
  TORCH_CHECK(k >= 1 && k <= V, a.op(), ": k=", k, " must be in [1, V=", V, "]");
  a.tensor(hidden, "hidden", hidden_dtype, {B, d});
  a.matrix(weight, "weight");
  a.tensor(logprob, "logprob", at::kFloat, {B, k});
  a.tensor(ids, "ids", at::kLong, {B, k});
  a.tensor(lse, "lse", at::kFloat, {B});
}

// The arguments every score-and-choose op shares: logprob [B, k] f32, weight [B] f32, rand [B] f32 and tau > 0
// (sample mode only) -> chosen [B] i64, scores [B, k] f32, rewards [B, k] f32 (outputs).
inline void selection(const OpArgs& a, int64_t B, int64_t k, const at::Tensor& logprob, const at::Tensor& weight,
                      bool sample, double tau, const at::Tensor& rand, const at::Tensor& chosen,
                      const at::Tensor& scores, const at::Tensor& rewards) {
  a.tensor(logprob, "logprob", at::kFloat, {B, k});
  a.tensor(weight, "weight", at::kFloat, {B});
  a.tensor(chosen, "chosen", at::kLong, {B});
  a.tensor(scores, "scores", at::kFloat, {B, k});
  a.tensor(rewards, "rewards", at::kFloat, {B, k});
  TORCH_CHECK(k >= 1, a.op(), ": need at least one candidate per row");
  if (sample) {
    a.tensor(rand, "rand", at::kFloat, {B});
    TORCH_CHECK(tau > 0, a.op(), ": tau must be > 0, got ", tau);
  }
}

// cand_hidden [B, k, d] (a matrix), bank_w [U, d] (same dtype), bank_b [U] f32, slot [B] i64, and the selection
// arguments. Checks no values: the CPU binding range-checks slot itself, the CUDA binding leaves it to the
// dispatch layer (reading device values here would need a host sync).
inline void score_select(const OpArgs& a, const at::Tensor& cand_hidden, const at::Tensor& bank_w,
                         const at::Tensor& bank_b, const at::Tensor& slot, const at::Tensor& logprob,
                         const at::Tensor& weight, bool sample, double tau, const at::Tensor& rand,
                         const at::Tensor& chosen, const at::Tensor& scores, const at::Tensor& rewards) {
  a.dims(cand_hidden, "cand_hidden", 3, "[B, k, d]");
  a.dims(bank_w, "bank_w", 2, "[U, d]");
  const int64_t B = cand_hidden.size(0), k = cand_hidden.size(1), d = cand_hidden.size(2), U = bank_w.size(0);
  a.matrix(cand_hidden, "cand_hidden");
  a.tensor(bank_w, "bank_w", cand_hidden.scalar_type(), {U, d});
  a.tensor(bank_b, "bank_b", at::kFloat, {U});
  a.tensor(slot, "slot", at::kLong, {B});
  selection(a, B, k, logprob, weight, sample, tau, rand, chosen, scores, rewards);
}

// query [B, d] f32, emb [V, d] (a matrix), cand_ids [B, k] i64, offset [B] f32, and the selection arguments.
// Checks no values: cand_ids is range-checked as slot is in score_select.
inline void gather_score_select(const OpArgs& a, const at::Tensor& query, const at::Tensor& emb,
                                const at::Tensor& cand_ids, const at::Tensor& offset, const at::Tensor& logprob,
                                const at::Tensor& weight, bool sample, double tau, const at::Tensor& rand,
                                const at::Tensor& chosen, const at::Tensor& scores, const at::Tensor& rewards) {
  a.dims(query, "query", 2, "[B, d]");
  a.dims(emb, "emb", 2, "[V, d]");
  a.dims(cand_ids, "cand_ids", 2, "[B, k]");
  const int64_t B = query.size(0), d = query.size(1), k = cand_ids.size(1);
  a.tensor(query, "query", at::kFloat, {B, d});
  a.matrix(emb, "emb");
  TORCH_CHECK(emb.size(1) == d, a.op(), ": query dim ", d, " != emb dim ", emb.size(1));
  a.tensor(cand_ids, "cand_ids", at::kLong, {B, k});
  a.tensor(offset, "offset", at::kFloat, {B});
  selection(a, B, k, logprob, weight, sample, tau, rand, chosen, scores, rewards);
}

}  // namespace rgd::checks
