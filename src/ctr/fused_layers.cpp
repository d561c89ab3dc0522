#include "userip/ctr/fused_layers.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/utils.h>

#include <cstdint>
#include <mutex>

#include "userip/util/error.h"
#include "userip/util/random.h"

namespace userip::ctr {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool on_cpu_as_float32(const torch::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == torch::kFloat32; }

// Σ a_j b_j in eight interleaved partial sums: a form the compiler vectorises without licence to
// reorder float additions (and so the same sum on every run).
float dot(const float* __restrict a, const float* __restrict b, std::int64_t n) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int k = 0; k < 8; ++k) lanes[k] += a[j + k] * b[j + k];
  }
  float sum = 0;
  for (; j < n; ++j) sum += a[j] * b[j];
  for (int k = 0; k < 8; ++k) sum += lanes[k];
  return sum;
}

torch::Tensor cross_network_ops(const torch::Tensor& x0, const std::vector<torch::Tensor>& weights,
                                const std::vector<torch::Tensor>& biases) {
  torch::Tensor x = x0;
  for (std::size_t l = 0; l < weights.size(); ++l) x = x0 * x.matmul(weights[l]).unsqueeze(1) + biases[l] + x;
  return x;
}

// One example's row of a cross layer's backward pass (see below); restrict parameters let the
// compiler vectorise it.
void cross_backward_row(float* __restrict g, const float* __restrict x0, const float* __restrict x,
                        const float* __restrict w, float s, float* __restrict dw, float* __restrict db,
                        float* __restrict dx0, std::int64_t width) {
  const float ds = dot(g, x0, width);
  for (std::int64_t j = 0; j < width; ++j) {
    db[j] += g[j];
    dw[j] += ds * x[j];
    dx0[j] += g[j] * s;
    g[j] += ds * w[j];
  }
}

// The forward pass keeps every layer's input x_l [L, B, d] and x_l · w_l [L, B]; the backward pass
// runs the layers in reverse with g = dLoss/dx_{l+1}:
//   ds = Σ_j g_j x0_j;  dw_l += ds · x_l;  db_l += g;  dx0 += g · s;  dx_l = g + ds · w_l,
// and dx_0 adds to dx0 at the end, since x_0 is x0.
struct VectorCross : torch::autograd::Function<VectorCross> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x0, torch::TensorList weights,
                               torch::TensorList biases) {
    const std::int64_t rows = x0.size(0), width = x0.size(1), layers = static_cast<std::int64_t>(weights.size());
    const torch::Tensor w = torch::stack(weights).contiguous();
    const torch::Tensor b = torch::stack(biases).contiguous();
    torch::Tensor inputs = torch::empty({layers, rows, width}, x0.options());
    torch::Tensor dots = torch::empty({layers, rows}, x0.options());
    torch::Tensor out = torch::empty({rows, width}, x0.options());
    inputs[0].copy_(x0);
    const float* first = inputs.data_ptr<float>();
    for (std::int64_t l = 0; l < layers; ++l) {
      const float* x = inputs.data_ptr<float>() + l * rows * width;
      float* y = l + 1 < layers ? inputs.data_ptr<float>() + (l + 1) * rows * width : out.data_ptr<float>();
      const float* wl = w.data_ptr<float>() + l * width;
      const float* bl = b.data_ptr<float>() + l * width;
      float* s = dots.data_ptr<float>() + l * rows;
      for (std::int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * width;
        const float* x0r = first + r * width;
        const float sr = dot(xr, wl, width);
        s[r] = sr;
        float* __restrict yr = y + r * width;
        for (std::int64_t j = 0; j < width; ++j) yr[j] = x0r[j] * sr + bl[j] + xr[j];
      }
    }
    ctx->saved_data["inputs"] = inputs;
    ctx->saved_data["dots"] = dots;
    ctx->saved_data["weights"] = w;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const torch::Tensor inputs = ctx->saved_data["inputs"].toTensor();
    const torch::Tensor dots = ctx->saved_data["dots"].toTensor();
    const torch::Tensor w = ctx->saved_data["weights"].toTensor();
    const std::int64_t layers = inputs.size(0), rows = inputs.size(1), width = inputs.size(2);
    torch::Tensor g = grad_outputs[0].to(torch::kFloat32).contiguous().clone();
    torch::Tensor dx0 = torch::zeros({rows, width}, inputs.options());
    torch::Tensor dw = torch::zeros({layers, width}, inputs.options());
    torch::Tensor db = torch::zeros({layers, width}, inputs.options());
    const float* x0 = inputs.data_ptr<float>();
    float* gp = g.data_ptr<float>();
    float* dx0p = dx0.data_ptr<float>();
    for (std::int64_t l = layers - 1; l >= 0; --l) {
      const float* x = inputs.data_ptr<float>() + l * rows * width;
      const float* s = dots.data_ptr<float>() + l * rows;
      const float* wl = w.data_ptr<float>() + l * width;
      float* dwl = dw.data_ptr<float>() + l * width;
      float* dbl = db.data_ptr<float>() + l * width;
      for (std::int64_t r = 0; r < rows; ++r) {
        cross_backward_row(gp + r * width, x0 + r * width, x + r * width, wl, s[r], dwl, dbl, dx0p + r * width, width);
      }
    }
    dx0.add_(g);
    variable_list grads;
    grads.push_back(dx0);
    for (std::int64_t l = 0; l < layers; ++l) grads.push_back(dw[l]);
    for (std::int64_t l = 0; l < layers; ++l) grads.push_back(db[l]);
    return grads;
  }
};

