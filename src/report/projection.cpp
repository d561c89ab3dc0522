// The profile scatter: each attribute's profile vectors on their first two principal components.
#include <fmt/ranges.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <sstream>
#include <unordered_map>

#include "report/inputs.h"
#include "userip/data/records.h"
#include "userip/tensor/tensor_file.h"
#include "userip/report/report.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/strings.h"

namespace userip::report {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> read_users(const fs::path& file) {
  USERIP_CHECK(fs::is_regular_file(file), "{} does not exist (expected the output of `userip profile fit`)",
               file.string());
  std::vector<std::string> users;
  std::istringstream lines(read_file(file));
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    users.push_back(line);
  }
  while (!users.empty() && users.back().empty()) users.pop_back();
  return users;
}

// The level-1 code of every attribute by user, from codes.csv (whose columns are the attribute
// names, deeper levels suffixed ".2", ...). Empty when the fit has no codes (--ablation no-codebook).
std::unordered_map<std::string, std::vector<std::int64_t>> read_level1_codes(
    const fs::path& file, const std::vector<ProfileAttribute>& attributes, const std::vector<std::string>& users) {
  std::unordered_map<std::string, std::vector<std::int64_t>> codes;
  if (!fs::exists(file)) return codes;
  data::RecordOptions options;
  options.csv_delimiter = ',';
  auto reader = data::open_records(file, options);
  USERIP_CHECK(reader->column_index("user") == 0, "{}:1: the first column must be 'user'", file.string());
  std::vector<int> columns;
  for (const auto& a : attributes) {
    const int column = reader->column_index(a.name);
    USERIP_CHECK(column > 0, "{}:1: no column '{}' (the attribute of profile.json)", file.string(), a.name);
    columns.push_back(column);
  }
  std::unordered_map<std::string, std::size_t> row_of;
  for (std::size_t i = 0; i < users.size(); ++i) row_of.emplace(users[i], i);
  for (const auto& a : attributes) codes[a.name].assign(users.size(), -1);
  while (reader->next()) {
    auto user = reader->field(0);
    USERIP_CHECK(user, "{}: no user id", reader->where());
    auto row = row_of.find(std::string(*user));
    USERIP_CHECK(row != row_of.end(), "{}: user {} is not in users.txt", reader->where(), quote_for_message(*user));
    for (std::size_t a = 0; a < attributes.size(); ++a) {
      auto text = reader->field(columns[a]);
      auto code = text ? parse_int64(*text) : std::nullopt;
      USERIP_CHECK(code && *code >= 0, "{}: '{}' is {}, not a code", reader->where(), attributes[a].name,
                   text ? quote_for_message(*text) : std::string("missing"));
      codes[attributes[a].name][row->second] = *code;
    }
  }
  return codes;
}

// Flips `components` ([k, D]) so that each one's largest loading is positive.
torch::Tensor fix_signs(const torch::Tensor& components) {
  auto largest = components.abs().argmax(1, /*keepdim=*/true);
  auto signs = components.gather(1, largest).sign();
  return components * torch::where(signs == 0, torch::ones_like(signs), signs);
}

}  // namespace

std::vector<ProfileProjection> project_profiles(const fs::path& dir, std::size_t max_points) {
  USERIP_CHECK(max_points >= 1, "at most {} projected points: nothing to draw", max_points);
  const auto attributes = read_profile_attributes(dir / "profile.json");
  const auto users = read_users(dir / "users.txt");
  const fs::path tensor_file = dir / "profiles.safetensors";
  USERIP_CHECK(fs::is_regular_file(tensor_file), "{} does not exist (expected the output of `userip profile fit`)",
               tensor_file.string());
  auto source = tensor::open_safetensors(tensor_file);
  USERIP_CHECK(source->has("profiles"), "{}: no tensor 'profiles'", tensor_file.string());
  torch::NoGradGuard no_grad;
  auto profiles = source->load("profiles", torch::kFloat32);
  std::int64_t soft_tokens = 0;
  for (const auto& a : attributes) soft_tokens += a.soft_tokens;
  USERIP_CHECK(profiles.dim() == 3 && profiles.size(0) == static_cast<std::int64_t>(users.size()) &&
                   profiles.size(1) == soft_tokens,
               "{}: 'profiles' has shape {} but users.txt has {} users and profile.json {} soft tokens in all "
               "(expected [users, soft tokens, hidden])",
               tensor_file.string(), profiles.sizes().vec(), users.size(), soft_tokens);
  const auto codes = read_level1_codes(dir / "codes.csv", attributes, users);

  // Evenly spaced rows: deterministic, and spread over the whole file rather than its head.
  const std::size_t n = std::min(users.size(), max_points);
  std::vector<std::int64_t> rows(n);
  for (std::size_t i = 0; i < n; ++i) rows[i] = static_cast<std::int64_t>(i * users.size() / n);
  // Double precision for the SVD, on the subsample only: the whole tensor can be gigabytes.
  auto sample = profiles.index_select(0, torch::tensor(rows, torch::kInt64)).to(torch::kFloat64);
  profiles = torch::Tensor();

  std::vector<ProfileProjection> out;
  std::int64_t offset = 0;
  for (const auto& a : attributes) {
    ProfileProjection p;
    p.attribute = a.name;
    p.users = users.size();
    auto x = sample.narrow(1, offset, a.soft_tokens).reshape({static_cast<std::int64_t>(n), -1});
    offset += a.soft_tokens;
    x = x - x.mean(0, /*keepdim=*/true);
    torch::Tensor xy = torch::zeros({static_cast<std::int64_t>(n), 2}, torch::kFloat64);
    if (n >= 2) {
      auto [u, s, vh] = torch::linalg_svd(x, /*full_matrices=*/false);
      const std::int64_t k = std::min<std::int64_t>(2, vh.size(0));
      auto components = fix_signs(vh.narrow(0, 0, k));
      xy.narrow(1, 0, k).copy_(x.matmul(components.t()));
      const double total = (s * s).sum().item<double>();
      for (std::int64_t c = 0; c < k && total > 0; ++c)
        p.explained_variance[static_cast<std::size_t>(c)] = (s[c] * s[c]).item<double>() / total;
    }
    auto points = xy.accessor<double, 2>();
    const auto found = codes.find(a.name);
    for (std::size_t i = 0; i < n; ++i) {
      ProfileProjection::Point point;
      point.x = points[static_cast<std::int64_t>(i)][0];
      point.y = points[static_cast<std::int64_t>(i)][1];
      if (found != codes.end()) point.code = found->second[static_cast<std::size_t>(rows[i])];
      p.codes = std::max(p.codes, point.code + 1);
      p.points.push_back(point);
    }
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace userip::report
