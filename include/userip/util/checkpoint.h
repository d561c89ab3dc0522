#pragma once
// The checkpoint of a resumable run (LM pretraining, profile fitting), one policy for all:
// - state.json, replaced atomically and last, names the files of one point of the run; files of
//   older points are removed only after it is written, so a kill at any moment leaves a state.json
//   that names complete files.
// - A checkpoint that cannot be read, that belongs to other inputs or options (another
//   fingerprint), or whose named files are missing is not resumed: the run warns, naming the
//   directory and the reason, and starts over.
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace userip {

class CheckpointDir {
 public:
  CheckpointDir(std::filesystem::path dir, std::string fingerprint);

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path file(const std::string& name) const { return dir_ / name; }
  bool exists() const;

  // The state of the last commit, when it is readable, has this fingerprint and every file named by
  // its `file_keys` (string members; "" names no file) exists; otherwise nullopt, with a warning
  // unless there is no state.json at all.
  std::optional<nlohmann::json> load(const std::vector<std::string>& file_keys) const;

  // Writes `state` with the fingerprint as state.json. Then, for every file named by its `file_keys`,
  // removes the files of older points: those starting with the same prefix (the name up to its first
  // '-', with the '-') that are not the named one.
  void commit(nlohmann::json state, const std::vector<std::string>& file_keys) const;

  void remove() const;

 private:
  std::filesystem::path dir_;
  std::string fingerprint_;
};

}  // namespace userip