// The field lookup of lookup_fields as one loop each way, for float32 CPU tables.
struct FieldLookup : torch::autograd::Function<FieldLookup> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& table, const FeatureBatch* batch,
                               std::int64_t categorical_fields, std::int64_t multi_fields, bool sparse_gradient) {
    const std::int64_t rows = batch->size(), width = table.size(1), vocabulary = table.size(0);
    const std::int64_t fields = categorical_fields + multi_fields;
    const torch::Tensor weight = table.contiguous();
    // Every lookup as (output slot, table row, weight), kept for the backward pass; at most one
    // per categorical field and one per multi-hot value.
    const std::int64_t values = multi_fields > 0 ? batch->multi_index.size(2) : 0;
    const std::int64_t capacity = rows * (categorical_fields + multi_fields * values);
    torch::Tensor slots = torch::empty({capacity}, torch::kLong);
    torch::Tensor sources = torch::empty({capacity}, torch::kLong);
    torch::Tensor scales = torch::empty({capacity}, torch::kFloat32);
    std::int64_t* slot_out = slots.data_ptr<std::int64_t>();
    std::int64_t* source_out = sources.data_ptr<std::int64_t>();
    float* scale_out = scales.data_ptr<float>();
    std::int64_t count = 0;
    auto record = [&](std::int64_t slot, std::int64_t row, float scale) {
      USERIP_CHECK(row >= 0 && row < vocabulary, "CTR lookup: index {} outside the embedding's {} rows", row,
                   vocabulary);
      slot_out[count] = slot;
      source_out[count] = row;
      scale_out[count] = scale;
      ++count;
    };
    if (categorical_fields > 0) {
      const torch::Tensor index = batch->categorical.to(torch::kLong).contiguous();
      const std::int64_t* idx = index.data_ptr<std::int64_t>();
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t f = 0; f < categorical_fields; ++f) record(r * fields + f, idx[r * categorical_fields + f], 1.0f);
      }
    }
    if (multi_fields > 0) {
      const torch::Tensor index = batch->multi_index.to(torch::kLong).contiguous();
      const torch::Tensor weights = batch->multi_weight.to(torch::kFloat32).contiguous();
      const std::int64_t* idx = index.data_ptr<std::int64_t>();
      const float* w = weights.data_ptr<float>();
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t m = 0; m < multi_fields; ++m) {
          for (std::int64_t v = 0; v < values; ++v) {
            const std::int64_t at = (r * multi_fields + m) * values + v;
            if (w[at] != 0) record(r * fields + categorical_fields + m, idx[at], w[at]);
          }
        }
      }
    }
    torch::Tensor out = torch::zeros({rows, fields, width}, weight.options());
    float* o = out.data_ptr<float>();
    const float* table_rows = weight.data_ptr<float>();
    const std::int64_t* slot = slots.data_ptr<std::int64_t>();
    const std::int64_t* source = sources.data_ptr<std::int64_t>();
    const float* scale = scales.data_ptr<float>();
    for (std::int64_t i = 0; i < count; ++i) {
      float* __restrict target = o + slot[i] * width;
      const float* __restrict row = table_rows + source[i] * width;
      for (std::int64_t j = 0; j < width; ++j) target[j] += scale[i] * row[j];
    }
    ctx->saved_data["slots"] = slots.slice(0, 0, count);
    ctx->saved_data["sources"] = sources.slice(0, 0, count);
    ctx->saved_data["scales"] = scales.slice(0, 0, count);
    ctx->saved_data["vocabulary"] = vocabulary;
    ctx->saved_data["sparse"] = sparse_gradient;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const torch::Tensor slots = ctx->saved_data["slots"].toTensor();
    const torch::Tensor sources = ctx->saved_data["sources"].toTensor();
    const torch::Tensor scales = ctx->saved_data["scales"].toTensor();
    const std::int64_t vocabulary = ctx->saved_data["vocabulary"].toInt();
    const torch::Tensor g = grad_outputs[0].to(torch::kFloat32).contiguous();
    const std::int64_t width = g.size(2), count = slots.numel();
    const std::int64_t* slot = slots.data_ptr<std::int64_t>();
    const std::int64_t* source = sources.data_ptr<std::int64_t>();
    const float* scale = scales.data_ptr<float>();
    const float* gp = g.data_ptr<float>();
    torch::Tensor grad;
    if (ctx->saved_data["sparse"].toBool()) {
      torch::Tensor values = torch::empty({count, width}, g.options());
      float* v = values.data_ptr<float>();
      for (std::int64_t i = 0; i < count; ++i) {
        for (std::int64_t j = 0; j < width; ++j) v[i * width + j] = scale[i] * gp[slot[i] * width + j];
      }
      grad = torch::sparse_coo_tensor(sources.unsqueeze(0), values, {vocabulary, width});
    } else {
      grad = torch::zeros({vocabulary, width}, g.options());
      float* d = grad.data_ptr<float>();
      for (std::int64_t i = 0; i < count; ++i) {
        for (std::int64_t j = 0; j < width; ++j) d[source[i] * width + j] += scale[i] * gp[slot[i] * width + j];
      }
    }
    return {grad, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor lookup_fields_ops(const torch::Tensor& weight, const FeatureBatch& batch, std::int64_t categorical_fields,
                                std::int64_t multi_fields, bool sparse_gradient) {
  if (multi_fields == 0) {
    return torch::embedding(weight, batch.categorical, /*padding_idx=*/-1, /*scale_grad_by_freq=*/false,
                            sparse_gradient);
  }
  const std::int64_t rows = batch.size(), fields = categorical_fields + multi_fields;
  const std::int64_t values = batch.multi_index.size(2), multi_width = multi_fields * values;
  torch::Tensor indices = batch.multi_index.reshape({rows, multi_width});
  torch::Tensor weights = batch.multi_weight.reshape({rows, multi_width}).to(weight.dtype());
  if (categorical_fields > 0) {
    indices = torch::cat({batch.categorical, indices}, 1);
    weights = torch::cat({torch::ones({rows, categorical_fields}, weights.options()), weights}, 1);
  }
  // Where each bag starts in the flattened indices: an example's categorical fields one by one
  // (bags of one with weight 1), then its multi-hot fields `values` apart.
  const std::int64_t per_example = categorical_fields + multi_width;
  torch::Tensor offsets = torch::empty({rows * fields}, torch::kLong);
  std::int64_t* at = offsets.data_ptr<std::int64_t>();
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t f = 0; f < categorical_fields; ++f) *at++ = r * per_example + f;
    for (std::int64_t m = 0; m < multi_fields; ++m) *at++ = r * per_example + categorical_fields + m * values;
  }
  const torch::Tensor pooled = std::get<0>(torch::embedding_bag(weight, indices.reshape({-1}),
                                                                offsets.to(indices.device()),
                                                                /*scale_grad_by_freq=*/false, /*mode=sum*/ 0,
                                                                sparse_gradient, weights.reshape({-1})));
  return pooled.view({rows, fields, weight.size(1)});
}

