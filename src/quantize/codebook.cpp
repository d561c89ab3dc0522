// Just over 600 lines: the residual codebook's operations share the chunked distance helpers at
// the top, which no other file needs.
#include "userip/quantize/codebook.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/types.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <numeric>
#include <string_view>

#include "userip/tensor/tensor_file.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/random.h"

namespace userip::quantize {
namespace {

// Rows per chunk so that a chunk's [rows, width] temporaries stay near this many floats: large
// enough for efficient matrix products, small enough that 100k users × a few thousand dimensions
// never materialise a second full copy beyond the one residual the algorithm needs.
constexpr std::int64_t kChunkElementsCpu = std::int64_t{1} << 22;
constexpr std::int64_t kChunkElementsCuda = std::int64_t{1} << 26;

// Jitter that separates a duplicated codeword from its twin: small against the data's scale so it
// does not move the codeword visibly, large enough to break exact ties in later assignments.
constexpr double kJitterRelative = 1e-3;
// Seeds of the jitter drawn by update_means (which has no seed of its own): fixed, so the M-step
// stays a deterministic function of its inputs.
constexpr std::uint64_t kReseedJitterSeed = 0x5eed'c0de'b00cULL;

std::int64_t rows_per_chunk(const torch::Tensor& x, std::int64_t width) {
  const std::int64_t budget = x.is_cuda() ? kChunkElementsCuda : kChunkElementsCpu;
  return std::max<std::int64_t>(1, budget / std::max<std::int64_t>(width, 1));
}

template <typename Fn>
void for_each_chunk(std::int64_t rows, std::int64_t chunk, Fn&& fn) {
  for (std::int64_t begin = 0; begin < rows; begin += chunk) fn(begin, std::min(rows, begin + chunk));
}

// Index of the nearest codeword (squared L2) for each row of `points` [n, dim]. ||p||^2 is the same
// for every codeword of a row, so the argmin needs only ||c||^2 - 2 p·c, one matrix product.
// Ties go to the lowest code index (argmin returns the first minimum).
torch::Tensor nearest_codes(const torch::Tensor& points, const torch::Tensor& codewords,
                            const torch::Tensor& codeword_norms) {
  return at::addmm(codeword_norms.unsqueeze(0), points, codewords.t(), /*beta=*/1, /*alpha=*/-2).argmin(1);
}

// Nearest codes of every row of `points`, chunked.
torch::Tensor nearest_codes_chunked(const torch::Tensor& points, const torch::Tensor& codewords) {
  const auto norms = codewords.pow(2).sum(1);
  auto codes = torch::empty({points.size(0)}, points.options().dtype(torch::kLong));
  const auto chunk = rows_per_chunk(points, std::max(points.size(1), codewords.size(0)));
  for_each_chunk(points.size(0), chunk, [&](std::int64_t begin, std::int64_t end) {
    codes.slice(0, begin, end).copy_(nearest_codes(points.slice(0, begin, end), codewords, norms));
  });
  return codes;
}

// Squared distance of every row of `points` to one `center` [dim], computed from differences (not
// from norms, which cancel badly when the vectors share a large offset, as LM hidden states do) so
// that a point equal to the center is at exactly 0: k-means++ must never pick it again. cdist's
// direct mode reads `points` once without a [N, dim] temporary.
torch::Tensor squared_distances_to(const torch::Tensor& points, const torch::Tensor& center) {
  constexpr std::int64_t kDirectDifferences = 2;  // cdist compute_mode "donot_use_mm_for_euclid_dist"
  return at::cdist(points, center.unsqueeze(0), /*p=*/2.0, kDirectDifferences).squeeze(1).pow(2);
}

// Per row of `points`: squared distance to its codeword `codewords[codes[i]]`.
torch::Tensor squared_errors(const torch::Tensor& points, const torch::Tensor& codewords, const torch::Tensor& codes) {
  auto out = torch::empty({points.size(0)}, points.options());
  for_each_chunk(points.size(0), rows_per_chunk(points, points.size(1)), [&](std::int64_t begin, std::int64_t end) {
    auto chosen = codewords.index_select(0, codes.slice(0, begin, end));
    out.slice(0, begin, end).copy_((points.slice(0, begin, end) - chosen).pow(2).sum(1));
  });
  return out;
}

// sums[codes[i]] += rows[i] (sums: [K, dim] float64, rows: [n, dim] float32). On the CPU a plain
// loop: index_add_ dispatches one small add per row there, 50x slower at 100k rows, and a
// one-hot matrix product would cost K times more arithmetic. Elsewhere index_add_ is one kernel.
void add_rows_by_code(torch::Tensor& sums, const torch::Tensor& codes, const torch::Tensor& rows) {
  if (!sums.device().is_cpu()) {
    sums.index_add_(0, codes, rows.to(torch::kDouble));
    return;
  }
  const auto rows_cpu = rows.contiguous();
  const auto codes_cpu = codes.contiguous();
  const auto width = rows_cpu.size(1);
  double* out = sums.data_ptr<double>();
  const float* in = rows_cpu.data_ptr<float>();
  const std::int64_t* code = codes_cpu.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < rows_cpu.size(0); ++i) {
    double* target = out + code[i] * width;
    const float* source = in + i * width;
    for (std::int64_t j = 0; j < width; ++j) target[j] += source[j];
  }
}

// residual[i] -= codewords[codes[i]], in place.
void subtract_codewords(torch::Tensor& residual, const torch::Tensor& codewords, const torch::Tensor& codes) {
  const auto chunk = rows_per_chunk(residual, residual.size(1));
  for_each_chunk(residual.size(0), chunk, [&](std::int64_t begin, std::int64_t end) {
    residual.slice(0, begin, end).sub_(codewords.index_select(0, codes.slice(0, begin, end)));
  });
}

std::vector<double> to_double_vector(const torch::Tensor& values) {
  auto cpu = values.detach().to(torch::kCPU, torch::kDouble).contiguous();
  const double* data = cpu.data_ptr<double>();
  return std::vector<double>(data, data + cpu.numel());
}

// Root mean square of the entries of `points`, the scale the jitter is relative to.
double root_mean_square(const torch::Tensor& points) {
  if (points.numel() == 0) return 0.0;
  return at::norm(points).item<double>() / std::sqrt(static_cast<double>(points.numel()));
}

// `row` plus N(0, (kJitterRelative · scale)^2) noise drawn from `rng` on the CPU.
torch::Tensor jittered(const torch::Tensor& row, double scale, Rng& rng) {
  const double stddev = kJitterRelative * (scale > 0 ? scale : 1.0);
  std::vector<float> noise(static_cast<std::size_t>(row.numel()));
  for (auto& value : noise) value = static_cast<float>(rng.normal(0.0, stddev));
  auto noise_tensor = torch::from_blob(noise.data(), {row.numel()}, torch::kFloat).to(row.device());
  return row + noise_tensor;  // a new tensor: `noise` may go away afterwards
}

// k-means++ (Arthur & Vassilvitskii 2007): the first center uniformly, each next one with
// probability proportional to the squared distance to the nearest center chosen so far. Once every
// point coincides with a center (fewer distinct points than codes) a uniformly drawn point plus
// jitter fills the remaining codes.
torch::Tensor kmeanspp_seed(const torch::Tensor& points, std::int64_t codes, Rng& rng) {
  const auto count = points.size(0);
  auto centers = torch::empty({codes, points.size(1)}, points.options());
  centers[0].copy_(points[static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(count)))]);
  auto nearest_distance = squared_distances_to(points, centers[0]);
  double scale = -1;  // computed on first need
  for (std::int64_t k = 1; k < codes; ++k) {
    const auto weights = to_double_vector(nearest_distance);
    const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
    if (total > 0) {
      centers[k].copy_(points[static_cast<std::int64_t>(rng.categorical(weights))]);
    } else {
      if (scale < 0) scale = root_mean_square(points);
      const auto pick = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(count)));
      centers[k].copy_(jittered(points[pick], scale, rng));
    }
    nearest_distance = at::minimum(nearest_distance, squared_distances_to(points, centers[k]));
  }
  return centers;
}

