#include "userip/ctr/optimizer.h"

#include <torch/utils.h>

#include <cmath>

#include "userip/util/enum_names.h"
#include "userip/util/error.h"

namespace userip::ctr {

// Named rather than anonymous: CtrOptimizer::Impl holds these types, which must not have internal
// linkage (-Wsubobject-linkage).
namespace optimizer_internal {
// torch's defaults for Adam and Adagrad, so that the three choices differ only where documented.
constexpr double kBeta1 = 0.9;
constexpr double kBeta2 = 0.999;
constexpr double kAdamEps = 1e-8;
constexpr double kAdagradEps = 1e-10;

enum class Rule { adam, adagrad };

// One parameter and its optimizer state. `second` is Adam's exp_avg_sq or Adagrad's sum of squared
// gradients; `first` is Adam's exp_avg. With a sparse gradient only the gradient's rows of all
// three are read and written, and `steps` counts the steps that reached the parameter at all (as
// torch.optim.SparseAdam counts them).
struct ParamState {
  torch::Tensor param, first, second;
  Rule rule = Rule::adam;
  double l2 = 0;
  bool embedding = false;  // its learning rate is the embedding one
  std::int64_t steps = 0;
};

// The scalars of one step of one parameter. The tensor ops take them in double, as torch's
// optimizers pass them; the float32 loops round them to float once per call, as torch's float
// kernels do.
struct StepScalars {
  double lr = 0, l2 = 0;
  double beta1 = 0, beta2 = 0, eps = 0;
  double step_size = 0;         // Adam: lr / (1 - beta1^t)
  double sqrt_correction2 = 1;  // Adam: sqrt(1 - beta2^t)
};

StepScalars scalars_for(const ParamState& s, double lr) {
  StepScalars c;
  c.lr = lr;
  c.l2 = s.l2;
  if (s.rule == Rule::adam) {
    const double t = static_cast<double>(s.steps);
    c.beta1 = kBeta1;
    c.beta2 = kBeta2;
    c.eps = kAdamEps;
    c.step_size = lr / (1 - std::pow(kBeta1, t));
    c.sqrt_correction2 = std::sqrt(1 - std::pow(kBeta2, t));
  } else {
    c.eps = kAdagradEps;
  }
  return c;
}

// --- the update rules, on tensors (any device and dtype) -----------------------------------------
// `p`, `m`, `v` and `g` are the parameter's rows being updated (views or gathered copies) and their
// gradient. Returns the new values of p, m and v for the rows (written back by the caller).

// Adam as torch's: g += l2 p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g²;
// p -= step_size · m / (sqrt(v) / sqrt(c2) + eps).
void adam_rule(torch::Tensor& p, torch::Tensor& m, torch::Tensor& v, torch::Tensor g, const StepScalars& c) {
  if (c.l2 > 0) g = g.add(p, c.l2);
  m.mul_(c.beta1).add_(g, 1 - c.beta1);
  v.mul_(c.beta2).addcmul_(g, g, 1 - c.beta2);
  p.addcdiv_(m, v.sqrt().div_(c.sqrt_correction2).add_(c.eps), -c.step_size);
}

// Adagrad as torch's (no learning-rate decay): g += l2 p; v += g²; p -= lr · g / (sqrt(v) + eps).
void adagrad_rule(torch::Tensor& p, torch::Tensor& v, torch::Tensor g, const StepScalars& c) {
  if (c.l2 > 0) g = g.add(p, c.l2);
  v.addcmul_(g, g);
  p.addcdiv_(g, v.sqrt().add_(c.eps), -c.lr);
}

// --- the same rules as one loop over float32 CPU memory -------------------------------------------
// A CTR step updates a dozen small dense tensors and a few thousand 8-float rows: as tensor ops each
// costs a dispatch per arithmetic op, which is most of a step (bench/ctr_bench BM_DcnAdamStep).

void adam_loop(float* __restrict p, float* __restrict m, float* __restrict v, const float* __restrict g,
               std::int64_t n, const StepScalars& c) {
  const float l2 = static_cast<float>(c.l2), beta1 = static_cast<float>(c.beta1), beta2 = static_cast<float>(c.beta2);
  const float step_size = static_cast<float>(c.step_size), eps = static_cast<float>(c.eps);
  const float sqrt_correction2 = static_cast<float>(c.sqrt_correction2);
  for (std::int64_t i = 0; i < n; ++i) {
    const float gi = g[i] + l2 * p[i];
    m[i] = m[i] * beta1 + (1 - beta1) * gi;
    v[i] = v[i] * beta2 + (1 - beta2) * gi * gi;
    p[i] -= step_size * m[i] / (std::sqrt(v[i]) / sqrt_correction2 + eps);
  }
}

void adagrad_loop(float* __restrict p, float* __restrict v, const float* __restrict g, std::int64_t n,
                  const StepScalars& c) {
  const float l2 = static_cast<float>(c.l2), lr = static_cast<float>(c.lr), eps = static_cast<float>(c.eps);
  for (std::int64_t i = 0; i < n; ++i) {
    const float gi = g[i] + l2 * p[i];
    v[i] += gi * gi;
    p[i] -= lr * gi / (std::sqrt(v[i]) + eps);
  }
}

void rule_loop(const ParamState& s, float* p, float* m, float* v, const float* g, std::int64_t n,
               const StepScalars& c) {
  if (s.rule == Rule::adam) {
    adam_loop(p, m, v, g, n, c);
  } else {
    adagrad_loop(p, v, g, n, c);
  }
}

bool is_cpu_float(const torch::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous();
}

// Above this size the tensor ops' vectorised kernels beat the loop (whose sqrt GCC does not
// vectorise while sqrt may set errno), and their dispatch cost no longer matters.
constexpr std::int64_t kLoopMaxElements = 1 << 14;

void dense_step(ParamState& s, const torch::Tensor& grad, const StepScalars& c) {
  if (is_cpu_float(s.param) && is_cpu_float(grad) && s.param.numel() <= kLoopMaxElements) {
    rule_loop(s, s.param.data_ptr<float>(), s.first.defined() ? s.first.data_ptr<float>() : nullptr,
              s.second.data_ptr<float>(), grad.data_ptr<float>(), s.param.numel(), c);
    return;
  }
  if (s.rule == Rule::adam) {
    adam_rule(s.param, s.first, s.second, grad, c);
  } else {
    adagrad_rule(s.param, s.second, grad, c);
  }
}

// The rows a sparse gradient names, each once, with its gradient summed over the lookups that hit
// it, in the order of first appearance (so the sums are reproducible). Float32 CPU tables only.
struct RowGradients {
  std::vector<std::int64_t> rows;
  std::vector<float> sums;  // rows.size() × width
};

class RowMerger {
 public:
  const RowGradients& merge(const torch::Tensor& indices, const torch::Tensor& values, std::int64_t table_rows) {
    if (static_cast<std::int64_t>(slot_.size()) != table_rows) slot_.assign(static_cast<std::size_t>(table_rows), -1);
    const torch::Tensor index = indices.select(0, 0).contiguous();
    const torch::Tensor value = values.contiguous();
    const std::int64_t n = index.numel(), width = value.numel() / std::max<std::int64_t>(n, 1);
    const std::int64_t* idx = index.data_ptr<std::int64_t>();
    const float* val = value.data_ptr<float>();
    out_.rows.clear();
    out_.sums.clear();
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t row = idx[i];
      USERIP_CHECK(row >= 0 && row < table_rows, "CTR optimizer: gradient row {} outside the table's {} rows", row,
                   table_rows);
      std::int64_t& at = slot_[static_cast<std::size_t>(row)];
      if (at < 0) {
        at = static_cast<std::int64_t>(out_.rows.size());
        out_.rows.push_back(row);
        out_.sums.insert(out_.sums.end(), val + i * width, val + (i + 1) * width);
      } else {
        float* sum = out_.sums.data() + at * width;
        for (std::int64_t j = 0; j < width; ++j) sum[j] += val[i * width + j];
      }
    }
    for (std::int64_t row : out_.rows) slot_[static_cast<std::size_t>(row)] = -1;
    return out_;
  }

