#pragma once
// Residual codebooks: the quantizer that turns a user's profile vector for one attribute into
// a few small integer IDs. Level 0 quantizes the vector; level r quantizes what levels < r
// left over, so the IDs form a hierarchy (coarse taste, then finer corrections).
//
// Every operation computes on the device of the tensors it is given (the codewords, which are
// small, are moved there) and is deterministic for a seed on the CPU.
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "userip/util/random.h"

namespace userip::tensor {
class TensorSource;
}

namespace userip::quantize {

class ResidualCodebook {
 public:
  // Limits accepted by the constructor (a code must fit the feature bank's integer columns;
  // more than a handful of levels only re-quantizes noise).
  static constexpr std::int64_t kMaxCodes = 65536;
  static constexpr int kMaxLevels = 8;

  ResidualCodebook() = default;
  // Throws userip::Error unless dim > 0, 1 <= codes <= 65536 and 1 <= levels <= 8. The codewords
  // stay empty (initialized() is false) until an init_* call or from_tensors().
  ResidualCodebook(std::int64_t dim, std::int64_t codes, int levels);

  std::int64_t dim() const { return dim_; }
  std::int64_t codes() const { return codes_; }
  int levels() const { return levels_; }
  bool initialized() const { return !codewords_.empty(); }

  // Codewords of each level, [codes, dim] float32. Modifiable: the `joint` mode hands them to an
  // optimiser (set requires_grad on them); update_means() writes into the same tensors in place
  // when their device matches, so an optimiser's references stay valid.
  std::vector<torch::Tensor>& codewords() { return codewords_; }
  const std::vector<torch::Tensor>& codewords() const { return codewords_; }

  // k-means++ seeding, level by level, on x [N, dim]: level r is seeded on the residuals that
  // levels < r (already seeded) leave. The codewords are created on x's device. With N < codes
  // the surplus codes copy a point plus a small deterministic jitter (and a warning is logged).
  void init_kmeanspp(const torch::Tensor& x, std::uint64_t seed);
  // The best of `restarts` k-means++ seedings: each is followed by `iterations` Lloyd steps
  // (update_means on the nearest assignment) on a scratch copy and judged by the quantization
  // error they end with; the codebook is left at the kept *seeding*, so that the caller's own
  // Lloyd steps reproduce the judged run. Seeding 0 uses `seed` itself (one restart is exactly
  // init_kmeanspp(x, seed), with no trial run), seeding r > 0 a seed derived from it.
  struct Seeding {
    int kept = 0;
    double best_error = 0;   // quantization error after the Lloyd steps (0 with one restart: not run)
    double worst_error = 0;
  };
  Seeding init_kmeanspp_best_of(const torch::Tensor& x, std::uint64_t seed, int restarts, int iterations);
  // Every codeword entry drawn from U[-1/K, 1/K], as the authors' released code initialises.
  void init_uniform(std::uint64_t seed, torch::Device device = torch::kCPU);

  // Greedy residual assignment: at each level the nearest codeword (squared L2) to what the
  // earlier levels left. Returns codes [N, levels] int64 on x's device.
  torch::Tensor assign(const torch::Tensor& x) const;
  // Sum over levels of the chosen codewords: [N, dim] on codes' device. Differentiable with
  // respect to the codewords (the joint mode's codebook loss goes through it).
  torch::Tensor reconstruct(const torch::Tensor& codes) const;

  struct UpdateStats {
    std::int64_t reseeded = 0;                       // empty codes re-seeded, all levels together
    std::vector<std::int64_t> reseeded_per_level;    // size levels()
    torch::Tensor codes;                             // [N, levels] int64: the assignment the means used
  };
  // M-step, level by level. Level 0 uses codes[:, 0] as given (the E-step's hard assignment).
  // For level r >= 1 the target is the residual after the *updated* levels < r, which moved, so
  // its assignment is recomputed against level r's current codewords before the means are taken:
  // each level does one complete Lloyd step on its own residuals. Each codeword becomes the mean
  // of the residuals assigned to it. A code nobody chose is re-seeded with the residual of the
  // point that has the largest remaining error at that level (ties: lowest point index; the next
  // empty code takes the next point); that point moves to the re-seeded code, the mean of the
  // code it left is not recomputed (the next round does). Where no point has error left, the
  // re-seeded code copies a point plus a small deterministic jitter. Returns what happened.
  UpdateStats update_means(const torch::Tensor& x, const torch::Tensor& codes);