std::string shape_text(const torch::Tensor& t) {
  std::string text = "[";
  for (std::int64_t i = 0; i < t.dim(); ++i) text += (i ? ", " : "") + std::to_string(t.size(i));
  return text + "]";
}

}  // namespace

ResidualCodebook::ResidualCodebook(std::int64_t dim, std::int64_t codes, int levels)
    : dim_(dim), codes_(codes), levels_(levels) {
  USERIP_CHECK(dim > 0, "codebook dimension must be > 0, got {}", dim);
  USERIP_CHECK(codes >= 1 && codes <= kMaxCodes, "codebook size must lie in [1, {}], got {}", kMaxCodes, codes);
  USERIP_CHECK(levels >= 1 && levels <= kMaxLevels, "codebook levels must lie in [1, {}], got {}", kMaxLevels,
               levels);
}

void ResidualCodebook::check_ready(const char* what) const {
  USERIP_CHECK(levels_ > 0, "{}: the codebook has no shape (default-constructed)", what);
  USERIP_CHECK(initialized(), "{}: the codebook is not initialised (call init_kmeanspp or init_uniform first)",
               what);
  USERIP_CHECK(static_cast<int>(codewords_.size()) == levels_, "{}: the codebook has {} codeword tensors for {} levels",
               what, codewords_.size(), levels_);
  for (int r = 0; r < levels_; ++r) {
    const auto& c = codewords_[r];
    USERIP_CHECK(c.defined() && c.dim() == 2 && c.size(0) == codes_ && c.size(1) == dim_,
                 "{}: codewords of level {} must be [{}, {}], got {}", what, r, codes_, dim_,
                 c.defined() ? shape_text(c) : std::string("undefined"));
  }
}