 private:
  std::vector<std::int64_t> slot_;  // per table row: its place in out_, or -1; all -1 between calls
  RowGradients out_;
};

void row_step(ParamState& s, const torch::Tensor& grad, const StepScalars& c, RowMerger& merger) {
  const std::int64_t width = s.param.numel() / std::max<std::int64_t>(s.param.size(0), 1);
  if (is_cpu_float(s.param) && grad.device().is_cpu() && grad.scalar_type() == torch::kFloat32) {
    const RowGradients& g = merger.merge(grad._indices(), grad._values(), s.param.size(0));
    float* p = s.param.data_ptr<float>();
    float* m = s.first.defined() ? s.first.data_ptr<float>() : nullptr;
    float* v = s.second.data_ptr<float>();
    for (std::size_t r = 0; r < g.rows.size(); ++r) {
      const std::int64_t at = g.rows[r] * width;
      rule_loop(s, p + at, m ? m + at : nullptr, v + at, g.sums.data() + static_cast<std::int64_t>(r) * width, width,
                c);
    }
    return;
  }
  const torch::Tensor coalesced = grad.coalesce();
  const torch::Tensor rows = coalesced._indices().select(0, 0);
  torch::Tensor p = s.param.index_select(0, rows);
  torch::Tensor v = s.second.index_select(0, rows);
  if (s.rule == Rule::adam) {
    torch::Tensor m = s.first.index_select(0, rows);
    adam_rule(p, m, v, coalesced._values(), c);
    s.first.index_copy_(0, rows, m);
  } else {
    adagrad_rule(p, v, coalesced._values(), c);
  }
  s.second.index_copy_(0, rows, v);
  s.param.index_copy_(0, rows, p);
}

}  // namespace optimizer_internal

