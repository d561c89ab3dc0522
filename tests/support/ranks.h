#pragma once
// Ranks as threads of one process: a world of `ranks` joined through a FileStore in a temporary
// directory, each thread running `body` with its own World. What the collectives do across
// processes they do across these threads, without a launcher.
#include <chrono>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "support/temp_dir.h"
#include "userip/dist/world.h"

namespace userip::testing {

// Each rank's error message, "" where `body` returned.
inline std::vector<std::string> on_ranks(int ranks, const std::function<void(dist::World&)>& body,
                                         std::chrono::seconds timeout = std::chrono::seconds(60)) {
  TempDir dir;
  std::vector<std::string> errors(static_cast<std::size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        dist::WorldOptions options;
        options.rank = r;
        options.size = ranks;
        options.local_rank = r;
        options.local_size = ranks;
        options.store_file = (dir.path() / "store").string();
        options.timeout = timeout;
        dist::World world(options);
        body(world);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace userip::testing