void ResidualCodebook::check_points(const torch::Tensor& x, const char* name) const {
  USERIP_CHECK(levels_ > 0, "the codebook has no shape (default-constructed)");
  USERIP_CHECK(x.defined(), "tensor '{}' is undefined", name);
  USERIP_CHECK(x.dim() == 2 && x.size(1) == dim_, "tensor '{}' must be [N, {}], got {}", name, dim_, shape_text(x));
  USERIP_CHECK(at::isFloatingType(x.scalar_type()), "tensor '{}' must be floating point, got {}", name,
               c10::toString(x.scalar_type()));
}

void ResidualCodebook::check_codes(const torch::Tensor& codes, std::int64_t rows) const {
  USERIP_CHECK(codes.defined(), "tensor 'codes' is undefined");
  USERIP_CHECK(codes.dim() == 2 && codes.size(1) == levels_, "tensor 'codes' must be [N, {}], got {}", levels_,
               shape_text(codes));
  USERIP_CHECK(rows < 0 || codes.size(0) == rows, "tensor 'codes' has {} rows for {} points", codes.size(0), rows);
  USERIP_CHECK(codes.scalar_type() == torch::kLong, "tensor 'codes' must be int64, got {}",
               c10::toString(codes.scalar_type()));
  if (codes.numel() == 0) return;
  const auto low = codes.min().item<std::int64_t>();
  const auto high = codes.max().item<std::int64_t>();
  USERIP_CHECK(low >= 0 && high < codes_, "tensor 'codes' holds values in [{}, {}], outside [0, {})", low, high,
               codes_);
}

std::vector<torch::Tensor> ResidualCodebook::codewords_on(torch::Device device) const {
  std::vector<torch::Tensor> out;
  out.reserve(codewords_.size());
  for (const auto& c : codewords_) out.push_back(c.detach().to(device, torch::kFloat));
  return out;
}

ResidualCodebook::Seeding ResidualCodebook::init_kmeanspp_best_of(const torch::Tensor& x, std::uint64_t seed,
                                                                  int restarts, int iterations) {
  USERIP_CHECK(restarts >= 1, "k-means++ restarts must be >= 1, got {}", restarts);
  USERIP_CHECK(iterations >= 0, "Lloyd iterations must be >= 0, got {}", iterations);
  Seeding result;
  if (restarts == 1) {
    init_kmeanspp(x, seed);
    return result;
  }
  at::NoGradGuard no_grad;
  const auto seed_of = [seed](int r) { return r == 0 ? seed : Rng::derive(seed, static_cast<std::uint64_t>(r)).next_u64(); };
  for (int r = 0; r < restarts; ++r) {
    ResidualCodebook trial(dim_, codes_, levels_);
    trial.init_kmeanspp(x, seed_of(r));
    for (int i = 0; i < iterations; ++i) trial.update_means(x, trial.assign(x));
    const double error = trial.quantization_error(x);
    if (r == 0 || error < result.best_error) {
      result.best_error = error;
      result.kept = r;
    }
    if (r == 0 || error > result.worst_error) result.worst_error = error;
  }
  init_kmeanspp(x, seed_of(result.kept));
  return result;
}