  // Re-seeding for fits that move codewords by gradient rather than by means (profile refinement): there a code
  // nobody chose gets no gradient and would stay dead. Each level-0 code that no entry of `codes` ([N] or
  // [N, levels] int64) names takes half of the most chosen code, as in LBG splitting: both codewords step apart in
  // opposite directions (a Gaussian draw from `rng`, of norm kSplitStep times the halved codeword's), so that the
  // next assignment by the fit's own criterion divides the members between them. The split halves the expected
  // count, so several dead codes spread over the largest codes. Stops when no code has two members. Returns the
  // number of codes split. With `min_members` > 1, a code chosen by fewer entries counts as dead too: its few
  // members go back to the next assignment, and its codeword is better spent splitting a crowded code.
  static constexpr double kSplitStep = 0.05;
  int split_into_dead_codes(const torch::Tensor& codes, Rng rng, std::int64_t min_members = 1);
  // One such split: level-0 codeword `to` becomes codeword `from` plus a step along `direction` ([dim], any norm
  // but zero) of norm kSplitStep times codeword `from`'s, and codeword `from` takes the same step the other way.
  void split_code(std::int64_t from, std::int64_t to, const torch::Tensor& direction);

  // Mean over points of ||x - reconstruct(assign(x))||^2.
  double quantization_error(const torch::Tensor& x) const;

  // Stable hex hash of the shape and the codeword bytes (float32, little-endian as in memory).
  std::string fingerprint() const;

  // Appends "<prefix>.level<r>" (r = 0 .. levels-1, the codes' column index) as CPU float32
  // [codes, dim] tensors, ready for tensor::write_safetensors.
  void save(std::vector<std::pair<std::string, torch::Tensor>>& out, const std::string& prefix) const;
  // The codebook saved under `prefix`: "<prefix>.level0", "<prefix>.level1", ... (consecutive,
  // at least level0). Throws naming the tensor when one is missing, not 2-D, not floating point,
  // or shaped unlike level0. Tensors are converted to float32 and kept on their device.
  static ResidualCodebook from_tensors(const std::map<std::string, torch::Tensor>& tensors,
                                       const std::string& prefix);
  // The same, reading from a checkpoint file (tensor::open_safetensors) onto `device`.
  static ResidualCodebook from_source(const tensor::TensorSource& source, const std::string& prefix,
                                      torch::Device device = torch::kCPU);

 private:
  void check_ready(const char* what) const;
  void check_points(const torch::Tensor& x, const char* name) const;
  void check_codes(const torch::Tensor& codes, std::int64_t rows) const;
  std::vector<torch::Tensor> codewords_on(torch::Device device) const;

  std::int64_t dim_ = 0;
  std::int64_t codes_ = 0;
  int levels_ = 0;
  std::vector<torch::Tensor> codewords_;
};

struct CodeUsage {
  std::vector<std::int64_t> counts;  // per code
  double perplexity = 0;             // exp(entropy of counts / N); K for uniform use, 1 for one code
  std::int64_t dead = 0;             // codes with no point
};
// Usage of one level's codes ([N] int64, any device, values in [0, num_codes)).
// With N = 0 every code is dead and the perplexity is 0.
CodeUsage code_usage(const torch::Tensor& codes_of_one_level, std::int64_t num_codes);

// The split-and-merge move of refinement by likelihood. A codebook fitted from a poor start can
// hold two codes for one group of users and one code for two groups: each code is then the best
// its members can do given the others, and no assignment or gradient step leaves that state.
// Merging the two and splitting the third fixes it; what follows tells where.
//
// Per code, the mean of `values` ([N] float) over the entries whose `codes` ([N] int64, values in
// [0, num_codes)) name it; NaN for a code nobody names.
std::vector<double> mean_per_code(const torch::Tensor& codes, const torch::Tensor& values, std::int64_t num_codes);
// The code to dissolve, given each user's likelihood margin (NLL per token under its second-best
// code minus under its own): the code whose members' mean margin is lowest, when that is under
// `ratio` times the median over the codes anyone names. Its members lose little by moving to their
// second choices, so it duplicates a neighbour rather than describing a group of its own. code = -1
// when no code qualifies, fewer than three codes have members, or ratio <= 0; margin_ratio is the
// lowest mean margin over the median either way (0 when undefined).
struct RedundantCode {
  std::int64_t code = -1;
  double margin_ratio = 0;
};
RedundantCode redundant_code(const torch::Tensor& codes, const torch::Tensor& margins, std::int64_t num_codes,
                             double ratio);
// The direction along which `rows` ([n, dim], n >= 2) spread most: the unit leading eigenvector of
// their scatter about the mean (power iteration from the row farthest from the mean, so
// deterministic), with `spread` the scatter's trace (the sum of squared distances to the mean).
// Applied to the gradients of a code's members with respect to their codeword, the direction
// separates the members that want the codeword moved one way from those that want it moved the other.
struct PrincipalDirection {
  torch::Tensor direction;  // [dim] float32, unit norm (zero when all rows are equal)
  double spread = 0;
};
PrincipalDirection principal_direction(const torch::Tensor& rows);

// The name of an attribute's codebook level as a code field (codes.csv, the feature bank, the CTR
// features): the attribute's name for level 0, "NAME.2", "NAME.3", ... for the deeper levels.
std::string code_field_name(const std::string& attribute, int level);

}  // namespace userip::quantize
