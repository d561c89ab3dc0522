#pragma once
// The CTR configuration file: a base section and named experiments that override it.
//
//   {
//     "base": {"model": {...}, "train": {...}, "features": {...}},
//     "experiments": {"dcn": {"model": {"kind": "dcn"}}, "deepfm": {"model": {"kind": "deepfm"}}},
//     "compare": {...}   // read by `userip experiment`
//   }
//
// An experiment's settings are the defaults, then "base", then the experiment's own keys (objects
// merged key by key, arrays and values replaced). docs/CTR.md lists every key and its default.
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/ctr/features.h"
#include "userip/ctr/models.h"
#include "userip/ctr/train.h"

namespace userip::ctr {

struct CtrSettings {
  ModelConfig model;
  TrainConfig train;
  FeatureConfig features;
  nlohmann::json to_json() const;
};

// The configuration file's JSON, with the file named in parse errors.
nlohmann::json read_config_file(const std::filesystem::path& path);
// Settings of `experiment` ("" = the base section alone). Errors name `where`, the section and key;
// an unknown experiment lists the known ones.
CtrSettings settings_for(const nlohmann::json& config, const std::string& experiment, const std::string& where);
std::vector<std::string> experiment_names(const nlohmann::json& config);

}  // namespace userip::ctr