void ResidualCodebook::init_kmeanspp(const torch::Tensor& x, std::uint64_t seed) {
  check_points(x, "x");
  at::NoGradGuard no_grad;
  const auto points = x.detach().to(torch::kFloat);
  const auto count = points.size(0);
  USERIP_CHECK(count > 0, "k-means++ needs at least one point, tensor 'x' has 0 rows");
  if (count < codes_) {
    spdlog::warn("k-means++ seeding {} codes from only {} points: {} codes per level duplicate a point with jitter",
                 codes_, count, codes_ - count);
  }
  std::vector<torch::Tensor> seeded;
  torch::Tensor residual = points;  // level 0 seeds on x itself; a copy is made only for level 1
  for (int r = 0; r < levels_; ++r) {
    Rng rng = Rng::derive(seed, static_cast<std::uint64_t>(r));
    seeded.push_back(kmeanspp_seed(residual, codes_, rng));
    if (r + 1 < levels_) {
      if (r == 0) residual = points.clone();
      subtract_codewords(residual, seeded.back(), nearest_codes_chunked(residual, seeded.back()));
    }
  }
  codewords_ = std::move(seeded);
}

void ResidualCodebook::init_uniform(std::uint64_t seed, torch::Device device) {
  USERIP_CHECK(levels_ > 0, "init_uniform: the codebook has no shape (default-constructed)");
  const double bound = 1.0 / static_cast<double>(codes_);
  std::vector<torch::Tensor> fresh;
  for (int r = 0; r < levels_; ++r) {
    Rng rng = Rng::derive(seed, static_cast<std::uint64_t>(r));
    auto values = torch::empty({codes_, dim_}, torch::kFloat);
    float* data = values.data_ptr<float>();
    for (std::int64_t i = 0; i < values.numel(); ++i) data[i] = static_cast<float>(rng.uniform(-bound, bound));
    fresh.push_back(values.to(device));
  }
  codewords_ = std::move(fresh);
}

torch::Tensor ResidualCodebook::assign(const torch::Tensor& x) const {
  check_ready("assign");
  check_points(x, "x");
  at::NoGradGuard no_grad;
  const auto points = x.detach().to(torch::kFloat);
  const auto codewords = codewords_on(points.device());
  std::vector<torch::Tensor> norms;
  for (const auto& c : codewords) norms.push_back(c.pow(2).sum(1));
  auto codes = torch::empty({points.size(0), levels_}, points.options().dtype(torch::kLong));
  const auto chunk = rows_per_chunk(points, std::max(dim_, codes_));
  for_each_chunk(points.size(0), chunk, [&](std::int64_t begin, std::int64_t end) {
    auto residual = points.slice(0, begin, end);
    for (int r = 0; r < levels_; ++r) {
      auto chosen = nearest_codes(residual, codewords[r], norms[r]);
      codes.slice(0, begin, end).select(1, r).copy_(chosen);
      if (r + 1 < levels_) residual = residual - codewords[r].index_select(0, chosen);
    }
  });
  return codes;
}

torch::Tensor ResidualCodebook::reconstruct(const torch::Tensor& codes) const {
  check_ready("reconstruct");
  check_codes(codes, -1);
  torch::Tensor out;
  for (int r = 0; r < levels_; ++r) {
    // .to() rather than detach: gradients reach the codewords (joint mode).
    auto chosen = codewords_[r].to(codes.device(), torch::kFloat).index_select(0, codes.select(1, r).contiguous());
    out = r == 0 ? chosen : out + chosen;
  }
  return out;
}

