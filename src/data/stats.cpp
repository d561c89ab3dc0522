#include "userip/data/stats.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "userip/data/split.h"

namespace userip::data {

namespace {
nlohmann::json quantiles(std::vector<std::size_t> counts) {
  nlohmann::json q = nlohmann::json::object();
  if (counts.empty()) return q;
  std::sort(counts.begin(), counts.end());
  auto at = [&](double p) { return counts[static_cast<std::size_t>(std::floor(p * (counts.size() - 1)))]; };
  double sum = 0;
  for (auto c : counts) sum += static_cast<double>(c);
  q["min"] = counts.front();
  q["p10"] = at(0.10);
  q["p25"] = at(0.25);
  q["median"] = at(0.50);
  q["p75"] = at(0.75);
  q["p90"] = at(0.90);
  q["p99"] = at(0.99);
  q["max"] = counts.back();
  q["mean"] = sum / static_cast<double>(counts.size());
  return q;
}
}  // namespace

nlohmann::json dataset_stats(const Dataset& d) {
  const auto& x = d.interactions;
  nlohmann::json s;
  s["users"] = d.num_users();
  s["items"] = d.num_items();
  s["interactions"] = d.num_interactions();
  double cells = static_cast<double>(d.num_users()) * static_cast<double>(d.num_items());
  s["density"] = cells > 0 ? static_cast<double>(d.num_interactions()) / cells : 0.0;
  s["sparsity"] = cells > 0 ? 1.0 - static_cast<double>(d.num_interactions()) / cells : 0.0;
  s["label_kind"] = d.label_kind == LabelKind::rating ? "rating" : "click";

  std::vector<std::size_t> per_user(d.num_users()), per_item(d.num_items());
  for (std::size_t i = 0; i < x.size(); ++i) {
    per_user[x.user[i]]++;
    per_item[x.item[i]]++;
  }
  s["interactions_per_user"] = quantiles(per_user);
  s["interactions_per_item"] = quantiles(per_item);

  std::map<float, std::size_t> histogram;
  for (float r : x.rating) histogram[r]++;
  nlohmann::json hist = nlohmann::json::array();
  for (auto [value, count] : histogram) hist.push_back({{"value", value}, {"count", count}});
  s["value_histogram"] = hist;

  if (!x.timestamp.empty()) {
    auto [lo, hi] = std::minmax_element(x.timestamp.begin(), x.timestamp.end());
    s["timestamp_range"] = {*lo, *hi};
  }
  nlohmann::json fields = nlohmann::json::array();
  for (const auto& f : d.item_fields) {
    std::size_t missing = std::count(f.values.begin(), f.values.end(), std::string());
    fields.push_back({{"name", f.name}, {"kind", to_string(f.kind)}, {"missing", missing}});
  }
  s["item_fields"] = fields;

  if (d.has_split()) {
    s["split_config"] = d.split.config.to_json();
    nlohmann::json parts = nlohmann::json::object();
    std::vector<std::size_t> count(kNumSplitParts), clicks(kNumSplitParts);
    std::vector<std::vector<bool>> users_in(kNumSplitParts, std::vector<bool>(d.num_users()));
    for (std::size_t i = 0; i < x.size(); ++i) {
      int p = static_cast<int>(d.split.part[i]);
      count[p]++;
      clicks[p] += d.label(i) ? 1 : 0;
      users_in[p][x.user[i]] = true;
    }
    for (int p = 0; p < kNumSplitParts; ++p) {
      std::size_t users = std::count(users_in[p].begin(), users_in[p].end(), true);
      parts[to_string(static_cast<SplitPart>(p))] = {
          {"interactions", count[p]},
          {"users", users},
          {"click_rate", count[p] ? static_cast<double>(clicks[p]) / static_cast<double>(count[p]) : 0.0}};
    }
    s["split"] = parts;
    auto cold = cold_users(d);
    s["cold_users"] = std::count(cold.begin(), cold.end(), true);
  }
  return s;
}

std::string format_stats(const nlohmann::json& s) {
  std::string out;
  out += fmt::format("users          {}\n", s["users"].get<std::size_t>());
  out += fmt::format("items          {}\n", s["items"].get<std::size_t>());
  out += fmt::format("interactions   {}\n", s["interactions"].get<std::size_t>());
  out += fmt::format("sparsity       {:.4f}% (density {:.4f}%)\n", 100 * s["sparsity"].get<double>(),
                     100 * s["density"].get<double>());
  auto quantile_line = [&](const char* name, const nlohmann::json& q) {
    if (q.empty()) return;
    out += fmt::format("{:<15}min {} p10 {} p25 {} median {} p75 {} p90 {} p99 {} max {} mean {:.1f}\n", name,
                       q["min"].get<std::size_t>(), q["p10"].get<std::size_t>(), q["p25"].get<std::size_t>(),
                       q["median"].get<std::size_t>(), q["p75"].get<std::size_t>(), q["p90"].get<std::size_t>(),
                       q["p99"].get<std::size_t>(), q["max"].get<std::size_t>(), q["mean"].get<double>());
  };
  quantile_line("per user", s["interactions_per_user"]);
  quantile_line("per item", s["interactions_per_item"]);
  out += fmt::format("{} histogram:\n", s["label_kind"].get<std::string>());
  std::size_t total = std::max<std::size_t>(1, s["interactions"].get<std::size_t>());
  for (const auto& bin : s["value_histogram"]) {
    std::size_t count = bin["count"].get<std::size_t>();
    int width = static_cast<int>(std::lround(40.0 * static_cast<double>(count) / static_cast<double>(total)));
    out += fmt::format("  {:>5g} {:>9} {}\n", bin["value"].get<double>(), count, std::string(width, '#'));
  }
  if (!s["item_fields"].empty()) {
    out += "item fields:\n";
    for (const auto& f : s["item_fields"]) {
      out += fmt::format("  {:<16} {:<14} missing {}\n", f["name"].get<std::string>(), f["kind"].get<std::string>(),
                         f["missing"].get<std::size_t>());
    }
  }
  if (s.contains("split")) {
    const auto& c = s["split_config"];
    out += fmt::format("split (train {} / valid {} / test {}, cold users {:.0f}% = {}, seed {}, click = {} >= {}):\n",
                       c["train_ratio"].get<double>(), c["valid_ratio"].get<double>(), c["test_ratio"].get<double>(),
                       100 * c["cold_fraction"].get<double>(), s["cold_users"].get<std::size_t>(),
                       c["seed"].get<std::uint64_t>(), s["label_kind"].get<std::string>(),
                       c["label_threshold"].get<double>());
    for (int part = 0; part < kNumSplitParts; ++part) {
      std::string name = to_string(static_cast<SplitPart>(part));
      const auto& p = s["split"][name];
      out += fmt::format("  {:<13} {:>9} interactions {:>7} users  click rate {:.3f}\n", name,
                         p["interactions"].get<std::size_t>(), p["users"].get<std::size_t>(),
                         p["click_rate"].get<double>());
    }
  } else {
    out += "split: none (run `userip data split`)\n";
  }
  return out;
}

}  // namespace userip::data
