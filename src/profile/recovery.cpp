#include "userip/profile/recovery.h"

#include <algorithm>
#include <set>

#include "userip/quantize/clustering.h"
#include "userip/util/error.h"

namespace userip::profile {
namespace {

std::vector<std::vector<std::int64_t>> contingency(const std::vector<std::int32_t>& codes,
                                                   const std::vector<std::int32_t>& classes) {
  if (codes.empty()) return {};
  const auto rows = 1 + *std::max_element(codes.begin(), codes.end());
  const auto columns = 1 + *std::max_element(classes.begin(), classes.end());
  std::vector<std::vector<std::int64_t>> table(static_cast<std::size_t>(rows),
                                               std::vector<std::int64_t>(static_cast<std::size_t>(columns), 0));
  for (std::size_t i = 0; i < codes.size(); ++i)
    ++table[static_cast<std::size_t>(codes[i])][static_cast<std::size_t>(classes[i])];
  return table;
}

}  // namespace

nlohmann::json RecoveryReport::to_json() const {
  nlohmann::json per = nlohmann::json::object();
  for (std::size_t a = 0; a < attributes.size(); ++a)
    per[attributes[a]] = {{"taste_nmi", taste_nmi[a]},
                          {"background_nmi", background_nmi[a]},
                          {"users_by_code_and_taste", taste_table[a]},
                          {"users_by_code_and_background", background_table[a]}};
  return {{"users", users},
          {"codes", per},
          {"control_category_histogram_kmeans", {{"taste_nmi", control_taste_nmi}, {"background_nmi", control_background_nmi}}}};
}

RecoveryReport ground_truth_recovery(const Profiles& profiles, const data::SynthGroundTruth& truth,
                                     const data::SplitView& history, const std::string& field, std::uint64_t seed) {
  USERIP_CHECK(profiles.has_codes(), "these profiles have no codes to compare with the ground truth");
  RecoveryReport r;
  r.users = static_cast<std::int64_t>(profiles.users.size());
  std::vector<std::int32_t> taste, background;
  for (auto u : profiles.users) {
    USERIP_CHECK(u < truth.taste.size(), "the ground truth has no class for user {}", u);
    taste.push_back(truth.taste[u]);
    background.push_back(truth.background[u]);
  }
  const auto codes = profiles.codes.cpu();
  for (std::size_t a = 0; a < profiles.attributes.size(); ++a) {
    std::vector<std::int32_t> c;
    for (std::int64_t i = 0; i < codes.size(0); ++i)
      c.push_back(static_cast<std::int32_t>(codes[i][static_cast<std::int64_t>(a)][0].item<std::int64_t>()));
    r.attributes.push_back(profiles.attributes[a].name);
    r.taste_nmi.push_back(quantize::normalized_mutual_information(c, taste));
    r.background_nmi.push_back(quantize::normalized_mutual_information(c, background));
    r.taste_table.push_back(contingency(c, taste));
    r.background_table.push_back(contingency(c, background));
  }
  const auto histograms = quantize::category_histograms(history, profiles.users, field);
  auto classes = [](const std::vector<std::int32_t>& v) {
    return static_cast<std::int64_t>(std::set<std::int32_t>(v.begin(), v.end()).size());
  };
  r.control_taste_nmi =
      quantize::normalized_mutual_information(quantize::kmeans(histograms.matrix, classes(taste), seed).assignment, taste);
  r.control_background_nmi =
      quantize::normalized_mutual_information(quantize::kmeans(histograms.matrix, classes(background), seed).assignment, background);
  return r;
}

}  // namespace userip::profile
