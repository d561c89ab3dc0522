#pragma once
// Strict reading of a JSON configuration object: each known key is read with its type checked,
// and finish() rejects the keys nobody asked for, so a misspelt option fails instead of being
// silently ignored. Errors name the section and key.
#include <nlohmann/json.hpp>

#include <set>
#include <string>

#include "userip/util/error.h"
#include "userip/util/strings.h"

namespace userip::ctr {

class JsonFields {
 public:
  JsonFields(const nlohmann::json& object, std::string section) : object_(object), section_(std::move(section)) {
    USERIP_CHECK(object_.is_object(), "{}: expected a JSON object, got {}", section_, object_.type_name());
  }

  bool has(const std::string& key) const { return object_.contains(key); }
  const nlohmann::json& get(const std::string& key) {
    known_.insert(key);
    return object_.at(key);
  }

  // Reads `key` into `value` when present (returns whether it was); a value of the wrong type is
  // an error naming the key and the type expected.
  template <typename T>
  bool read(const std::string& key, T& value) {
    known_.insert(key);
    auto it = object_.find(key);
    if (it == object_.end()) return false;
    try {
      if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
        USERIP_CHECK(it->is_number_integer(), "{}: \"{}\" must be an integer, got {}", section_, key, it->dump());
      } else if constexpr (std::is_floating_point_v<T>) {
        USERIP_CHECK(it->is_number(), "{}: \"{}\" must be a number, got {}", section_, key, it->dump());
      } else if constexpr (std::is_same_v<T, bool>) {
        USERIP_CHECK(it->is_boolean(), "{}: \"{}\" must be true or false, got {}", section_, key, it->dump());
      } else if constexpr (std::is_same_v<T, std::string>) {
        USERIP_CHECK(it->is_string(), "{}: \"{}\" must be a string, got {}", section_, key, it->dump());
      }
      value = it->template get<T>();
    } catch (const nlohmann::json::exception&) {
      fail("{}: \"{}\" has the wrong type: {}", section_, key, it->dump());
    }
    return true;
  }

  // Every key must have been read (or looked at with get()).
  void finish() const {
    for (auto it = object_.begin(); it != object_.end(); ++it) {
      if (!known_.count(it.key())) {
        std::vector<std::string> expected(known_.begin(), known_.end());
        fail("{}: unknown key \"{}\" (expected one of: {})", section_, it.key(), join(expected, ", "));
      }
    }
  }

 private:
  const nlohmann::json& object_;
  std::string section_;
  std::set<std::string> known_;
};

}  // namespace userip::ctr
