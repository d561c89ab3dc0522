#pragma once
// What a feature bank says about itself and its rows, in the forms `userip bank` prints: a summary
// (text or JSON) and every user's codes as CSV (codes.csv's layout, which read_profile_dir reads
// back) or JSON lines.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>

#include "userip/store/feature_bank.h"

namespace userip::store {

enum class CodesFormat { csv, jsonl };
CodesFormat codes_format_from_string(std::string_view name);  // "csv" or "jsonl"; else an Error naming both

// Version, creation time, fingerprint, user count, fields and provenance.
nlohmann::ordered_json bank_info_json(const FeatureBank& bank);
std::string bank_info_text(const FeatureBank& bank);

// {"<field>": code, ...} of one row (`codes` from FeatureBank::find or codes_at).
nlohmann::ordered_json codes_json(const FeatureBank& bank, const std::int32_t* codes);

// Every user in the bank's order. CSV: header user,<fields...>; JSON lines: {"user", "codes"}.
void write_codes(const FeatureBank& bank, CodesFormat format, std::ostream& out);

// JSON text that never throws on ids that are not UTF-8 (they are bytes to the bank).
std::string json_text(const nlohmann::ordered_json& value, int indent = -1);

}  // namespace userip::store
