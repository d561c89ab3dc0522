#include "userip/util/checkpoint.h"

#include <spdlog/spdlog.h>

#include "userip/util/fs.h"

namespace userip {

namespace fs = std::filesystem;

namespace {

constexpr const char* kStateFile = "state.json";

std::string named_file(const nlohmann::json& state, const std::string& key) {
  const auto it = state.find(key);
  return it != state.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

CheckpointDir::CheckpointDir(fs::path dir, std::string fingerprint)
    : dir_(std::move(dir)), fingerprint_(std::move(fingerprint)) {}

bool CheckpointDir::exists() const { return fs::exists(dir_ / kStateFile); }

std::optional<nlohmann::json> CheckpointDir::load(const std::vector<std::string>& file_keys) const {
  if (!exists()) return std::nullopt;
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(read_file(dir_ / kStateFile));
  } catch (const std::exception& e) {
    spdlog::warn("{}: unreadable checkpoint state ({}); starting over", dir_.string(), e.what());
    return std::nullopt;
  }
  if (!state.is_object() || state.value("fingerprint", "") != fingerprint_) {
    spdlog::warn("{}: the checkpoint belongs to other inputs or options; starting over", dir_.string());
    return std::nullopt;
  }
  for (const auto& key : file_keys) {
    const std::string name = named_file(state, key);
    if (!name.empty() && !fs::exists(dir_ / name)) {
      spdlog::warn("{}: the checkpoint's {} file {} is missing; starting over", dir_.string(), key, name);
      return std::nullopt;
    }
  }
  return state;
}

void CheckpointDir::commit(nlohmann::json state, const std::vector<std::string>& file_keys) const {
  fs::create_directories(dir_);
  state["fingerprint"] = fingerprint_;
  write_file_atomic(dir_ / kStateFile, state.dump(2));
  // Only now, with state.json naming the new files, are older ones removed.
  std::vector<std::pair<std::string, std::string>> current;  // (prefix, name)
  for (const auto& key : file_keys) {
    const std::string name = named_file(state, key);
    const auto dash = name.find('-');
    if (!name.empty() && dash != std::string::npos) current.emplace_back(name.substr(0, dash + 1), name);
  }
  for (const auto& entry : fs::directory_iterator(dir_)) {
    const std::string file = entry.path().filename().string();
    for (const auto& [prefix, name] : current)
      if (file.rfind(prefix, 0) == 0 && file != name) fs::remove(entry.path());
  }
}

void CheckpointDir::remove() const { fs::remove_all(dir_); }

}  // namespace userip