ResidualCodebook::UpdateStats ResidualCodebook::update_means(const torch::Tensor& x, const torch::Tensor& codes) {
  check_ready("update_means");
  check_points(x, "x");
  check_codes(codes, x.size(0));
  at::NoGradGuard no_grad;
  const auto points = x.detach().to(torch::kFloat);
  const auto device = points.device();
  const auto count = points.size(0);

  UpdateStats stats;
  stats.reseeded_per_level.assign(static_cast<std::size_t>(levels_), 0);
  stats.codes = torch::empty({count, levels_}, points.options().dtype(torch::kLong));
  torch::Tensor residual = points;
  bool residual_is_copy = false;
  const auto chunk = rows_per_chunk(points, dim_);

  for (int r = 0; r < levels_; ++r) {
    const auto current = codewords_[r].detach().to(device, torch::kFloat);
    torch::Tensor assignment = r == 0 ? codes.select(1, 0).to(device).contiguous().clone()
                                      : nearest_codes_chunked(residual, current);

    // Sums in float64: a code may hold most of 100k points, and float32 sums would lose digits.
    auto sums = torch::zeros({codes_, dim_}, points.options().dtype(torch::kDouble));
    for_each_chunk(count, chunk, [&](std::int64_t begin, std::int64_t end) {
      add_rows_by_code(sums, assignment.slice(0, begin, end), residual.slice(0, begin, end));
    });
    const auto counts = at::bincount(assignment, /*weights=*/{}, /*minlength=*/codes_);
    const auto means = (sums / counts.clamp_min(1).unsqueeze(1).to(torch::kDouble)).to(torch::kFloat);
    auto updated = at::where((counts > 0).unsqueeze(1), means, current);

    const auto counts_cpu = counts.to(torch::kCPU).contiguous();
    std::vector<std::int64_t> empty_codes;
    for (std::int64_t k = 0; k < codes_; ++k) {
      if (counts_cpu.data_ptr<std::int64_t>()[k] == 0) empty_codes.push_back(k);
    }
    if (!empty_codes.empty() && count > 0) {
      const auto errors = to_double_vector(squared_errors(residual, updated, assignment));
      std::vector<std::int64_t> order(static_cast<std::size_t>(count));
      std::iota(order.begin(), order.end(), 0);
      const auto take = std::min<std::size_t>(empty_codes.size(), order.size());
      std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(take), order.end(),
                        [&](std::int64_t a, std::int64_t b) {
                          return errors[a] != errors[b] ? errors[a] > errors[b] : a < b;
                        });
      double scale = -1;
      std::vector<std::int64_t> moved_points, moved_to;
      for (std::size_t j = 0; j < empty_codes.size(); ++j) {
        const auto code = empty_codes[j];
        const auto point = j < take ? order[j] : static_cast<std::int64_t>(j % order.size());
        if (j < take && errors[point] > 0) {
          updated[code].copy_(residual[point]);
          moved_points.push_back(point);
          moved_to.push_back(code);
        } else {
          // Nothing left to explain: a duplicate with jitter keeps the code distinct without
          // stealing a point that its own code already reproduces exactly.
          if (scale < 0) scale = root_mean_square(residual);
          Rng rng = Rng::derive(kReseedJitterSeed, static_cast<std::uint64_t>(r) * kMaxCodes + code);
          updated[code].copy_(jittered(residual[point], scale, rng));
        }
      }
      if (!moved_points.empty()) {
        auto index = torch::tensor(moved_points, torch::kLong).to(device);
        auto values = torch::tensor(moved_to, torch::kLong).to(device);
        assignment.index_put_({index}, values);
      }
      stats.reseeded_per_level[static_cast<std::size_t>(r)] = static_cast<std::int64_t>(empty_codes.size());
      stats.reseeded += static_cast<std::int64_t>(empty_codes.size());
      spdlog::debug("codebook level {}: re-seeded {} empty code(s) of {}", r, empty_codes.size(), codes_);
    }

    // In place, so that tensors an optimiser holds (joint mode) stay the codebook's tensors.
    codewords_[r].copy_(updated);
    stats.codes.select(1, r).copy_(assignment);
    if (r + 1 < levels_) {
      if (!residual_is_copy) {
        residual = points.clone();
        residual_is_copy = true;
      }
      subtract_codewords(residual, updated, assignment);
    }
  }
  return stats;
}