std::uint64_t draw_seed() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return at::check_generator<at::CPUGeneratorImpl>(generator)->random64();
}

}  // namespace

torch::Tensor vector_cross_network(const torch::Tensor& x0, const std::vector<torch::Tensor>& weights,
                                   const std::vector<torch::Tensor>& biases) {
  USERIP_CHECK(weights.size() == biases.size(), "cross network: {} weights but {} biases", weights.size(),
               biases.size());
  if (weights.empty()) return x0;
  bool fused = x0.dim() == 2 && on_cpu_as_float32(x0);
  for (std::size_t l = 0; l < weights.size(); ++l) fused = fused && on_cpu_as_float32(weights[l]) && on_cpu_as_float32(biases[l]);
  if (!fused) return cross_network_ops(x0, weights, biases);
  return VectorCross::apply(x0, torch::TensorList(weights), torch::TensorList(biases));
}

torch::Tensor lookup_fields(const torch::Tensor& table, const FeatureBatch& batch, std::int64_t categorical_fields,
                            std::int64_t multi_fields, bool sparse_gradient) {
  const bool fused = on_cpu_as_float32(table) && table.dim() == 2 &&
                     (categorical_fields == 0 || batch.categorical.device().is_cpu()) &&
                     (multi_fields == 0 || batch.multi_index.device().is_cpu());
  if (!fused) return lookup_fields_ops(table, batch, categorical_fields, multi_fields, sparse_gradient);
  return FieldLookup::apply(table, &batch, categorical_fields, multi_fields, sparse_gradient);
}

torch::Tensor inverted_dropout(const torch::Tensor& x, double p, bool training) {
  if (!training || p <= 0) return x;
  if (!on_cpu_as_float32(x) || p >= 1) return torch::dropout(x, p, training);
  torch::Tensor mask = torch::empty(x.sizes(), x.options().requires_grad(false));
  float* m = mask.data_ptr<float>();
  const std::int64_t n = mask.numel();
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  // Keep an element when a uniform 32-bit draw (half of a SplitMix64 output) falls below (1 - p) · 2^32.
  const auto keep_below = static_cast<std::uint64_t>((1.0 - p) * 4294967296.0);
  std::uint64_t state = draw_seed();
  for (std::int64_t i = 0; i < n; i += 2) {
    const std::uint64_t bits = splitmix64(state);
    m[i] = (bits & 0xffffffffULL) < keep_below ? scale : 0.0f;
    if (i + 1 < n) m[i + 1] = (bits >> 32) < keep_below ? scale : 0.0f;
  }
  return x * mask;
}

}  // namespace userip::ctr
