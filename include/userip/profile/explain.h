#pragma once
// What a profile code means: the frozen LM's greedy continuation of the attribute's probe prompt
// with the codeword in place of the soft tokens, and what the users behind the code actually did
// (count, top item categories with lift over the population, activity, ratings).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/profile/fit.h"

namespace userip::profile {

struct ExplainOptions {
  std::int64_t max_new_tokens = 16;
  std::size_t top_categories = 3;
  std::size_t typical_items = 3;
  // Item field whose values are counted (category or category_list); "" = the first such field.
  std::string category_field;
};

struct CategoryLift {
  std::string value;
  double share = 0;  // of the members' interactions whose item has the value
  double lift = 0;   // share / the population's share
};

// An item the members chose more often than the population did.
struct TypicalItem {
  std::string name;  // the item's name field (or its id)
  double share = 0;  // of the members who chose it
  double lift = 0;   // share / the share of all users who chose it
};

struct MemberStatistics {
  std::int64_t users = 0;
  double interactions_per_user = 0;  // in the history (training) rows
  double mean_rating = 0;
  double like_rate = 0;
  std::vector<CategoryLift> top_categories;
  std::vector<TypicalItem> typical_items;  // chosen by at least 10% of the members (and two), by lift
  nlohmann::json to_json() const;
};

struct CodeExplanation {
  std::string attribute;
  int level = 0;  // 0-based
  std::int64_t code = 0;
  std::string probe;         // the probe text, "<soft>" where the codeword goes
  // Greedy, decoded; empty when every code of the attribute and level gets the same one (it then
  // says nothing about this code, and `continuation_note` says so).
  std::string continuation;
  std::string continuation_note;
  MemberStatistics members;
  nlohmann::json to_json() const;
};

struct UserExplanation {
  std::string user;
  std::vector<std::string> fields;    // code field names ("taste", "taste.2", ...)
  std::vector<std::int64_t> codes;    // per field
  std::vector<std::string> continuations;  // per attribute, with the user's own (dense) profile
  MemberStatistics own;                // the user's own history
  nlohmann::json to_json() const;
};

// Every code of every attribute and level. The continuation uses the level's codeword added to the
// codewords of the earlier levels most common among its members (the reconstruction a typical
// member has), so deeper levels are explained in context.
std::vector<CodeExplanation> explain_codes(const FitInputs& inputs, const Profiles& profiles,
                                           const data::SplitView& history, const ExplainOptions& options);

// One user of `profiles` (throws naming the user when absent).
UserExplanation explain_user(const FitInputs& inputs, const Profiles& profiles, const data::SplitView& history,
                             const std::string& user_id, const ExplainOptions& options);

}  // namespace userip::profile