int ResidualCodebook::split_into_dead_codes(const torch::Tensor& codes, Rng rng, std::int64_t min_members) {
  check_ready("split_into_dead_codes");
  USERIP_CHECK(codes.dim() == 1 || (codes.dim() == 2 && codes.size(1) == levels_),
               "split_into_dead_codes: codes must be [N] or [N, {}], got {}", levels_, shape_text(codes));
  USERIP_CHECK(min_members >= 1, "split_into_dead_codes: min_members must be >= 1, got {}", min_members);
  at::NoGradGuard no_grad;
  auto counts = code_usage(codes.dim() == 1 ? codes : codes.select(1, 0), codes_).counts;
  int split = 0;
  for (std::size_t dead = 0; dead < counts.size(); ++dead) {
    if (counts[dead] >= min_members) continue;
    const auto largest = static_cast<std::size_t>(std::max_element(counts.begin(), counts.end()) - counts.begin());
    if (counts[largest] < 2 * min_members) break;
    std::vector<float> direction(static_cast<std::size_t>(dim_));
    for (auto& x : direction) x = static_cast<float>(rng.normal());
    split_code(static_cast<std::int64_t>(largest), static_cast<std::int64_t>(dead), torch::tensor(direction));
    counts[dead] = counts[largest] / 2;
    counts[largest] -= counts[dead];
    ++split;
  }
  return split;
}

void ResidualCodebook::split_code(std::int64_t from, std::int64_t to, const torch::Tensor& direction) {
  check_ready("split_code");
  USERIP_CHECK(from >= 0 && from < codes_ && to >= 0 && to < codes_ && from != to,
               "split_code: codes {} and {} must be distinct and in [0, {})", from, to, codes_);
  USERIP_CHECK(direction.dim() == 1 && direction.size(0) == dim_, "split_code: direction must be [{}], got {}", dim_,
               shape_text(direction));
  at::NoGradGuard no_grad;
  auto& words = codewords_[0];
  auto step = direction.detach().to(words.device(), torch::kFloat);
  const double norm = step.norm().item<double>();
  USERIP_CHECK(norm > 0 && std::isfinite(norm), "split_code: the direction must be finite and nonzero");
  step = step * (kSplitStep * words[from].norm() / norm);
  words[to].copy_(words[from] + step);
  words[from].sub_(step);
}

std::vector<double> mean_per_code(const torch::Tensor& codes, const torch::Tensor& values, std::int64_t num_codes) {
  USERIP_CHECK(codes.dim() == 1 && values.dim() == 1 && codes.size(0) == values.size(0),
               "mean_per_code: codes and values must be [N] alike, got {} and {}", shape_text(codes),
               shape_text(values));
  const auto c = codes.detach().to(torch::kCPU, torch::kLong).contiguous();
  const auto v = values.detach().to(torch::kCPU, torch::kDouble).contiguous();
  std::vector<double> sum(static_cast<std::size_t>(num_codes), 0.0), count(sum.size(), 0.0);
  const auto* cp = c.data_ptr<std::int64_t>();
  const auto* vp = v.data_ptr<double>();
  for (std::int64_t i = 0; i < c.size(0); ++i) {
    USERIP_CHECK(cp[i] >= 0 && cp[i] < num_codes, "mean_per_code: code {} of entry {} is outside [0, {})", cp[i], i,
                 num_codes);
    sum[static_cast<std::size_t>(cp[i])] += vp[i];
    count[static_cast<std::size_t>(cp[i])] += 1;
  }
  for (std::size_t k = 0; k < sum.size(); ++k)
    sum[k] = count[k] > 0 ? sum[k] / count[k] : std::numeric_limits<double>::quiet_NaN();
  return sum;
}

RedundantCode redundant_code(const torch::Tensor& codes, const torch::Tensor& margins, std::int64_t num_codes,
                             double ratio) {
  RedundantCode out;
  const auto means = mean_per_code(codes, margins, num_codes);
  std::vector<double> named;
  for (double m : means)
    if (!std::isnan(m)) named.push_back(m);
  // With two codes the median is the mean of both, so the lower one is always under it.
  if (named.size() < 3) return out;
  std::sort(named.begin(), named.end());
  const auto n = named.size();
  const double median = n % 2 == 1 ? named[n / 2] : 0.5 * (named[n / 2 - 1] + named[n / 2]);
  if (!(median > 0)) return out;
  std::int64_t lowest = -1;
  for (std::size_t k = 0; k < means.size(); ++k)
    if (!std::isnan(means[k]) && (lowest < 0 || means[k] < means[static_cast<std::size_t>(lowest)]))
      lowest = static_cast<std::int64_t>(k);
  out.margin_ratio = means[static_cast<std::size_t>(lowest)] / median;
  if (ratio > 0 && out.margin_ratio < ratio) out.code = lowest;
  return out;
}

