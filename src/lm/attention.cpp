#include "userip/lm/attention.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "lm/model_internal.h"
#include "userip/util/error.h"

namespace userip::lm {

namespace {
// Finite rather than -inf: a fully masked row (a padding query) then softmaxes to a uniform row
// instead of NaN, and a NaN would leak into the input-embedding gradients through backward.
constexpr double kMaskedScore = -1e30;

at::Tensor batched_matmul(const at::Tensor& a, const at::Tensor& b) {
  if (detail::needs_float_gemm(a)) return at::matmul(a.to(at::kFloat), b.to(at::kFloat)).to(a.scalar_type());
  return at::matmul(a, b);
}
}  // namespace

torch::Tensor attention_bias(const torch::Tensor& allowed, torch::ScalarType compute_dtype) {
  USERIP_ASSERT(allowed.dim() == 3 && allowed.scalar_type() == at::kBool);
  return at::zeros(allowed.sizes(), allowed.options().dtype(compute_dtype))
      .masked_fill(allowed.logical_not(), kMaskedScore)
      .unsqueeze(1);
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& bias, double scale) {
  const auto batch = q.size(0), heads = q.size(1), queries = q.size(2), head_dim = q.size(3);
  const auto kv_heads = k.size(1), keys = k.size(2);
  USERIP_ASSERT_MSG(heads % kv_heads == 0, "heads {} kv_heads {}", heads, kv_heads);
  const auto groups = heads / kv_heads;
  // Grouped-query attention without copying k/v per query head: the `groups` query heads that
  // share a kv head are stacked along the query axis, so one batched GEMM serves them all.
  auto grouped_q = q.reshape({batch, kv_heads, groups * queries, head_dim});
  auto scores = batched_matmul(grouped_q, k.transpose(-2, -1)).to(bias.scalar_type()).mul_(scale);
  scores = scores.view({batch, kv_heads, groups, queries, keys}) + bias.unsqueeze(2);
  auto probs = at::softmax(scores, -1).to(v.scalar_type()).view({batch, kv_heads, groups * queries, keys});
  return batched_matmul(probs, v).view({batch, heads, queries, head_dim});
}

torch::Tensor attention_naive(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& allowed, double scale) {
  auto qd = q.detach().to(at::kCPU, at::kDouble).contiguous();
  auto kd = k.detach().to(at::kCPU, at::kDouble).contiguous();
  auto vd = v.detach().to(at::kCPU, at::kDouble).contiguous();
  auto ad = allowed.to(at::kCPU, at::kBool).contiguous();
  const auto batch = q.size(0), heads = q.size(1), queries = q.size(2), head_dim = q.size(3);
  const auto kv_heads = k.size(1), keys = k.size(2);
  const auto groups = heads / kv_heads;
  auto out = at::zeros({batch, heads, queries, head_dim}, qd.options());
  auto Q = qd.accessor<double, 4>();
  auto K = kd.accessor<double, 4>();
  auto V = vd.accessor<double, 4>();
  auto A = ad.accessor<bool, 3>();
  auto O = out.accessor<double, 4>();
  std::vector<double> weight(static_cast<std::size_t>(keys));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / groups;
      for (int64_t i = 0; i < queries; ++i) {
        bool any = false;
        for (int64_t j = 0; j < keys; ++j) any = any || A[b][i][j];
        double max_score = -INFINITY;
        for (int64_t j = 0; j < keys; ++j) {
          double s = 0;
          for (int64_t d = 0; d < head_dim; ++d) s += Q[b][h][i][d] * K[b][kvh][j][d];
          s *= scale;
          if (any && !A[b][i][j]) s = -INFINITY;
          if (!any) s = 0;  // nothing allowed: uniform over all keys
          weight[static_cast<std::size_t>(j)] = s;
          if (s > max_score) max_score = s;
        }
        double total = 0;
        for (auto& w : weight) {
          w = std::exp(w - max_score);
          total += w;
        }
        for (int64_t d = 0; d < head_dim; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < keys; ++j) acc += weight[static_cast<std::size_t>(j)] * V[b][kvh][j][d];
          O[b][h][i][d] = acc / total;
        }
      }
    }
  }
  return out;
}

std::pair<torch::Tensor, torch::Tensor> rope_tables(const ModelConfig& config, const torch::Tensor& position_ids,
                                                    torch::ScalarType dtype) {
  std::int64_t sequence_length = config.max_position_embeddings;
  if (config.rope_scaling.type == RopeScalingType::dynamic && position_ids.numel() > 0)
    sequence_length = position_ids.max().item<std::int64_t>() + 1;  // a host sync, only for dynamic NTK
  std::vector<double> inverse = rope_inverse_frequencies(config, sequence_length);
  auto inv = at::tensor(inverse, at::TensorOptions().dtype(at::kDouble)).to(position_ids.device());
  // Angles in float64: position * frequency loses digits in float32 at long positions.
  auto angles = position_ids.to(at::kDouble).unsqueeze(-1) * inv;  // [B, T, hd/2]
  auto doubled = at::cat({angles, angles}, -1).unsqueeze(1);          // [B, 1, T, hd]
  return {doubled.cos().to(dtype), doubled.sin().to(dtype)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto xc = x.to(cos.scalar_type());
  const auto half = x.size(-1) / 2;
  auto rotated = at::cat({xc.narrow(-1, half, half).neg(), xc.narrow(-1, 0, half)}, -1);
  return (xc * cos + rotated * sin).to(x.scalar_type());
}

}  // namespace userip::lm
