#include "userip/profile/samples.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <numeric>

#include "userip/lm/batching.h"
#include "userip/lm/model.h"
#include "userip/text/sentencepiece.h"
#include "userip/util/enum_names.h"
#include "userip/util/error.h"
#include "userip/util/random.h"

namespace userip::profile {
namespace {

std::vector<std::int32_t> concat(const std::vector<std::int32_t>& a, const std::vector<std::int32_t>& b) {
  std::vector<std::int32_t> out(a);
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

// How a sentence that follows another after one space must be encoded so that the concatenation
// equals the encoding of the joined text: SentencePiece's dummy prefix already stands for that
// space (encode(s)), byte-level BPE needs it spelled out (encode(" " + s)). Decided on real text
// and, where neither matches, by the tokenizer's kind.
bool detect_bare_join(const text::Tokenizer& tokenizer, const std::string& a, const std::string& b) {
  const auto joined = tokenizer.encode(a + " " + b);
  const auto head = tokenizer.encode(a);
  if (joined == concat(head, tokenizer.encode(b))) return true;
  if (joined == concat(head, tokenizer.encode(" " + b))) return false;
  const auto* sentencepiece = dynamic_cast<const text::SentencePieceTokenizer*>(&tokenizer);
  const bool bare = sentencepiece != nullptr && sentencepiece->add_dummy_prefix();
  spdlog::warn("profile samples: the {} tokenizer merges across the space between two behaviour sentences "
               "(\"{}\" + \"{}\"); packed samples may differ slightly from encoding the joined text",
               tokenizer.kind(), a, b);
  return bare;
}

}  // namespace

AttentionStructure attention_structure_from_string(std::string_view name) {
  return enum_from_name(kAttentionStructureNames, name, "attention structure");
}

std::string to_string(AttentionStructure structure) { return enum_name(kAttentionStructureNames, structure); }

std::int64_t ProfileSample::label_count() const {
  return std::accumulate(is_label.begin(), is_label.end(), std::int64_t{0});
}

SampleBuilder::SampleBuilder(const data::Dataset& dataset, const data::SplitView& history,
                             const ProfileTemplate& tmpl, const text::Tokenizer& tokenizer, SampleOptions options)
    : dataset_(&dataset), history_(history), template_(&tmpl), tokenizer_(&tokenizer), options_(options) {
  USERIP_CHECK(&history.dataset() == &dataset, "profile samples: the history view belongs to another dataset");
  USERIP_CHECK(options_.max_tokens >= 4, "profile samples: max tokens must be at least 4, got {}",
               options_.max_tokens);
  USERIP_CHECK(options_.samples_per_user >= 1, "profile samples: samples per user must be at least 1, got {}",
               options_.samples_per_user);
  USERIP_CHECK(options_.max_interactions >= 0, "profile samples: interactions per sample must be >= 0, got {}",
               options_.max_interactions);
  USERIP_CHECK(tmpl.total_soft_tokens() <= 32767, "profile samples: too many soft tokens ({})",
               tmpl.total_soft_tokens());
  bos_ = tokenizer.specials().bos;
  eos_ = tokenizer.specials().eos;

  const std::size_t users = dataset.num_users();
  aggregates_.reserve(users);
  for (std::uint32_t u = 0; u < users; ++u) aggregates_.push_back(compute_aggregates(dataset, history_, u));

  // Joining is probed on two consecutive sentences of one user: the text the samples really hold.
  if (history_.size() > 0) {
    std::size_t first = 0, second = 0;
    for (std::size_t i = 0; i + 1 < history_.size(); ++i) {
      if (history_.user(i) == history_.user(i + 1)) {
        first = i;
        second = i + 1;
        break;
      }
    }
    bare_join_ = detect_bare_join(tokenizer, tmpl.render_behaviour(dataset, history_.row(first)),
                                  tmpl.render_behaviour(dataset, history_.row(second)));
  } else {
    const auto* sentencepiece = dynamic_cast<const text::SentencePieceTokenizer*>(&tokenizer);
    bare_join_ = sentencepiece != nullptr && sentencepiece->add_dummy_prefix();
  }

  first_tokens_.resize(history_.size());
  if (!bare_join_) next_tokens_.resize(history_.size());
  for (std::size_t i = 0; i < history_.size(); ++i) {
    const std::string sentence = tmpl.render_behaviour(dataset, history_.row(i));
    first_tokens_[i] = encode_sentence(sentence, true);
    if (!bare_join_) next_tokens_[i] = encode_sentence(sentence, false);
  }

  if (!tmpl.one_interaction_per_sample()) {
    prompts_.reserve(users);
    for (std::uint32_t u = 0; u < users; ++u) prompts_.push_back(build_prompt(u, std::nullopt));
  }

  // Candidate windows: from each start, as many consecutive interactions as the budget allows; a
  // start whose window ends where the previous one's did carries strictly less evidence, so only
  // starts that reach further are kept.
  window_offsets_.assign(users + 1, 0);
  for (std::uint32_t u = 0; u < users; ++u) {
    const std::size_t begin = history_.user_begin(u), end = history_.user_end(u);
    if (tmpl.one_interaction_per_sample()) {
      for (std::size_t s = begin; s < end; ++s) windows_.emplace_back(s, s + 1);
    } else if (begin < end) {
      const std::int64_t budget = behaviour_budget(static_cast<std::int64_t>(prompts_[u].ids.size()), u);
      std::size_t previous_end = begin;
      for (std::size_t s = begin; s < end; ++s) {
        auto used = static_cast<std::int64_t>(first_tokens_[s].size());
        std::size_t j = s + 1;
        while (j < end && used < budget && !window_full(j - s)) {
          const auto next = static_cast<std::int64_t>((bare_join_ ? first_tokens_[j] : next_tokens_[j]).size());
          if (used + next > budget) break;
          used += next;
          ++j;
        }
        if (s == begin || j > previous_end) windows_.emplace_back(s, j);
        previous_end = std::max(previous_end, j);
      }
    }
    window_offsets_[u + 1] = windows_.size();
  }
}

std::vector<std::int32_t> SampleBuilder::encode_sentence(const std::string& sentence, bool first) const {
  if (first || bare_join_) return tokenizer_->encode(sentence);
  return tokenizer_->encode(" " + sentence);
}

SampleBuilder::Prompt SampleBuilder::build_prompt(std::uint32_t user, std::optional<std::uint32_t> item) const {
  Prompt prompt;
  const auto& attributes = template_->attributes();
  for (std::size_t a = 0; a < attributes.size(); ++a) {
    const std::string evidence = template_->render_evidence(a, *dataset_, aggregates_[user], item);
    const auto tokens = encode_sentence(evidence, a == 0);
    prompt.ids.insert(prompt.ids.end(), tokens.begin(), tokens.end());
    prompt.segment.insert(prompt.segment.end(), tokens.size(), static_cast<std::int8_t>(a));
    prompt.soft_index.insert(prompt.soft_index.end(), tokens.size(), -1);
    const int offset = template_->soft_offset(a);
    for (int l = 0; l < attributes[a].soft_tokens; ++l) {
      prompt.ids.push_back(0);  // any valid id: the fitting code splices the soft token's row in
      prompt.segment.push_back(static_cast<std::int8_t>(a));
      prompt.soft_index.push_back(static_cast<std::int16_t>(offset + l));
    }
  }
  return prompt;
}

std::int64_t SampleBuilder::behaviour_budget(std::int64_t prompt_length, std::uint32_t user) const {
  const std::int64_t budget = options_.max_tokens - prompt_length - (bos_ >= 0 ? 1 : 0) - (eos_ >= 0 ? 1 : 0);
  USERIP_CHECK(budget >= 1,
               "profile samples: max tokens {} leaves no room for behaviour text: the prompt of user {} takes {} "
               "tokens (plus bos/eos); raise --max-tokens or shorten the template's evidence ({})",
               options_.max_tokens, dataset_->user_ids[user], prompt_length, template_->source());
  return budget;
}

ProfileSample SampleBuilder::assemble(std::uint32_t user, const Prompt& prompt,
                                      const std::vector<const std::vector<std::int32_t>*>& sentences,
                                      std::vector<std::size_t> rows) const {
  const std::int64_t budget = behaviour_budget(static_cast<std::int64_t>(prompt.ids.size()), user);
  ProfileSample sample;
  sample.user = user;
  sample.rows = std::move(rows);
  const auto push = [&](std::int32_t id, bool label) {
    sample.ids.push_back(id);
    sample.segment.push_back(-1);
    sample.soft_index.push_back(-1);
    sample.is_label.push_back(label ? 1 : 0);
  };
  // <bos> opens the sample, as it opens every document the LM was trained on. Between the prompt and
  // the behaviour it would tell the LM that a new, unrelated document starts there (pretraining
  // streams documents back to back, each after its <bos>), so the behaviour would ignore the profile.
  if (bos_ >= 0) push(bos_, false);
  sample.ids.insert(sample.ids.end(), prompt.ids.begin(), prompt.ids.end());
  sample.segment.insert(sample.segment.end(), prompt.segment.begin(), prompt.segment.end());
  sample.soft_index.insert(sample.soft_index.end(), prompt.soft_index.begin(), prompt.soft_index.end());
  sample.is_label.insert(sample.is_label.end(), prompt.ids.size(), 0);
  std::int64_t used = 0;
  for (const auto* tokens : sentences) {
    for (std::int32_t id : *tokens) {
      if (used == budget) break;  // only a lone over-long interaction gets here
      push(id, true);
      ++used;
    }
  }
  if (eos_ >= 0) push(eos_, true);
  return sample;
}

std::vector<ProfileSample> SampleBuilder::training_samples(std::uint32_t user, std::uint64_t round) const {
  USERIP_CHECK(user < dataset_->num_users(), "profile samples: user {} out of range ({} users)", user,
               dataset_->num_users());
  const std::size_t begin = window_offsets_[user], end = window_offsets_[user + 1];
  const std::size_t count = end - begin;
  if (count == 0) return {};
  const std::size_t take = std::min(count, static_cast<std::size_t>(options_.samples_per_user));
  // A stream per (round, user): the same samples whatever order or thread builds them.
  Rng rng = Rng::derive(Rng::derive(options_.seed, round).next_u64(), user);
  std::vector<std::size_t> chosen(count);
  std::iota(chosen.begin(), chosen.end(), begin);
  for (std::size_t i = 0; i < take; ++i) std::swap(chosen[i], chosen[i + rng.below(count - i)]);
  chosen.resize(take);
  std::sort(chosen.begin(), chosen.end());

  std::vector<ProfileSample> samples;
  samples.reserve(take);
  for (std::size_t w : chosen) {
    const auto [first, last] = windows_[w];
    std::vector<const std::vector<std::int32_t>*> sentences;
    std::vector<std::size_t> rows;
    for (std::size_t i = first; i < last; ++i) {
      sentences.push_back(i == first || bare_join_ ? &first_tokens_[i] : &next_tokens_[i]);
      rows.push_back(history_.row(i));
    }
    if (template_->one_interaction_per_sample()) {
      const Prompt prompt = build_prompt(user, dataset_->interactions.item[history_.row(first)]);
      samples.push_back(assemble(user, prompt, sentences, std::move(rows)));
    } else {
      samples.push_back(assemble(user, prompts_[user], sentences, std::move(rows)));
    }
  }
  return samples;
}

std::vector<ProfileSample> SampleBuilder::evaluation_samples(std::uint32_t user, const data::SplitView& view) const {
  USERIP_CHECK(user < dataset_->num_users(), "profile samples: user {} out of range ({} users)", user,
               dataset_->num_users());
  USERIP_CHECK(&view.dataset() == dataset_, "profile samples: the evaluation view belongs to another dataset");
  std::vector<ProfileSample> samples;
  const std::size_t begin = view.user_begin(user), end = view.user_end(user);
  if (begin == end) return samples;
  std::vector<std::vector<std::int32_t>> first(end - begin), next(end - begin);
  for (std::size_t i = begin; i < end; ++i) {
    const std::string sentence = template_->render_behaviour(*dataset_, view.row(i));
    first[i - begin] = encode_sentence(sentence, true);
    if (!bare_join_) next[i - begin] = encode_sentence(sentence, false);
  }
  const auto next_of = [&](std::size_t k) -> const std::vector<std::int32_t>& {
    return bare_join_ ? first[k] : next[k];
  };

  if (template_->one_interaction_per_sample()) {
    for (std::size_t i = begin; i < end; ++i) {
      const Prompt prompt = build_prompt(user, view.item(i));
      samples.push_back(assemble(user, prompt, {&first[i - begin]}, {view.row(i)}));
    }
    return samples;
  }
  const Prompt& prompt = prompts_[user];
  const std::int64_t budget = behaviour_budget(static_cast<std::int64_t>(prompt.ids.size()), user);
  // Greedy packing of an ordered sequence gives the fewest samples.
  for (std::size_t k = 0; k < end - begin;) {
    std::vector<const std::vector<std::int32_t>*> sentences{&first[k]};
    std::vector<std::size_t> rows{view.row(begin + k)};
    auto used = static_cast<std::int64_t>(first[k].size());
    std::size_t j = k + 1;
    while (j < end - begin && !window_full(j - k) && used + static_cast<std::int64_t>(next_of(j).size()) <= budget) {
      used += static_cast<std::int64_t>(next_of(j).size());
      sentences.push_back(&next_of(j));
      rows.push_back(view.row(begin + j));
      ++j;
    }
    samples.push_back(assemble(user, prompt, sentences, std::move(rows)));
    k = j;
  }
  return samples;
}

ProfileSample SampleBuilder::prompt(std::uint32_t user, std::optional<std::uint32_t> item) const {
  USERIP_CHECK(user < dataset_->num_users(), "profile samples: user {} out of range ({} users)", user,
               dataset_->num_users());
  Prompt built;
  if (template_->one_interaction_per_sample()) {
    USERIP_CHECK(item.has_value(), "profile samples: the evidence of template {} names item fields: the prompt "
                 "needs an item", template_->source());
    built = build_prompt(user, item);
  } else {
    built = prompts_[user];
  }
  ProfileSample sample;
  sample.user = user;
  sample.ids = std::move(built.ids);
  sample.segment = std::move(built.segment);
  sample.soft_index = std::move(built.soft_index);
  sample.is_label.assign(sample.ids.size(), 0);
  return sample;
}

std::int64_t SampleBuilder::prompt_length(std::uint32_t user) const {
  USERIP_CHECK(!template_->one_interaction_per_sample(),
               "profile samples: the evidence of template {} names item fields: prompts differ per item",
               template_->source());
  USERIP_CHECK(user < dataset_->num_users(), "profile samples: user {} out of range ({} users)", user,
               dataset_->num_users());
  return static_cast<std::int64_t>(prompts_[user].ids.size());
}

ProfileSample SampleBuilder::probe(std::size_t attribute, const UserAggregates& aggregates,
                                   std::optional<std::uint32_t> item) const {
  USERIP_CHECK(attribute < template_->attributes().size(), "profile samples: attribute {} out of range ({})",
               attribute, template_->attributes().size());
  const ProbeText text = template_->render_probe(attribute, *dataset_, aggregates, item);
  ProfileSample sample;
  const auto append = [&](const std::vector<std::int32_t>& tokens, std::int16_t soft) {
    for (std::int32_t id : tokens) {
      sample.ids.push_back(id);
      sample.segment.push_back(static_cast<std::int8_t>(attribute));
      sample.soft_index.push_back(soft);
    }
  };
  // Spaces around "<soft>" only join text and soft tokens, as between evidence and soft tokens in
  // training samples, where the evidence is encoded without them.
  std::string before = text.before;
  while (!before.empty() && before.back() == ' ') before.pop_back();
  append(tokenizer_->encode(before), -1);
  const int offset = template_->soft_offset(attribute);
  for (int l = 0; l < template_->attributes()[attribute].soft_tokens; ++l) {
    append({0}, static_cast<std::int16_t>(offset + l));
  }
  // A leading space belongs to the joining; SentencePiece's dummy prefix supplies it.
  std::string after = text.after;
  if (!after.empty() && after[0] == ' ') after.erase(0, 1);
  if (!after.empty()) append(encode_sentence(after, text.after[0] != ' '), -1);
  sample.is_label.assign(sample.ids.size(), 0);
  return sample;
}

const UserAggregates& SampleBuilder::aggregates(std::uint32_t user) const {
  USERIP_CHECK(user < aggregates_.size(), "profile samples: user {} out of range ({} users)", user,
               aggregates_.size());
  return aggregates_[user];
}

std::vector<std::pair<std::size_t, std::size_t>> SampleBuilder::windows(std::uint32_t user) const {
  USERIP_CHECK(user < dataset_->num_users(), "profile samples: user {} out of range ({} users)", user,
               dataset_->num_users());
  return {windows_.begin() + static_cast<std::ptrdiff_t>(window_offsets_[user]),
          windows_.begin() + static_cast<std::ptrdiff_t>(window_offsets_[user + 1])};
}

torch::Tensor attention_mask(const std::vector<const ProfileSample*>& samples, AttentionStructure structure,
                             torch::Device device) {
  std::int64_t longest = 0;
  for (const auto* s : samples) longest = std::max(longest, s->length());
  const auto rows = static_cast<std::int64_t>(samples.size());
  auto mask = at::zeros({rows, longest, longest}, at::TensorOptions().dtype(at::kBool));
  auto allowed = mask.accessor<bool, 3>();
  for (std::int64_t b = 0; b < rows; ++b) {
    const ProfileSample& s = *samples[static_cast<std::size_t>(b)];
    const std::int64_t n = s.length();
    // Positions before the first segment (the leading <bos>) open the text for every segment: the LM
    // has always seen <bos> first, whatever it reads.
    std::int64_t shared = 0;
    while (shared < n && s.segment[static_cast<std::size_t>(shared)] < 0 && !s.is_label[static_cast<std::size_t>(shared)])
      ++shared;
    if (shared == n) shared = 0;  // no segments at all: plain causal anyway
    for (std::int64_t t = 0; t < n; ++t) {
      const std::int8_t query_segment = s.segment[static_cast<std::size_t>(t)];
      for (std::int64_t k = 0; k <= t; ++k) {
        allowed[b][t][k] = structure == AttentionStructure::causal || query_segment < 0 || k < shared ||
                           s.segment[static_cast<std::size_t>(k)] == query_segment;
      }
    }
    for (std::int64_t t = n; t < longest; ++t) allowed[b][t][t] = true;
  }
  return mask.to(device);
}

SampleBatch make_batch(const std::vector<const ProfileSample*>& samples, AttentionStructure structure,
                       torch::Device device) {
  USERIP_CHECK(!samples.empty(), "profile samples: a batch needs at least one sample");
  std::int64_t longest = 0;
  for (const auto* s : samples) longest = std::max(longest, s->length());
  const auto rows = static_cast<std::int64_t>(samples.size());
  const auto cpu_long = at::TensorOptions().dtype(at::kLong);
  auto ids = at::zeros({rows, longest}, cpu_long);
  auto slots = at::zeros({rows, longest}, at::TensorOptions().dtype(at::kBool));
  auto labels = at::zeros({rows, longest}, at::TensorOptions().dtype(at::kBool));
  auto label_count = at::zeros({rows}, cpu_long);
  auto ids_a = ids.accessor<std::int64_t, 2>();
  auto slots_a = slots.accessor<bool, 2>();
  auto labels_a = labels.accessor<bool, 2>();
  auto count_a = label_count.accessor<std::int64_t, 1>();
  std::vector<std::int64_t> soft_index, soft_row;
  SampleBatch batch;
  for (std::int64_t b = 0; b < rows; ++b) {
    const ProfileSample& s = *samples[static_cast<std::size_t>(b)];
    USERIP_ASSERT(s.segment.size() == s.ids.size() && s.soft_index.size() == s.ids.size() &&
                  s.is_label.size() == s.ids.size());
    batch.users.push_back(s.user);
    for (std::int64_t t = 0; t < s.length(); ++t) {
      const auto i = static_cast<std::size_t>(t);
      ids_a[b][t] = s.ids[i];
      labels_a[b][t] = s.is_label[i] != 0;
      count_a[b] += s.is_label[i] != 0 ? 1 : 0;
      if (s.soft_index[i] >= 0) {
        slots_a[b][t] = true;
        soft_index.push_back(s.soft_index[i]);  // row-major over [B, T], as splice_soft_tokens reads slots
        soft_row.push_back(b);
      }
    }
  }
  const auto vector_tensor = [&](const std::vector<std::int64_t>& values) {
    return at::tensor(values, cpu_long).reshape({static_cast<std::int64_t>(values.size())});
  };
  batch.targets = lm::next_token_targets(ids, labels).to(device);
  batch.ids = ids.to(device);
  batch.soft_slots = slots.to(device);
  batch.soft_index = vector_tensor(soft_index).to(device);
  batch.soft_row = vector_tensor(soft_row).to(device);
  batch.label_count = label_count.to(device);
  batch.attention = attention_mask(samples, structure, device);
  return batch;
}

std::vector<ProfileSample> most_recent_samples(std::vector<ProfileSample> samples, std::int64_t interactions) {
  USERIP_CHECK(interactions >= 0, "profile samples: the most recent interactions must be >= 0, got {}", interactions);
  if (interactions == 0 || samples.empty()) return samples;
  std::size_t first = samples.size() - 1;
  std::int64_t kept = static_cast<std::int64_t>(samples[first].rows.size());
  while (first > 0 && kept + static_cast<std::int64_t>(samples[first - 1].rows.size()) <= interactions)
    kept += static_cast<std::int64_t>(samples[--first].rows.size());
  samples.erase(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(first));
  return samples;
}

std::vector<std::vector<std::size_t>> pack_samples(const std::vector<ProfileSample>& samples,
                                                   std::int64_t max_batch_tokens, std::int64_t max_batch_rows) {
  USERIP_CHECK(max_batch_tokens >= 1 && max_batch_rows >= 1,
               "profile samples: batch limits must be positive (tokens {}, rows {})", max_batch_tokens,
               max_batch_rows);
  std::vector<std::int64_t> lengths;
  lengths.reserve(samples.size());
  for (const auto& s : samples) lengths.push_back(s.length());
  lm::BatchingOptions options;
  options.max_tokens = max_batch_tokens;
  options.max_sequences = max_batch_rows;
  return lm::bucket_by_length(lengths, options);
}

}  // namespace userip::profile