PrincipalDirection principal_direction(const torch::Tensor& rows) {
  USERIP_CHECK(rows.dim() == 2 && rows.size(0) >= 2 && rows.size(1) >= 1,
               "principal_direction: rows must be [n >= 2, dim >= 1], got {}", shape_text(rows));
  at::NoGradGuard no_grad;
  const auto x = rows.detach().to(torch::kDouble);
  const auto centered = x - x.mean(0, true);
  const auto sq = centered.pow(2).sum(1);
  PrincipalDirection out;
  out.spread = sq.sum().item<double>();
  auto v = centered[sq.argmax().item<std::int64_t>()].clone();
  if (!(out.spread > 0) || v.norm().item<double>() <= 0) {
    out.direction = torch::zeros({rows.size(1)}, rows.options().dtype(torch::kFloat));
    return out;
  }
  v = v / v.norm();
  // The scatter's leading eigenvalue dominates the next by the gap between two groups' separation and
  // the spread within them; a few dozen iterations settle the direction to float precision.
  for (int i = 0; i < 64; ++i) {
    auto next = centered.t().mv(centered.mv(v));
    const double norm = next.norm().item<double>();
    if (!(norm > 0)) break;
    v = next / norm;
  }
  out.direction = v.to(torch::kFloat);
  return out;
}

double ResidualCodebook::quantization_error(const torch::Tensor& x) const {
  check_ready("quantization_error");
  check_points(x, "x");
  USERIP_CHECK(x.size(0) > 0, "quantization error of an empty tensor 'x'");
  at::NoGradGuard no_grad;
  const auto points = x.detach().to(torch::kFloat);
  const auto codewords = codewords_on(points.device());
  std::vector<torch::Tensor> norms;
  for (const auto& c : codewords) norms.push_back(c.pow(2).sum(1));
  auto total = torch::zeros({}, points.options().dtype(torch::kDouble));
  for_each_chunk(points.size(0), rows_per_chunk(points, std::max(dim_, codes_)), [&](std::int64_t begin,
                                                                                      std::int64_t end) {
    auto residual = points.slice(0, begin, end);
    for (int r = 0; r < levels_; ++r) {
      residual = residual - codewords[r].index_select(0, nearest_codes(residual, codewords[r], norms[r]));
    }
    total += residual.pow(2).sum(torch::kDouble);
  });
  return total.item<double>() / static_cast<double>(points.size(0));
}

std::string ResidualCodebook::fingerprint() const {
  std::uint64_t hash = fnv1a64("userip-residual-codebook");
  hash = fnv1a64(std::to_string(dim_) + "x" + std::to_string(codes_) + "x" + std::to_string(levels_), hash);
  for (const auto& c : codewords_) {
    auto cpu = c.detach().to(torch::kCPU, torch::kFloat).contiguous();
    hash = fnv1a64(std::string_view(static_cast<const char*>(cpu.data_ptr()), cpu.nbytes()), hash);
  }
  return hex64(hash);
}

void ResidualCodebook::save(std::vector<std::pair<std::string, torch::Tensor>>& out, const std::string& prefix) const {
  check_ready("save");
  USERIP_CHECK(!prefix.empty(), "codebook save: empty tensor name prefix");
  for (int r = 0; r < levels_; ++r) {
    out.emplace_back(prefix + ".level" + std::to_string(r),
                     codewords_[r].detach().to(torch::kCPU, torch::kFloat).contiguous().clone());
  }
}

