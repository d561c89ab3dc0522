#pragma once
// A small, fully specified random generator (xoshiro256** seeded by splitmix64) with its own
// distributions. The standard library's distributions differ between implementations; ours
// give the same stream everywhere, so a seed reproduces a run on any machine.
#include <cstdint>
#include <vector>

namespace userip {

class Rng {
 public:
  explicit Rng(std::uint64_t seed);
  std::uint64_t next_u64();
  double uniform();                                  // [0, 1)
  double uniform(double lo, double hi);              // [lo, hi)
  std::uint64_t below(std::uint64_t bound);          // [0, bound), unbiased; bound > 0
  double normal(double mean = 0.0, double stddev = 1.0);
  bool bernoulli(double p) { return uniform() < p; }
  // Index drawn with probability proportional to weights[i] (weights >= 0, sum > 0).
  std::size_t categorical(const std::vector<double>& weights);
  template <typename T>
  void shuffle(std::vector<T>& values) {
    for (std::size_t i = values.size(); i > 1; --i) {
      std::size_t j = static_cast<std::size_t>(below(i));
      std::swap(values[i - 1], values[j]);
    }
  }
  // An independent generator for sub-task `stream` (e.g. one per user), stable under reordering.
  static Rng derive(std::uint64_t seed, std::uint64_t stream);

 private:
  std::uint64_t state_[4];
  bool has_spare_normal_ = false;
  double spare_normal_ = 0.0;
};

std::uint64_t splitmix64(std::uint64_t& state);

}  // namespace userip
