#pragma once
// A profile run's output directory (codes.csv and profile.json, written by `profile fit` and
// `profile infer`) as the contents of a feature bank. Every path that publishes codes reads them
// from there, so a bank carries the same fields, fingerprint and provenance however it was built.
#include <filesystem>

#include "userip/store/feature_bank.h"

namespace userip::store {

// Fields and their cardinalities, the codebook fingerprint and the provenance keys (seed, model
// and dataset fingerprints, template) from profile.json; every user's codes from codes.csv.
// Errors name the file, and the line and field of a bad row.
BankContents read_profile_dir(const std::filesystem::path& dir);

}  // namespace userip::store
