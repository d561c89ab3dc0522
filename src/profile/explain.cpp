#include "userip/profile/explain.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>
#include <map>
#include <unordered_map>

#include "userip/lm/generate.h"
#include "userip/text/corpus.h"
#include "userip/util/error.h"

namespace userip::profile {

namespace {

const data::ItemField& category_field(const data::Dataset& dataset, const std::string& name) {
  if (!name.empty()) {
    const auto* f = dataset.field(name);
    USERIP_CHECK(f, "--category-field '{}' is not an item field of the dataset", name);
    USERIP_CHECK(f->kind == data::FieldKind::category || f->kind == data::FieldKind::category_list,
                 "--category-field '{}' is a {} field; explanations need a category or category-list field", name,
                 data::to_string(f->kind));
    return *f;
  }
  for (const auto& f : dataset.item_fields)
    if (f.kind == data::FieldKind::category_list) return f;
  for (const auto& f : dataset.item_fields)
    if (f.kind == data::FieldKind::category) return f;
  fail("the dataset has no category field to describe code members with");
}

// Counts of category values over the history rows of a set of users.
struct CategoryCounts {
  std::map<std::string, double> per_value;
  double interactions = 0;
  void add_rows(const data::SplitView& history, std::uint32_t user, const data::ItemField& field) {
    for (std::size_t i = history.user_begin(user); i < history.user_end(user); ++i) {
      interactions += 1;
      for (const auto& v : data::list_values(field.values[history.item(i)])) per_value[v] += 1;
    }
  }
};

// How many of a set of users chose each item (once per user).
struct ItemUsers {
  std::unordered_map<std::uint32_t, double> per_item;
  double users = 0;
  void add_user(const data::SplitView& history, std::uint32_t user) {
    users += 1;
    std::vector<std::uint32_t> items;
    for (std::size_t i = history.user_begin(user); i < history.user_end(user); ++i) items.push_back(history.item(i));
    std::sort(items.begin(), items.end());
    items.erase(std::unique(items.begin(), items.end()), items.end());
    for (auto item : items) per_item[item] += 1;
  }
};

// The item's name as the default text names it (text::field_roles), else its id.
std::string item_name(const data::Dataset& dataset, const std::optional<std::size_t>& name_field, std::uint32_t item) {
  if (name_field) {
    const auto& value = dataset.item_fields[*name_field].values[item];
    if (!value.empty()) return value;
  }
  return dataset.item_ids[item];
}

std::vector<TypicalItem> typical_items(const data::Dataset& dataset, const std::optional<std::size_t>& name_field,
                                       const data::SplitView& history, const std::vector<std::uint32_t>& users,
                                       const ItemUsers& population, std::size_t top) {
  ItemUsers members;
  for (auto u : users) members.add_user(history, u);
  std::vector<std::pair<double, std::uint32_t>> ranked;  // (-lift, item)
  for (const auto& [item, n] : members.per_item) {
    if (n < 2 || n < 0.1 * members.users) continue;  // one member's choice says nothing of the code
    const double base = population.per_item.at(item) / population.users;
    ranked.emplace_back(-(n / members.users) / base, item);
  }
  std::sort(ranked.begin(), ranked.end());
  std::vector<TypicalItem> out;
  for (std::size_t k = 0; k < top && k < ranked.size(); ++k) {
    const auto item = ranked[k].second;
    out.push_back({item_name(dataset, name_field, item), members.per_item.at(item) / members.users, -ranked[k].first});
  }
  return out;
}

MemberStatistics statistics(const data::SplitView& history, const std::vector<std::uint32_t>& users,
                            const data::ItemField& field, const CategoryCounts& population, std::size_t top) {
  MemberStatistics s;
  s.users = static_cast<std::int64_t>(users.size());
  CategoryCounts counts;
  double rating = 0, likes = 0;
  for (auto u : users) {
    counts.add_rows(history, u, field);
    for (std::size_t i = history.user_begin(u); i < history.user_end(u); ++i) {
      rating += history.rating(i);
      likes += history.label(i) ? 1 : 0;
    }
  }
  if (counts.interactions == 0) return s;
  s.interactions_per_user = counts.interactions / static_cast<double>(users.size());
  s.mean_rating = rating / counts.interactions;
  s.like_rate = likes / counts.interactions;
  std::vector<CategoryLift> lifts;
  for (const auto& [value, n] : counts.per_value) {
    CategoryLift l;
    l.value = value;
    l.share = n / counts.interactions;
    auto it = population.per_value.find(value);
    const double base = it == population.per_value.end() ? 0 : it->second / population.interactions;
    l.lift = base > 0 ? l.share / base : 0;
    lifts.push_back(l);
  }
  // Ranked by lift among values with a meaningful share, so that what distinguishes the members
  // comes first and a rare value seen once does not.
  std::sort(lifts.begin(), lifts.end(), [](const CategoryLift& a, const CategoryLift& b) {
    const bool a_ok = a.share >= 0.02, b_ok = b.share >= 0.02;
    if (a_ok != b_ok) return a_ok;
    if (a.lift != b.lift) return a.lift > b.lift;
    return a.value < b.value;
  });
  if (lifts.size() > top) lifts.resize(top);
  s.top_categories = lifts;
  return s;
}

std::string continuation(const FitInputs& in, const SampleBuilder& builder, std::size_t attribute,
                         const UserAggregates& aggregates, const torch::Tensor& soft_rows /* [L, d] */,
                         std::int64_t max_new_tokens) {
  if (in.profile_template->probe_uses_item(attribute)) return "";
  torch::NoGradGuard no_grad;
  const auto& model = *in.model;
  auto sample = builder.probe(attribute, aggregates);
  if (const auto bos = in.tokenizer->specials().bos; bos >= 0) {  // as in training samples
    sample.ids.insert(sample.ids.begin(), bos);
    sample.soft_index.insert(sample.soft_index.begin(), -1);
  }
  auto ids = torch::tensor(std::vector<std::int64_t>(sample.ids.begin(), sample.ids.end())).unsqueeze(0).to(model.device());
  std::vector<std::uint8_t> slots_raw;
  for (auto s : sample.soft_index) slots_raw.push_back(s >= 0 ? 1 : 0);
  auto slots = torch::tensor(std::vector<std::int64_t>(slots_raw.begin(), slots_raw.end())).to(torch::kBool).unsqueeze(0).to(model.device());
  auto embeds = lm::splice_soft_tokens(model.embed(ids), slots, soft_rows.to(model.device(), model.dtype()));
  lm::GenerationOptions g;
  g.max_new_tokens = max_new_tokens;
  auto generated = lm::generate(model, embeds[0], g);
  return in.tokenizer->decode(generated.tokens);
}

std::string probe_display(const FitInputs& in, std::size_t attribute) {
  return in.profile_template->attributes()[attribute].probe;
}

}  // namespace

nlohmann::json MemberStatistics::to_json() const {
  nlohmann::json top = nlohmann::json::array();
  for (const auto& c : top_categories) top.push_back({{"value", c.value}, {"share", c.share}, {"lift", c.lift}});
  nlohmann::json items = nlohmann::json::array();
  for (const auto& i : typical_items) items.push_back({{"name", i.name}, {"share", i.share}, {"lift", i.lift}});
  return {{"users", users},
          {"interactions_per_user", interactions_per_user},
          {"mean_rating", mean_rating},
          {"like_rate", like_rate},
          {"top_categories", top},
          {"typical_items", items}};
}

nlohmann::json CodeExplanation::to_json() const {
  nlohmann::json j = {{"attribute", attribute}, {"level", level + 1},          {"code", code},
                      {"probe", probe},         {"continuation", continuation}, {"members", members.to_json()}};
  if (!continuation_note.empty()) j["continuation_note"] = continuation_note;
  return j;
}

nlohmann::json UserExplanation::to_json() const {
  nlohmann::json c = nlohmann::json::object();
  for (std::size_t f = 0; f < fields.size(); ++f) c[fields[f]] = codes[f];
  return {{"user", user}, {"codes", c}, {"continuations", continuations}, {"history", own.to_json()}};
}

std::vector<CodeExplanation> explain_codes(const FitInputs& in, const Profiles& profiles,
                                           const data::SplitView& history, const ExplainOptions& options) {
  USERIP_CHECK(profiles.has_codes(), "these profiles have no codes (fitted without codebooks): nothing to explain");
  const auto& dataset = *in.dataset;
  const auto& field = category_field(dataset, options.category_field);
  CategoryCounts population;
  ItemUsers population_items;
  for (auto u : profiles.users) population.add_rows(history, u, field), population_items.add_user(history, u);
  const auto name_field = text::field_roles(dataset).name;
  SampleOptions sample_options;
  SampleBuilder builder(dataset, history, *in.profile_template, *in.tokenizer, sample_options);
  const auto codes = profiles.codes.cpu();
  const auto c = codes.accessor<std::int64_t, 3>();
  std::vector<CodeExplanation> out;
  for (std::size_t a = 0; a < profiles.codebooks.size(); ++a) {
    const auto& book = profiles.codebooks[a];
    const std::int64_t L = profiles.attributes[a].soft_tokens;
    for (int level = 0; level < book.levels(); ++level) {
      const std::size_t first = out.size();
      for (std::int64_t k = 0; k < book.codes(); ++k) {
        std::vector<std::uint32_t> members;
        std::vector<std::size_t> member_rows;
        std::map<std::vector<std::int64_t>, std::int64_t> prefixes;  // earlier levels' codes among members
        for (std::size_t i = 0; i < profiles.users.size(); ++i) {
          if (c[static_cast<std::int64_t>(i)][static_cast<std::int64_t>(a)][level] != k) continue;
          members.push_back(profiles.users[i]);
          for (std::size_t r = history.user_begin(profiles.users[i]); r < history.user_end(profiles.users[i]); ++r)
            member_rows.push_back(history.row(r));
          std::vector<std::int64_t> prefix;
          for (int e = 0; e < level; ++e) prefix.push_back(c[static_cast<std::int64_t>(i)][static_cast<std::int64_t>(a)][e]);
          prefixes[prefix] += 1;
        }
        CodeExplanation e;
        e.attribute = profiles.attributes[a].name;
        e.level = level;
        e.code = k;
        e.probe = probe_display(in, a);
        e.members = statistics(history, members, field, population, options.top_categories);
        e.members.typical_items = typical_items(dataset, name_field, history, members, population_items,
                                                options.typical_items);
        // The codeword in context: plus the most common earlier-level codewords of its members.
        auto vector = book.codewords()[static_cast<std::size_t>(level)][k].detach().cpu().clone();
        if (level > 0 && !prefixes.empty()) {
          auto best = std::max_element(prefixes.begin(), prefixes.end(),
                                       [](const auto& x, const auto& y) { return x.second < y.second; });
          for (int p = 0; p < level; ++p)
            vector += book.codewords()[static_cast<std::size_t>(p)][best->first[static_cast<std::size_t>(p)]].detach().cpu();
        }
        e.continuation = continuation(in, builder, a, compute_aggregates(dataset, member_rows), vector.view({L, -1}),
                                      options.max_new_tokens);
        out.push_back(std::move(e));
      }
      // A continuation that every code of this level shares tells the codes apart no more than the probe does.
      const bool all_same = out.size() - first > 1 && std::all_of(out.begin() + static_cast<std::ptrdiff_t>(first), out.end(),
                                                                  [&](const CodeExplanation& e) {
                                                                    return e.continuation == out[first].continuation;
                                                                  });
      if (all_same) {
        for (std::size_t i = first; i < out.size(); ++i) {
          out[i].continuation_note = "the LM continues the probe the same way for every code: \"" +
                                     out[i].continuation + "\"";
          out[i].continuation.clear();
        }
      }
    }
  }
  return out;
}

UserExplanation explain_user(const FitInputs& in, const Profiles& profiles, const data::SplitView& history,
                             const std::string& user_id, const ExplainOptions& options) {
  const auto& dataset = *in.dataset;
  auto it = std::find(profiles.user_ids.begin(), profiles.user_ids.end(), user_id);
  USERIP_CHECK(it != profiles.user_ids.end(), "user '{}' has no profile in this fit ({} users; fold new users in with "
               "`userip profile infer`)", user_id, profiles.user_ids.size());
  const auto row = static_cast<std::int64_t>(it - profiles.user_ids.begin());
  const std::uint32_t user = profiles.users[static_cast<std::size_t>(row)];
  const auto& field = category_field(dataset, options.category_field);
  CategoryCounts population;
  for (auto u : profiles.users) population.add_rows(history, u, field);
  SampleOptions sample_options;
  SampleBuilder builder(dataset, history, *in.profile_template, *in.tokenizer, sample_options);
  UserExplanation e;
  e.user = user_id;
  if (profiles.has_codes()) {
    e.fields = profiles.field_names();
    auto codes = profiles.codes[row].reshape({-1}).cpu();
    for (std::int64_t f = 0; f < codes.numel(); ++f) e.codes.push_back(codes[f].item<std::int64_t>());
  }
  const auto aggregates = compute_aggregates(dataset, history, user);
  for (std::size_t a = 0; a < profiles.attributes.size(); ++a) {
    auto rows = profiles.vectors[row].narrow(0, profiles.attribute_offset[a], profiles.attributes[a].soft_tokens);
    e.continuations.push_back(continuation(in, builder, a, aggregates, rows, options.max_new_tokens));
  }
  e.own = statistics(history, {user}, field, population, options.top_categories);
  return e;
}

}  // namespace userip::profile
