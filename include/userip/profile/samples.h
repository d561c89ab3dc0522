#pragma once
// Training samples for soft profile tokens and their attention masks.
//
// A sample of user u is
//   <bos> [evidence_1][soft_1 x L_1] [evidence_2][soft_2 x L_2] ... behaviour text <eos>
// where the behaviour text packs several of the user's interactions (a chronological window) up
// to a token budget, and only the behaviour tokens and <eos> are labels. The frozen LM's NLL of
// the labels given the prompt is what the soft tokens are fitted to minimise.
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "userip/data/dataset.h"
#include "userip/profile/template.h"
#include "userip/text/tokenizer.h"
#include "userip/util/enum_names.h"

namespace userip::profile {

enum class AttentionStructure { causal, segment };
inline constexpr EnumName<AttentionStructure> kAttentionStructureNames[] = {{AttentionStructure::causal, "causal"},
                                                                            {AttentionStructure::segment, "segment"}};
// "causal" / "segment"; the error lists both.
AttentionStructure attention_structure_from_string(std::string_view name);
std::string to_string(AttentionStructure structure);

struct SampleOptions {
  std::int64_t max_tokens = 192;  // per sample, prompt + bos + behaviour + eos
  int samples_per_user = 1;       // per round (each a different chronological window when possible)
  // Interactions per sample at most; 0 = as many as max_tokens allows. An LM pretrained on documents
  // of one behaviour sentence each reads the prompt for the first sentence of a sample only, and
  // takes every later one as a new document without a summary (docs/RESULTS.md), so its samples
  // should hold one interaction each, as its documents did.
  std::int64_t max_interactions = 0;
  std::uint64_t seed = 42;
};

struct ProfileSample {
  std::uint32_t user = 0;                  // dense user id
  std::vector<std::int32_t> ids;           // whole sequence; soft-token slots hold id 0
  std::vector<std::int8_t> segment;        // attribute index for evidence+soft positions, -1 for bos/behaviour/eos
  std::vector<std::int16_t> soft_index;    // -1, or the soft token's index in 0..total_soft_tokens-1
  std::vector<std::uint8_t> is_label;      // 1 for behaviour tokens and eos
  std::vector<std::size_t> rows;           // dataset interaction rows whose behaviour the sample holds
  std::int64_t length() const { return static_cast<std::int64_t>(ids.size()); }
  std::int64_t label_count() const;
};

class SampleBuilder {
 public:
  // `history` = the parts whose rows describe the user (training split, or cold_history for fold-in
  // users): they give the user aggregates of the evidence and the behaviour of training samples.
  // The dataset, tokenizer and template must outlive the builder. Tokenizes each history
  // interaction's behaviour sentence once and caches each user's prompt and candidate windows.
  //
  // Sentence i > 0 of a sample follows the previous one after a single space. The builder finds
  // out once (on real sentences of the history) whether the tokenizer encodes " " + s as the
  // tokens of s (SentencePiece's dummy prefix) or needs the space itself (byte-level BPE), so the
  // behaviour ids equal the encoding of the joined text, except where a tokenizer would merge
  // across the sentence boundary (neither kind does for text ending in punctuation).
  SampleBuilder(const data::Dataset& dataset, const data::SplitView& history, const ProfileTemplate& tmpl,
                const text::Tokenizer& tokenizer, SampleOptions options);

  // Deterministic from (options.seed, round, user): up to `samples_per_user` distinct windows of
  // consecutive history interactions, each extended as far as max_tokens allows from a start drawn
  // among the valid starts (0, and every start whose window reaches further than the previous
  // start's). Fewer than samples_per_user come back when the user has fewer distinct windows (e.g.
  // the whole history fits one sample). A single interaction longer than the budget is truncated,
  // keeping eos. Users without history rows get no samples. In one-interaction-per-sample mode
  // (evidence naming item fields) every window is a single interaction.
  std::vector<ProfileSample> training_samples(std::uint32_t user, std::uint64_t round) const;

  // Samples whose behaviour is the user's rows of `view` (e.g. validation interactions), packed in
  // chronological order into as few samples as fit max_tokens; the prompt comes from the history.
  // Every row appears in exactly one sample.
  std::vector<ProfileSample> evaluation_samples(std::uint32_t user, const data::SplitView& view) const;

  // The prompt prefix alone (evidence + soft slots, no bos, no labels). `item` is required in
  // one-interaction-per-sample mode (the evidence describes that item) and ignored otherwise.
  ProfileSample prompt(std::uint32_t user, std::optional<std::uint32_t> item = std::nullopt) const;
  std::int64_t prompt_length(std::uint32_t user) const;  // throws in one-interaction-per-sample mode