ResidualCodebook ResidualCodebook::from_tensors(const std::map<std::string, torch::Tensor>& tensors,
                                                const std::string& prefix) {
  const std::string stem = prefix + ".level";
  auto name_of = [&](int r) { return stem + std::to_string(r); };
  std::vector<torch::Tensor> levels;
  for (int r = 0;; ++r) {
    auto found = tensors.find(name_of(r));
    if (found == tensors.end()) break;
    const auto& t = found->second;
    const auto name = name_of(r);
    USERIP_CHECK(r < kMaxLevels, "codebook tensor '{}': more than {} levels", name, kMaxLevels);
    USERIP_CHECK(t.defined() && t.dim() == 2, "codebook tensor '{}' must be 2-D [codes, dim], got {}", name,
                 t.defined() ? shape_text(t) : std::string("undefined"));
    USERIP_CHECK(at::isFloatingType(t.scalar_type()), "codebook tensor '{}' must be floating point, got {}", name,
                 c10::toString(t.scalar_type()));
    USERIP_CHECK(t.size(0) >= 1 && t.size(0) <= kMaxCodes && t.size(1) >= 1,
                 "codebook tensor '{}' has shape {}: codes must lie in [1, {}] and dim be > 0", name, shape_text(t),
                 kMaxCodes);
    if (r > 0) {
      USERIP_CHECK(t.sizes() == levels[0].sizes(), "codebook tensor '{}' has shape {}, unlike '{}' {}", name,
                   shape_text(t), name_of(0), shape_text(levels[0]));
    }
    levels.push_back(t.detach().to(torch::kFloat).clone());
  }
  USERIP_CHECK(!levels.empty(), "codebook tensor '{}' not found", name_of(0));
  // A level past a gap would be silently dropped: refuse it instead.
  for (const auto& entry : tensors) {
    const auto& name = entry.first;
    if (name.compare(0, stem.size(), stem) != 0) continue;
    const auto suffix = name.substr(stem.size());
    const bool digits = std::all_of(suffix.begin(), suffix.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
    // Digits spelled as name_of() spells them ("level01" is not level 1).
    const bool known = !suffix.empty() && digits && suffix.size() < 4 &&
                       std::stoi(suffix) < static_cast<int>(levels.size()) && name_of(std::stoi(suffix)) == name;
    USERIP_CHECK(known, "codebook tensor '{}' does not follow '{}' .. '{}' (a level is missing or misnamed)", name,
                 name_of(0), name_of(static_cast<int>(levels.size()) - 1));
  }
  ResidualCodebook book(levels[0].size(1), levels[0].size(0), static_cast<int>(levels.size()));
  book.codewords_ = std::move(levels);
  return book;
}

ResidualCodebook ResidualCodebook::from_source(const tensor::TensorSource& source, const std::string& prefix,
                                               torch::Device device) {
  const std::string stem = prefix + ".level";
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& name : source.names()) {
    if (name.compare(0, stem.size(), stem) == 0) tensors.emplace(name, source.load(name, torch::kFloat, device));
  }
  USERIP_CHECK(!tensors.empty(), "codebook tensor '{}0' not found in {}", stem, source.description());
  return from_tensors(tensors, prefix);
}

CodeUsage code_usage(const torch::Tensor& codes_of_one_level, std::int64_t num_codes) {
  USERIP_CHECK(num_codes >= 1, "code usage: the number of codes must be >= 1, got {}", num_codes);
  USERIP_CHECK(codes_of_one_level.defined() && codes_of_one_level.dim() == 1,
               "code usage: tensor 'codes' must be 1-D [N], got {}",
               codes_of_one_level.defined() ? shape_text(codes_of_one_level) : std::string("undefined"));
  USERIP_CHECK(at::isIntegralType(codes_of_one_level.scalar_type(), /*includeBool=*/false),
               "code usage: tensor 'codes' must be integer, got {}", c10::toString(codes_of_one_level.scalar_type()));
  const auto cpu = codes_of_one_level.detach().to(torch::kCPU, torch::kLong).contiguous();
  const auto* values = cpu.data_ptr<std::int64_t>();
  CodeUsage usage;
  usage.counts.assign(static_cast<std::size_t>(num_codes), 0);
  for (std::int64_t i = 0; i < cpu.numel(); ++i) {
    USERIP_CHECK(values[i] >= 0 && values[i] < num_codes, "code usage: code {} at row {} is outside [0, {})", values[i],
                 i, num_codes);
    ++usage.counts[static_cast<std::size_t>(values[i])];
  }
  double entropy = 0;
  const auto total = static_cast<double>(cpu.numel());
  for (auto c : usage.counts) {
    if (c == 0) {
      ++usage.dead;
    } else {
      const double p = static_cast<double>(c) / total;
      entropy -= p * std::log(p);
    }
  }
  usage.perplexity = cpu.numel() > 0 ? std::exp(entropy) : 0.0;
  return usage;
}

std::string code_field_name(const std::string& attribute, int level) {
  return level == 0 ? attribute : fmt::format("{}.{}", attribute, level + 1);
}

}  // namespace userip::quantize
