#pragma once
// Where the reference checkpoints live: the project's own small fixtures and the shared ones
// beside the checkout (../shared/reference), whose token ids and logits independent
// implementations computed.
#include <string>

namespace userip::testing {

inline std::string reference_dir() { return USERIP_SOURCE_DIR "/tests/data/reference"; }
inline std::string shared_reference_dir() { return USERIP_SOURCE_DIR "/../shared/reference"; }

}  // namespace userip::testing