using optimizer_internal::ParamState;
using optimizer_internal::RowMerger;
using optimizer_internal::Rule;
using optimizer_internal::StepScalars;

std::string to_string(EmbeddingOptimizer kind) { return enum_name(kEmbeddingOptimizerNames, kind); }

EmbeddingOptimizer embedding_optimizer_from_string(std::string_view name) {
  return enum_from_name(kEmbeddingOptimizerNames, name, "embedding optimizer");
}

bool uses_sparse_gradients(EmbeddingOptimizer kind) { return kind != EmbeddingOptimizer::adam; }

struct CtrOptimizer::Impl {
  OptimizerSettings settings;
  std::vector<ParamState> params;
  RowMerger merger;
};

CtrOptimizer::CtrOptimizer(std::vector<torch::Tensor> tables, std::vector<torch::Tensor> dense,
                           const OptimizerSettings& settings)
    : impl_(std::make_unique<Impl>()) {
  impl_->settings = settings;
  torch::NoGradGuard no_grad;
  auto add = [&](const torch::Tensor& p, bool embedding) {
    ParamState s;
    s.param = p;
    s.embedding = embedding;
    s.rule = embedding && settings.embedding == EmbeddingOptimizer::adagrad ? Rule::adagrad : Rule::adam;
    s.l2 = embedding ? settings.embedding_l2 : 0;
    if (s.rule == Rule::adam) s.first = torch::zeros_like(p, torch::MemoryFormat::Contiguous);
    s.second = torch::zeros_like(p, torch::MemoryFormat::Contiguous);
    impl_->params.push_back(std::move(s));
  };
  for (const auto& p : dense) add(p, false);
  for (const auto& p : tables) add(p, true);
}

CtrOptimizer::~CtrOptimizer() = default;

void CtrOptimizer::zero_grad() {
  for (auto& s : impl_->params) s.param.mutable_grad() = torch::Tensor();
}

void CtrOptimizer::step() {
  torch::NoGradGuard no_grad;
  for (auto& s : impl_->params) {
    const torch::Tensor& grad = s.param.grad();
    if (!grad.defined()) continue;
    ++s.steps;
    const StepScalars c =
        scalars_for(s, s.embedding ? impl_->settings.embedding_learning_rate : impl_->settings.learning_rate);
    if (grad.is_sparse()) {
      row_step(s, grad, c, impl_->merger);
    } else {
      USERIP_CHECK(!s.embedding || !uses_sparse_gradients(impl_->settings.embedding),
                   "CTR optimizer: an embedding table got a dense gradient under {}; the model was not told to "
                   "produce sparse ones",
                   to_string(impl_->settings.embedding));
      dense_step(s, grad, c);
    }
  }
}

void CtrOptimizer::scale_learning_rates(double factor) {
  impl_->settings.learning_rate *= factor;
  impl_->settings.embedding_learning_rate *= factor;
}

}  // namespace userip::ctr
