// The split-and-merge move of the refinement rounds (fit_profiles decides when; codebook.h moves codewords).
#include "userip/profile/fit.h"

#include "profile/fit_internal.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/autograd.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <unordered_map>

#include "userip/data/export.h"
#include "userip/lm/tensor_file.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/progress.h"
#include "userip/util/random.h"
#include "userip/util/strings.h"
#include "userip/lm/threads.h"

namespace userip::profile {

namespace fs = std::filesystem;
using torch::indexing::Slice;
using namespace detail;

namespace detail {

// The split-and-merge move (codebook.h) on one attribute, in place on `codes` ([U] level-0 codes of
// every user) and the codebook: the members of `dissolved` among `rows` take their `runner_up`
// codes, and the codeword of `dissolved` splits the code whose members' `gradients` ([U, dim], each
// user's gradient of its NLL per token with respect to its codeword) spread most, along their main
// direction. The members on the side of the new codeword (the side their gradient descends to) take it.
RoundLog::CodeMove split_and_merge(ResidualCodebook& codebook, torch::Tensor codes, const torch::Tensor& runner_up,
                                   const torch::Tensor& gradients, const torch::Tensor& rows, std::int64_t dissolved) {
  RoundLog::CodeMove move;
  move.dissolved = dissolved;
  move.split = -1;
  const auto before = codes.index_select(0, rows);
  const auto g = gradients.index_select(0, rows).to(torch::kFloat);
  auto after = torch::where(before == dissolved, runner_up.index_select(0, rows), before);
  double widest = -1;
  torch::Tensor direction;
  for (std::int64_t k = 0; k < codebook.codes(); ++k) {
    if (k == dissolved) continue;
    const auto members = (before == k).nonzero().squeeze(1);
    if (members.size(0) < 2) continue;
    auto spread = principal_direction(g.index_select(0, members));
    if (spread.spread > widest) {
      widest = spread.spread;
      direction = spread.direction;
      move.split = k;
      move.split_members = members.size(0);
    }
  }
  if (move.split >= 0 && direction.norm().item<double>() > 0) {
    codebook.split_code(move.split, dissolved, direction);
    const auto to_new = (before == move.split).logical_and(g.mv(direction.to(g.device())) < 0);
    move.moved = to_new.sum().item<std::int64_t>();
    after = torch::where(to_new, torch::full_like(after, dissolved), after);
  } else {
    move.split = -1;
  }
  codes.index_copy_(0, rows, after);
  return move;
}

}  // namespace detail

}  // namespace userip::profile
