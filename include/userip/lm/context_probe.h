#pragma once
// Does an LM read the user summary before behaviour? The profile templates put soft tokens where
// the default corpus puts the user summary; an LM that never learnt to read the summary gives the
// profiles there nothing to carry (docs/RESULTS.md, "Why: whether the default LM reads the
// summary"). This scores text::ContextProbe's cases: for each placeholder of the summary, how much
// less likely a user's held-out behaviour becomes when that part of its summary is another user's.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/lm/batching.h"
#include "userip/lm/model.h"
#include "userip/text/corpus.h"
#include "userip/text/tokenizer.h"

namespace userip::lm {

// What "reads" means: the behaviour costs at least this many more nats per sentence after the
// altered part, by more than three standard errors. LMs that did not read a part measured +0.001 to
// +0.03; those that did, +0.06 to +0.74 (docs/RESULTS.md).
constexpr double kReadsExtraNats = 0.05;

struct ContextReading {
  std::string part;           // the placeholder, e.g. "user.top2.genres"
  double extra_nll = 0;       // mean over cases of NLL(behaviour | altered) - NLL(behaviour | own), nats
  double standard_error = 0;  // of that mean
  std::int64_t cases = 0;     // cases where another user's value differed
  bool read() const { return cases > 1 && extra_nll >= kReadsExtraNats && extra_nll > 3 * standard_error; }
};

struct ContextReport {
  std::vector<ContextReading> parts;
  double behaviour_nll = 0;  // mean NLL of a behaviour sentence after its own summary, nats
  std::int64_t cases = 0;    // scored
  std::int64_t skipped = 0;  // cases whose summary and behaviour exceed the model's context
  bool reads_every_part() const;
  bool reads_any_part() const;
  nlohmann::json to_json() const;
};

// The NLL of a behaviour sentence after a summary is NLL(summary + " " + behaviour) - NLL(summary),
// each text as the model's tokenizer encodes it. Batched by length; deterministic on the CPU. A
// case (or one altered summary of it) longer than the model's context is left out.
ContextReport measure_context_reading(const CausalLM& model, const text::Tokenizer& tokenizer,
                                      const text::ContextProbe& probe, const BatchingOptions& batching = {});

}  // namespace userip::lm
