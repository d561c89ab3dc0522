// libFuzzer harness: any body given to the scoring service's request parsers must either parse
// into a request within the limits or raise serve::RequestError with a 4xx status.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "userip/serve/requests.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace userip::serve;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  RequestLimits limits;
  limits.max_items = 8;
  limits.max_batch_users = 4;
  limits.max_history = 8;
  auto check = [](bool ok) {
    if (!ok) std::abort();
  };
  try {
    auto r = parse_score_request(body, limits);
    check(!r.user.empty() && !r.items.empty() && r.items.size() <= limits.max_items && r.context.is_object());
  } catch (const RequestError& e) {
    check(e.status >= 400 && e.status < 500);
  }
  try {
    auto r = parse_batch_request(body, limits);
    check(!r.empty() && r.size() <= limits.max_batch_users);
  } catch (const RequestError& e) {
    check(e.status >= 400 && e.status < 500);
  }
  try {
    auto r = parse_infer_request(body, limits);
    check(!r.history.empty() && r.history.size() <= limits.max_history);
  } catch (const RequestError& e) {
    check(e.status >= 400 && e.status < 500);
  }
  try {
    check(!check_path_id(body).empty());
  } catch (const RequestError& e) {
    check(e.status >= 400 && e.status < 500);
  }
  return 0;
}
