#pragma once
// Internal entry points shared by the tokenizer loaders, so that a large tokenizer.json is
// parsed once.
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "userip/text/bpe.h"

namespace userip::text::detail {

// Reads and parses a JSON file; throws userip::Error naming it when it is missing or malformed.
nlohmann::json read_json_file(const std::filesystem::path& path);

bool tokenizer_json_is_byte_level(const nlohmann::json& doc);
std::unique_ptr<BpeTokenizer> load_tokenizer_json(const nlohmann::json& doc, const std::filesystem::path& path);

}  // namespace userip::text::detail
