#pragma once
// Text through a frozen model, one token sequence at a time: what `lm score` prints per line and
// what `lm generate` prints after its prompt.
#include <cstdint>
#include <string>
#include <vector>

#include "userip/lm/model.h"
#include "userip/text/tokenizer.h"

namespace userip::lm {

// log p(ids[i] | ids[:i]) for i >= 1, computed in double from the model's logits; empty for fewer
// than two ids. The caller checks the ids against the vocabulary and the context, where it can
// name the line they came from.
std::vector<double> token_logprobs(const CausalLM& model, const std::vector<std::int32_t>& ids);

// The text that `generated` adds after `prompt`. Decoded together with the prompt, so that the
// continuation's word-initial spaces survive (SentencePiece drops the leading space of a sequence it
// decodes on its own); on its own only where the joint text does not begin with the prompt's.
std::string continuation_text(const text::Tokenizer& tokenizer, const std::vector<std::int32_t>& prompt,
                              const std::vector<std::int32_t>& generated);

}  // namespace userip::lm