  // A probe for explaining a code or a user: attribute a's probe text around its L soft slots
  // (soft_index = soft_offset(a) .. + L - 1, segment a everywhere, no bos, no labels). The text after
  // "<soft>" is tokenized as it would be after a space where the tokenizer adds one (SentencePiece).
  ProfileSample probe(std::size_t attribute, const UserAggregates& aggregates,
                      std::optional<std::uint32_t> item = std::nullopt) const;

  const ProfileTemplate& profile_template() const { return *template_; }
  const SampleOptions& options() const { return options_; }
  const UserAggregates& aggregates(std::uint32_t user) const;
  // Candidate training windows of a user as [first, last) positions in the history view.
  std::vector<std::pair<std::size_t, std::size_t>> windows(std::uint32_t user) const;
  // Whether continuation sentences are encoded without their joining space (see the constructor).
  bool joins_without_space() const { return bare_join_; }

 private:
  struct Prompt {
    std::vector<std::int32_t> ids;
    std::vector<std::int8_t> segment;
    std::vector<std::int16_t> soft_index;
  };
  Prompt build_prompt(std::uint32_t user, std::optional<std::uint32_t> item) const;
  std::vector<std::int32_t> encode_sentence(const std::string& sentence, bool first) const;
  std::int64_t behaviour_budget(std::int64_t prompt_length, std::uint32_t user) const;
  // True when a window of `size` interactions may take no more (SampleOptions::max_interactions).
  bool window_full(std::size_t size) const {
    return options_.max_interactions > 0 && size >= static_cast<std::size_t>(options_.max_interactions);
  }
  // Sequence from a prompt and the behaviour sentences (token lists, first one in first-form).
  ProfileSample assemble(std::uint32_t user, const Prompt& prompt,
                         const std::vector<const std::vector<std::int32_t>*>& sentences,
                         std::vector<std::size_t> rows) const;

  const data::Dataset* dataset_;
  data::SplitView history_;
  const ProfileTemplate* template_;
  const text::Tokenizer* tokenizer_;
  SampleOptions options_;
  bool bare_join_ = true;
  std::int32_t bos_ = -1, eos_ = -1;
  std::vector<UserAggregates> aggregates_;  // per user
  std::vector<Prompt> prompts_;             // per user; empty in one-interaction-per-sample mode
  // Per history position: its sentence's tokens as the first sentence of a sample and as a later one.
  std::vector<std::vector<std::int32_t>> first_tokens_, next_tokens_;
  std::vector<std::size_t> window_offsets_;  // per user into windows_
  std::vector<std::pair<std::size_t, std::size_t>> windows_;
};

// A padded batch ready for lm::CausalLM::token_nll.
struct SampleBatch {
  torch::Tensor ids;          // [B, T] int64 (right padding with 0)
  torch::Tensor attention;    // [B, T, T] bool: query t may attend key s
  torch::Tensor soft_slots;   // [B, T] bool
  torch::Tensor soft_index;   // [N] int64: for each true slot in row-major order, the soft token index
  torch::Tensor soft_row;     // [N] int64: the batch row of each slot
  torch::Tensor targets;      // [B, T] int64 next-token targets, lm::kIgnoreIndex elsewhere
  torch::Tensor label_count;  // [B] int64 labels per row
  std::vector<std::uint32_t> users;  // per row
};

// Attention masks: `causal` = causal over real tokens (the released code). `segment` = the paper's:
// a position of attribute a's segment (its evidence and soft tokens) attends causally only to
// earlier positions of the same segment; bos/behaviour/eos attend causally to everything before.
// Padding keys are never attended; a padding query attends only to itself (keeps softmax finite).
torch::Tensor attention_mask(const std::vector<const ProfileSample*>& samples, AttentionStructure structure,
                             torch::Device device);
SampleBatch make_batch(const std::vector<const ProfileSample*>& samples, AttentionStructure structure,
                       torch::Device device);

// The last of a user's chronological samples whose interactions (rows) total at most
// `interactions`, always at least one sample; 0 = all of them.
std::vector<ProfileSample> most_recent_samples(std::vector<ProfileSample> samples, std::int64_t interactions);

// Batches of sample indices grouped by length (lm::bucket_by_length): no padding beyond each
// batch's longest sample, at most max_batch_tokens (rows × longest) and max_batch_rows per batch.
std::vector<std::vector<std::size_t>> pack_samples(const std::vector<ProfileSample>& samples,
                                                   std::int64_t max_batch_tokens, std::int64_t max_batch_rows);

}  // namespace userip::profile
