#pragma once
// Trained models and banks for the server tests, built once per test process, and a server
// running on an ephemeral port for the length of a test.
#include <httplib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "ctr/ctr_test_support.h"
#include "userip/ctr/pipeline.h"
#include "userip/ctr/train.h"
#include "userip/serve/server.h"
#include "userip/util/fs.h"

namespace userip::testing {

// A codes model and a base model trained on the preference world, its control bank as the
// feature bank, and an explanation per code.
struct ServeWorld {
  std::filesystem::path dir;
  data::Dataset dataset;
  std::filesystem::path codes_model, base_model, bank, explanations;
  static constexpr std::int64_t kCodes = 3;

  static ServeWorld& get() {
    static ServeWorld* world = [] {
      auto* w = new ServeWorld;
      w->dir = std::filesystem::temp_directory_path() / ("userip-serve-world-" + std::to_string(::getpid()));
      std::filesystem::remove_all(w->dir);
      std::filesystem::create_directories(w->dir);
      w->dataset = preference_dataset();
      w->bank = w->dir / "bank.sqlite";
      write_control_bank(w->dataset, kCodes, w->bank);
      w->codes_model = w->dir / "codes-model";
      w->base_model = w->dir / "base-model";
      w->train(ctr::ProfileInput::codes, w->codes_model);
      w->train(ctr::ProfileInput::none, w->base_model);
      std::string lines;
      for (std::int64_t c = 0; c < kCodes; ++c)
        lines += nlohmann::json{{"attribute", "taste"}, {"level", 1}, {"code", c}, {"continuation", "likes " + std::to_string(c)}}
                     .dump() +
                 "\n";
      w->explanations = w->dir / "explanations.jsonl";
      write_file_atomic(w->explanations, lines);
      // world_dir() is set before the handler is registered, so its static outlives the handler
      // (statics and atexit handlers run in reverse order of registration).
      world_dir() = w->dir;
      std::atexit([] { std::filesystem::remove_all(world_dir()); });
      return w;
    }();
    return *world;
  }

  // The codes model reading a copy of the bank in `dir` (dir/bank.sqlite), for tests that
  // republish the bank while a server reads it.
  serve::StateSource source_with_bank_copy(const std::filesystem::path& dir) const {
    std::filesystem::copy_file(bank, dir / "bank.sqlite");
    auto s = source();
    s.banks = {dir / "bank.sqlite"};
    return s;
  }

  serve::StateSource source(bool with_codes = true) const {
    serve::StateSource s;
    s.model = with_codes ? codes_model : base_model;
    s.banks = {bank};
    s.explanations = explanations;
    return s;
  }

 private:
  static std::filesystem::path& world_dir() {
    static std::filesystem::path d;
    return d;
  }
  void train(ctr::ProfileInput input, const std::filesystem::path& out) const {
    ctr::CtrSettings settings;
    settings.model.kind = ctr::ModelKind::deepfm;
    settings.train.max_epochs = 3;
    settings.features.profile = input;
    ctr::ProfileTables tables;
    if (input == ctr::ProfileInput::codes) tables.codes = ctr::UserCodeTable::from_banks(std::vector<std::filesystem::path>{bank});
    ctr::TrainOptions options;
    options.show_progress = false;
    auto trained = ctr::train_on_dataset(dataset, settings, tables, options);
    ctr::save_model(out, *trained.model, settings.model, settings.train, trained.encoder, nlohmann::json::object());
  }
};

// A server on a free loopback port, serving on its own thread until the test ends.
class RunningServer {
 public:
  RunningServer(const serve::StateSource& source, serve::ServerOptions options = {},
                std::unique_ptr<serve::FoldIn> fold_in = nullptr) {
    options.port = 0;
    server_ = std::make_unique<serve::Server>(source, options, std::move(fold_in));
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->run(); });
  }
  ~RunningServer() { stop(); }
  void stop() {
    if (!server_) return;
    server_->stop();
    if (thread_.joinable()) thread_.join();
  }
  serve::Server& server() { return *server_; }
  int port() const { return port_; }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(30, 0);
    return c;
  }

 private:
  std::unique_ptr<serve::Server> server_;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace userip::testing
