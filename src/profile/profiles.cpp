// Profiles and their files: profiles.safetensors, users.txt, codes.csv and profile.json.
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
#include "userip/tensor/tensor_file.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/progress.h"
#include "userip/util/random.h"
#include "userip/util/strings.h"
#include "userip/tensor/threads.h"

namespace userip::profile {

namespace fs = std::filesystem;
using torch::indexing::Slice;
using namespace detail;

torch::Tensor Profiles::attribute_vectors(std::size_t a) const {
  const std::int64_t begin = attribute_offset.at(a), length = attributes.at(a).soft_tokens;
  return vectors.narrow(1, begin, length).reshape({vectors.size(0), -1});
}

std::string Profiles::codebook_fingerprint() const {
  std::uint64_t h = fnv1a64("codebooks");
  for (const auto& c : codebooks) h = fnv1a64(c.fingerprint(), h);
  return hex64(h);
}

std::vector<std::string> Profiles::field_names() const {
  std::vector<std::string> names;
  for (std::size_t a = 0; a < attributes.size() && a < codebooks.size(); ++a) {
    for (int r = 0; r < codebooks[a].levels(); ++r)
      names.push_back(quantize::code_field_name(attributes[a].name, r));
  }
  return names;
}


void save_profiles(const Profiles& profiles, const fs::path& dir, const nlohmann::json& record) {
  fs::create_directories(dir);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"profiles", profiles.vectors.detach().cpu().contiguous()}};
  for (std::size_t a = 0; a < profiles.codebooks.size(); ++a)
    profiles.codebooks[a].save(tensors, "codebook." + profiles.attributes[a].name);
  tensor::write_safetensors(dir / "profiles.safetensors", tensors);
  std::string users;
  for (const auto& id : profiles.user_ids) {
    USERIP_CHECK(id.find('\n') == std::string::npos, "user id '{}' contains a newline; users.txt cannot hold it", id);
    users += id + "\n";
  }
  write_file_atomic(dir / "users.txt", users);
  nlohmann::json out = record;
  out["users"] = profiles.user_ids.size();
  out["attributes"] = nlohmann::json::array();
  for (std::size_t a = 0; a < profiles.attributes.size(); ++a) {
    const auto& spec = profiles.attributes[a];
    nlohmann::json attr = {{"name", spec.name}, {"soft_tokens", spec.soft_tokens}};
    if (a < profiles.codebooks.size())
      attr.update({{"codes", profiles.codebooks[a].codes()}, {"levels", profiles.codebooks[a].levels()}});
    out["attributes"].push_back(attr);
  }
  out["dim"] = profiles.vectors.size(2);
  if (!profiles.likelihood_start_codes.empty()) out["likelihood_start_codes"] = profiles.likelihood_start_codes;
  if (profiles.has_codes()) {
    out["codebook_fingerprint"] = profiles.codebook_fingerprint();
    out["fields"] = nlohmann::json::array();
    auto names = profiles.field_names();
    std::size_t f = 0;
    for (std::size_t a = 0; a < profiles.codebooks.size(); ++a)
      for (int r = 0; r < profiles.codebooks[a].levels(); ++r)
        out["fields"].push_back({{"name", names[f++]}, {"cardinality", profiles.codebooks[a].codes()}});
    auto codes = profiles.codes.cpu().contiguous();
    std::string csv = "user";
    for (const auto& n : names) csv += "," + data::csv_escape(n);
    csv += "\n";
    auto c = codes.accessor<std::int64_t, 3>();
    for (std::size_t u = 0; u < profiles.user_ids.size(); ++u) {
      csv += data::csv_escape(profiles.user_ids[u]);
      for (std::int64_t a = 0; a < codes.size(1); ++a)
        for (std::int64_t r = 0; r < codes.size(2); ++r) csv += fmt::format(",{}", c[static_cast<std::int64_t>(u)][a][r]);
      csv += "\n";
    }
    write_file_atomic(dir / "codes.csv", csv);
  } else {
    fs::remove(dir / "codes.csv");
  }
  write_file_atomic(dir / "profile.json", out.dump(2));
}

SavedFit load_fit(const fs::path& dir, const data::Dataset& dataset, const ProfileTemplate& profile_template) {
  const fs::path record_file = dir / "profile.json";
  USERIP_CHECK(fs::exists(record_file), "{}: not a profile directory (no profile.json; run `userip profile fit`)",
               dir.string());
  SavedFit saved;
  try {
    saved.record = nlohmann::json::parse(read_file(record_file));
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: malformed JSON: {}", record_file.string(), e.what());
  }
  USERIP_CHECK(saved.record.contains("options"), "{}: no \"options\" object", record_file.string());
  saved.options = options_from_json(saved.record["options"], record_file.string());
  auto& p = saved.profiles;
  p.attributes = profile_template.attributes();
  for (std::size_t a = 0; a < p.attributes.size(); ++a) p.attribute_offset.push_back(profile_template.soft_offset(a));

  auto source = tensor::open_safetensors(dir / "profiles.safetensors");
  p.vectors = source->load("profiles", torch::kFloat);
  USERIP_CHECK(p.vectors.dim() == 3 && p.vectors.size(1) == profile_template.total_soft_tokens(),
               "{}: tensor 'profiles' has shape {} but the template has {} soft tokens", source->description(),
               p.vectors.sizes().vec(), profile_template.total_soft_tokens());
  std::ifstream users(dir / "users.txt");
  USERIP_CHECK(users, "{}: cannot open users.txt", dir.string());
  std::string line;
  std::size_t line_number = 0;
  while (std::getline(users, line)) {
    ++line_number;
    auto user = dataset.find_user(line);
    USERIP_CHECK(user.has_value(), "{}:{}: user '{}' is not in the dataset", (dir / "users.txt").string(),
                 line_number, line);
    p.users.push_back(*user);
    p.user_ids.push_back(line);
  }
  USERIP_CHECK(static_cast<std::int64_t>(p.users.size()) == p.vectors.size(0),
               "{}: users.txt lists {} users but 'profiles' has {} rows", dir.string(), p.users.size(), p.vectors.size(0));
  if (source->has("codebook." + p.attributes.at(0).name + ".level0")) {
    for (const auto& spec : p.attributes) {
      p.codebooks.push_back(quantize::ResidualCodebook::from_source(*source, "codebook." + spec.name));
    }
    std::vector<torch::Tensor> codes;
    for (std::size_t a = 0; a < p.codebooks.size(); ++a) codes.push_back(p.codebooks[a].assign(p.attribute_vectors(a)));
    p.codes = torch::stack(codes, 1);
  }
  if (saved.record.contains("likelihood_start_codes")) {
    try {
      p.likelihood_start_codes = saved.record["likelihood_start_codes"].get<std::vector<std::int64_t>>();
    } catch (const nlohmann::json::exception& e) {
      fail("{}: \"likelihood_start_codes\" is not a list of codes: {}", record_file.string(), e.what());
    }
    USERIP_CHECK(p.likelihood_start_codes.size() == p.codebooks.size(),
                 "{}: \"likelihood_start_codes\" has {} codes for {} codebooks", record_file.string(),
                 p.likelihood_start_codes.size(), p.codebooks.size());
    for (std::size_t a = 0; a < p.codebooks.size(); ++a)
      USERIP_CHECK(p.likelihood_start_codes[a] >= 0 && p.likelihood_start_codes[a] < p.codebooks[a].codes(),
                   "{}: \"likelihood_start_codes\" holds code {} for attribute '{}', which has {} codes",
                   record_file.string(), p.likelihood_start_codes[a], p.attributes[a].name, p.codebooks[a].codes());
  }
  return saved;
}

}  // namespace userip::profile
