#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "support/temp_dir.h"
#include "userip/data/dataset.h"
#include "userip/data/split.h"
#include "userip/lm/model.h"
#include "userip/profile/samples.h"
#include "userip/profile/template.h"
#include "userip/text/tokenizer.h"

namespace userip::profile {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;

fs::path reference(const std::string& name) {
  return fs::path(USERIP_SOURCE_DIR) / "tests" / "data" / "reference" / name;
}

// The cheapest real tokenizers in the repository: a 1000-piece SentencePiece model (bos 1, eos 2)
// and GPT-2's byte-level BPE (bos = eos = 50256).
const text::Tokenizer& llama_tokenizer() {
  static const auto tokenizer = text::load_tokenizer(reference("tiny-llama-hf"));
  return *tokenizer;
}
const text::Tokenizer& gpt2_tokenizer() {
  static const auto tokenizer = text::load_tokenizer(reference("tiny-gpt2-hf"));
  return *tokenizer;
}

const std::vector<std::string> kTitles = {"Toy Story", "Heat", "Alien", "Up", "Fargo", "Big", "Jaws", "Rocky"};
const std::vector<std::string> kYears = {"1995", "1995", "1979", "2009", "1996", "1988", "1975", "1976"};
const std::vector<std::string> kGenres = {"Adventure|Animation", "Action|Crime", "Horror|Sci-Fi", "Animation",
                                          "Comedy|Crime|Drama", "Comedy", "Thriller", "Drama"};
// User u0's ratings in time order: the first 6 are training rows (train ratio 0.6 of 10), then
// 2 validation and 2 test rows.
const std::vector<float> kUser0Ratings = {5, 4, 3, 5, 2, 4, 1, 3, 4, 5};

// Four users (10, 13, 16 and 1 interactions) over eight movies, split 0.6 / 0.2 / 0.2.
data::Dataset four_movielens_users() {
  data::Dataset d;
  for (std::size_t i = 0; i < kTitles.size(); ++i) d.item_ids.push_back("m" + std::to_string(i));
  d.item_fields = {{"title", data::FieldKind::text, kTitles},
                   {"year", data::FieldKind::number, kYears},
                   {"genres", data::FieldKind::category_list, kGenres}};
  d.user_ids = {"u0", "u1", "u2", "u3"};
  const std::vector<std::size_t> counts = {10, 13, 16, 1};
  std::int64_t t = 1000;
  for (std::uint32_t u = 0; u < 4; ++u) {
    for (std::size_t k = 0; k < counts[u]; ++k) {
      d.interactions.user.push_back(u);
      d.interactions.item.push_back(static_cast<std::uint32_t>((k * 3 + u) % kTitles.size()));
      d.interactions.rating.push_back(u == 0 ? kUser0Ratings[k] : static_cast<float>(1 + (k + u) % 5));
      d.interactions.timestamp.push_back(t + static_cast<std::int64_t>(k) * 10 - static_cast<std::int64_t>(u));
    }
  }
  data::SplitConfig config;
  config.train_ratio = 0.6;
  config.valid_ratio = 0.2;
  config.test_ratio = 0.2;
  config.cold_fraction = 0;
  d.split = data::make_split(d, config);
  return d;
}

// The behaviour sentence of a row, written out here rather than by the template code.
std::string sentence(const data::Dataset& d, std::size_t row) {
  const std::uint32_t item = d.interactions.item[row];
  std::string genres = kGenres[item];
  for (std::size_t p = genres.find('|'); p != std::string::npos; p = genres.find('|')) genres.replace(p, 1, ", ");
  return fmt::format("Watched {} ({}), {}; rated {}.", kTitles[item], kYears[item], genres,
                     static_cast<int>(d.interactions.rating[row]));
}

std::string joined(const data::Dataset& d, const std::vector<std::size_t>& rows) {
  std::string text;
  for (std::size_t row : rows) text += (text.empty() ? "" : " ") + sentence(d, row);
  return text;
}

const char* kTemplate = R"({
  "attributes": [
    {"name": "taste", "evidence": "The user's taste in movies:"},
    {"name": "background", "evidence": "About this user ({user.count} movies, {user.mean_rating} on average, {user.like_rate}% liked):", "soft_tokens": 2}
  ],
  "behaviour": "Watched {title} ({year}), {genres}; rated {rating}."
})";

std::vector<std::size_t> rows_of(const data::SplitView& view, std::uint32_t user) {
  std::vector<std::size_t> rows;
  for (std::size_t i = view.user_begin(user); i < view.user_end(user); ++i) rows.push_back(view.row(i));
  return rows;
}

SampleOptions options(std::int64_t max_tokens, int per_user = 1, std::uint64_t seed = 42) {
  SampleOptions o;
  o.max_tokens = max_tokens;
  o.samples_per_user = per_user;
  o.seed = seed;
  return o;
}

std::vector<std::int32_t> cat(std::vector<std::vector<std::int32_t>> parts) {
  std::vector<std::int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(ProfileSamples, SampleLayoutEvidenceSoftSlotsBosBehaviourEos) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto t = ProfileTemplate::parse(kTemplate, "t.json", d);
  const auto& tok = llama_tokenizer();
  SampleBuilder builder(d, history, t, tok, options(100000));
  EXPECT_TRUE(builder.joins_without_space());  // SentencePiece's dummy prefix is the joining space

  const auto samples = builder.training_samples(0, 0);
  ASSERT_EQ(samples.size(), 1u);  // the whole history fits: a single window
  const ProfileSample& s = samples[0];
  EXPECT_EQ(s.user, 0u);
  const auto train_rows = rows_of(history, 0);
  ASSERT_EQ(train_rows.size(), 6u);
  EXPECT_EQ(s.rows, train_rows);

  // Ratings 5 4 3 5 2 4: mean 23/6 = 3.83; 4 of 6 >= 4 -> 67 %.
  const auto e0 = tok.encode("The user's taste in movies:");
  const auto e1 = tok.encode("About this user (6 movies, 3.8 on average, 67% liked):");
  const auto behaviour = tok.encode(joined(d, train_rows));
  const std::int32_t bos = 1, eos = 2;
  ASSERT_EQ(tok.specials().bos, bos);
  ASSERT_EQ(tok.specials().eos, eos);
  // <bos> first (as every pretraining document starts), then the prompt, then the behaviour.
  EXPECT_EQ(s.ids, cat({{bos}, e0, {0}, e1, {0, 0}, behaviour, {eos}}));

  const std::size_t n0 = e0.size(), n1 = e1.size(), nb = behaviour.size();
  const std::size_t n = 1 + n0 + 1 + n1 + 2 + nb + 1;
  const std::size_t prompt_end = 1 + n0 + 1 + n1 + 2;
  ASSERT_EQ(s.length(), static_cast<std::int64_t>(n));
  ASSERT_EQ(s.segment.size(), n);
  for (std::size_t p = 0; p < n; ++p) {
    const int expected_segment = p == 0 ? -1 : p <= n0 + 1 ? 0 : p < prompt_end ? 1 : -1;
    EXPECT_EQ(s.segment[p], expected_segment) << p;
    int expected_soft = -1;
    if (p == 1 + n0) expected_soft = 0;
    if (p == 1 + n0 + 1 + n1) expected_soft = 1;
    if (p == 1 + n0 + 1 + n1 + 1) expected_soft = 2;
    EXPECT_EQ(s.soft_index[p], expected_soft) << p;
    EXPECT_EQ(s.is_label[p], p >= prompt_end ? 1 : 0) << p;  // after the prompt: behaviour and eos
  }
  EXPECT_EQ(s.label_count(), static_cast<std::int64_t>(nb + 1));
  EXPECT_EQ(builder.prompt_length(0), static_cast<std::int64_t>(n0 + 1 + n1 + 2));
  const auto prompt = builder.prompt(0);
  EXPECT_EQ(prompt.ids, cat({e0, {0}, e1, {0, 0}}));
  EXPECT_EQ(prompt.label_count(), 0);

  // A user with one interaction has it in training; no history at all means no samples.
  EXPECT_EQ(builder.training_samples(3, 0).size(), 1u);
  const auto valid_only = d.view({data::SplitPart::valid});
  SampleBuilder valid_builder(d, valid_only, t, tok, options(100000));
  EXPECT_TRUE(valid_builder.training_samples(3, 0).empty());
}

TEST(ProfileSamples, BytePairJoiningMatchesTheJoinedText) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto t = ProfileTemplate::parse(kTemplate, "t.json", d);
  const auto& tok = gpt2_tokenizer();
  SampleBuilder builder(d, history, t, tok, options(100000));
  EXPECT_FALSE(builder.joins_without_space());
  for (std::uint32_t u : {0u, 1u, 2u}) {
    const auto s = builder.training_samples(u, 0).at(0);
    const auto behaviour = tok.encode(joined(d, rows_of(history, u)));
    const auto prompt_length = static_cast<std::size_t>(builder.prompt_length(u));
    // GPT-2 has one special token, used as both bos and eos.
    ASSERT_EQ(s.ids.size(), 1 + prompt_length + behaviour.size() + 1);
    EXPECT_EQ(s.ids[0], 50256);
    EXPECT_EQ(std::vector<std::int32_t>(s.ids.begin() + static_cast<std::ptrdiff_t>(prompt_length) + 1,
                                        s.ids.end() - 1),
              behaviour);
    EXPECT_EQ(s.ids.back(), 50256);
  }
}

TEST(ProfileSamples, WindowsFitTheBudgetAndCannotGrow) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto t = ProfileTemplate::parse(kTemplate, "t.json", d);
  const auto& tok = llama_tokenizer();
  SampleBuilder probe_lengths(d, history, t, tok, options(100000));
  const std::int64_t prompt = probe_lengths.prompt_length(2);
  const auto rows = rows_of(history, 2);  // 10 training rows
  std::int64_t longest = 0;
  for (std::size_t row : rows) longest = std::max<std::int64_t>(longest, tok.encode(sentence(d, row)).size());
  // Room for any two sentences of behaviour, rarely for four.
  const std::int64_t max_tokens = prompt + 2 + 2 * longest + 1;
  SampleBuilder builder(d, history, t, tok, options(max_tokens, 3));
  const auto windows = builder.windows(2);
  ASSERT_GE(windows.size(), 3u);
  EXPECT_EQ(windows.front().first, history.user_begin(2));
  EXPECT_EQ(windows.back().second, history.user_end(2));
  for (std::size_t w = 0; w < windows.size(); ++w) {
    const auto [first, last] = windows[w];
    if (w > 0) {
      EXPECT_GT(first, windows[w - 1].first);
      EXPECT_GT(last, windows[w - 1].second);  // a start is valid only if its window reaches further
    }
    std::vector<std::size_t> window_rows(rows.begin() + static_cast<std::ptrdiff_t>(first - history.user_begin(2)),
                                         rows.begin() + static_cast<std::ptrdiff_t>(last - history.user_begin(2)));
    const auto length = prompt + 2 + static_cast<std::int64_t>(tok.encode(joined(d, window_rows)).size());
    EXPECT_LE(length, max_tokens);
    if (last < history.user_end(2)) {  // one more interaction would not fit
      window_rows.push_back(history.row(last));
      EXPECT_GT(prompt + 2 + static_cast<std::int64_t>(tok.encode(joined(d, window_rows)).size()), max_tokens);
    }
  }
  for (std::uint64_t round = 0; round < 5; ++round) {
    const auto samples = builder.training_samples(2, round);
    ASSERT_EQ(samples.size(), 3u);
    std::set<std::vector<std::size_t>> distinct;
    for (const auto& s : samples) {
      EXPECT_LE(s.length(), max_tokens);
      EXPECT_GE(s.rows.size(), 2u);
      distinct.insert(s.rows);
      EXPECT_EQ(s.ids.back(), 2);
    }
    EXPECT_EQ(distinct.size(), 3u);  // each a different window
  }
}

TEST(ProfileSamples, InteractionsPerSampleCapEveryWindowAndEvaluationSample) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto held_out = d.view({data::SplitPart::valid, data::SplitPart::test});
  const auto t = ProfileTemplate::parse(kTemplate, "t.json", d);
  const auto& tok = llama_tokenizer();
  for (std::int64_t cap : {1, 2}) {
    auto o = options(100000, 50);
    o.max_interactions = cap;
    SampleBuilder builder(d, history, t, tok, o);
    const auto rows = rows_of(history, 2);  // 10 training rows
    // One window per start; each as long as the cap allows, shorter only at the end of the history.
    const auto samples = builder.training_samples(2, 0);
    EXPECT_EQ(samples.size(), cap == 1 ? rows.size() : rows.size() - 1);
    for (const auto& s : samples) EXPECT_EQ(s.rows.size(), static_cast<std::size_t>(cap));
    std::vector<std::size_t> covered;
    for (const auto& s : builder.evaluation_samples(2, held_out)) {
      EXPECT_LE(s.rows.size(), static_cast<std::size_t>(cap));
      covered.insert(covered.end(), s.rows.begin(), s.rows.end());
    }
    EXPECT_EQ(covered, rows_of(held_out, 2));
  }
  auto bad = options(100000);
  bad.max_interactions = -1;
  testing::expect_error([&] { SampleBuilder(d, history, t, tok, bad); }, {"interactions per sample"});
}

TEST(ProfileSamples, DeterministicPerSeedRoundAndUser) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto t = ProfileTemplate::parse(kTemplate, "t.json", d);
  const auto& tok = llama_tokenizer();
  SampleBuilder probe_lengths(d, history, t, tok, options(100000));
  const auto one = static_cast<std::int64_t>(tok.encode(sentence(d, rows_of(history, 2)[0])).size());
  const std::int64_t max_tokens = probe_lengths.prompt_length(2) + 2 + 2 * one;
  SampleBuilder a(d, history, t, tok, options(max_tokens, 1, 7));
  SampleBuilder b(d, history, t, tok, options(max_tokens, 1, 7));
  ASSERT_GE(a.windows(2).size(), 4u);
  std::set<std::vector<std::size_t>> seen;
  for (std::uint64_t round = 0; round < 12; ++round) {
    const auto x = a.training_samples(2, round), y = b.training_samples(2, round);
    ASSERT_EQ(x.size(), 1u);
    ASSERT_EQ(y.size(), 1u);
    EXPECT_EQ(x[0].ids, y[0].ids);
    EXPECT_EQ(x[0].rows, y[0].rows);
    EXPECT_EQ(a.training_samples(2, round)[0].rows, x[0].rows);  // repeatable, whatever was asked before
    seen.insert(x[0].rows);
  }
  EXPECT_GE(seen.size(), 2u);  // rounds move the window
}

TEST(ProfileSamples, TrainingSamplesUseHistoryRowsOnly) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto t = ProfileTemplate::parse(kTemplate, "t.json", d);
  const auto& tok = llama_tokenizer();
  SampleBuilder wide(d, history, t, tok, options(100000));
  std::int64_t longest_prompt = 0;
  for (std::uint32_t u = 0; u < d.num_users(); ++u) longest_prompt = std::max(longest_prompt, wide.prompt_length(u));
  // Small windows, and every window of every user each round: together they cover the history.
  SampleBuilder builder(d, history, t, tok, options(longest_prompt + 2 + 40, 100));
  std::set<std::size_t> covered;
  for (std::uint32_t u = 0; u < d.num_users(); ++u) {
    for (std::uint64_t round = 0; round < 6; ++round) {
      for (const auto& s : builder.training_samples(u, round)) {
        for (std::size_t row : s.rows) {
          EXPECT_EQ(d.split.part[row], data::SplitPart::train) << "row " << row;
          EXPECT_EQ(d.interactions.user[row], u);
          covered.insert(row);
        }
      }
    }
  }
  std::size_t train_rows = 0;
  for (auto part : d.split.part) train_rows += part == data::SplitPart::train ? 1 : 0;
  EXPECT_EQ(covered.size(), train_rows);
  // The evidence counts history rows only: u0 has 6 training rows of 10.
  EXPECT_EQ(builder.aggregates(0).count, 6u);
}

TEST(ProfileSamples, EvaluationSamplesCoverEachRowOnce) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto held_out = d.view({data::SplitPart::valid, data::SplitPart::test});
  const auto t = ProfileTemplate::parse(kTemplate, "t.json", d);
  const auto& tok = llama_tokenizer();
  SampleBuilder wide(d, history, t, tok, options(100000));
  const std::int64_t max_tokens = wide.prompt_length(2) + 2 + 80;  // two ~35-token sentences
  SampleBuilder builder(d, history, t, tok, options(max_tokens));
  for (std::uint32_t u = 0; u < d.num_users(); ++u) {
    const auto samples = builder.evaluation_samples(u, held_out);
    std::vector<std::size_t> rows;
    for (std::size_t k = 0; k < samples.size(); ++k) {
      const auto& s = samples[k];
      EXPECT_LE(s.length(), max_tokens);
      EXPECT_EQ(s.ids.front(), 1);  // <bos>, then the prompt, which still comes from the history
      EXPECT_EQ(std::vector<std::int32_t>(s.ids.begin() + 1, s.ids.begin() + 1 + builder.prompt_length(u)),
                builder.prompt(u).ids);
      const auto behaviour = tok.encode(joined(d, s.rows));
      EXPECT_EQ(s.label_count(), static_cast<std::int64_t>(behaviour.size()) + 1);
      if (k + 1 < samples.size()) {  // greedy: the next sample's first row did not fit here
        auto grown = s.rows;
        grown.push_back(samples[k + 1].rows.front());
        EXPECT_GT(builder.prompt_length(u) + 2 + static_cast<std::int64_t>(tok.encode(joined(d, grown)).size()),
                  max_tokens);
      }
      rows.insert(rows.end(), s.rows.begin(), s.rows.end());
    }
    EXPECT_EQ(rows, rows_of(held_out, u));  // every row once, in time order
  }
  EXPECT_GE(builder.evaluation_samples(2, held_out).size(), 2u);
  EXPECT_TRUE(builder.evaluation_samples(3, held_out).empty());  // u3's single row is training
}

TEST(ProfileSamples, OverlongInteractionIsTruncatedKeepingEos) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto t = ProfileTemplate::parse(kTemplate, "t.json", d);
  const auto& tok = llama_tokenizer();
  SampleBuilder wide(d, history, t, tok, options(100000));
  std::uint32_t user = 0;  // the user with the longest prompt gets exactly 3 behaviour tokens
  for (std::uint32_t u = 0; u < d.num_users(); ++u) {
    if (wide.prompt_length(u) > wide.prompt_length(user)) user = u;
  }
  const std::int64_t max_tokens = wide.prompt_length(user) + 2 + 3;
  SampleBuilder builder(d, history, t, tok, options(max_tokens, 2));
  EXPECT_EQ(builder.windows(user).size(), history.user_count(user));  // every start is its own window
  for (const auto& s : builder.training_samples(user, 0)) {
    ASSERT_EQ(s.rows.size(), 1u);
    EXPECT_EQ(s.length(), max_tokens);
    EXPECT_EQ(s.label_count(), 4);
    EXPECT_EQ(s.ids.back(), 2);
    const auto full = tok.encode(sentence(d, s.rows[0]));
    EXPECT_EQ(std::vector<std::int32_t>(s.ids.end() - 4, s.ids.end() - 1),
              std::vector<std::int32_t>(full.begin(), full.begin() + 3));
  }
  // No room at all for behaviour: a clear error.
  expect_error([&] { SampleBuilder(d, history, t, tok, options(wide.prompt_length(user) + 2)); },
               {"max tokens", "no room"});
}

TEST(ProfileSamples, NoBosOrEosWhenTheTokenizerHasNone) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto t = ProfileTemplate::parse(kTemplate, "t.json", d);
  auto tok = text::load_tokenizer(reference("tiny-llama-hf"));
  auto specials = tok->specials();
  specials.bos = -1;
  specials.eos = -1;
  tok->set_specials(specials);
  SampleBuilder builder(d, history, t, *tok, options(100000));
  const auto s = builder.training_samples(0, 0).at(0);
  const auto prompt = builder.prompt(0).ids;
  const auto behaviour = tok->encode(joined(d, s.rows));
  EXPECT_EQ(s.ids, cat({prompt, behaviour}));
  EXPECT_EQ(s.label_count(), static_cast<std::int64_t>(behaviour.size()));
}

TEST(ProfileSamples, ItemEvidenceGivesOneInteractionPerSample) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto t = ProfileTemplate::parse(
      R"({"attributes": [{"name": "hobby", "evidence": "The user likes {genres}"}],
          "behaviour": "Watched {title} ({year}), {genres}; rated {rating}."})",
      "item.json", d);
  const auto& tok = llama_tokenizer();
  SampleBuilder builder(d, history, t, tok, options(100000, 3));
  const auto samples = builder.training_samples(0, 5);
  ASSERT_EQ(samples.size(), 3u);
  for (const auto& s : samples) {
    ASSERT_EQ(s.rows.size(), 1u);
    std::string genres = kGenres[d.interactions.item[s.rows[0]]];
    for (std::size_t p = genres.find('|'); p != std::string::npos; p = genres.find('|')) genres.replace(p, 1, ", ");
    EXPECT_EQ(s.ids, cat({{1}, tok.encode("The user likes " + genres), {0}, tok.encode(sentence(d, s.rows[0])), {2}}));
  }
  EXPECT_EQ(builder.evaluation_samples(0, d.view({data::SplitPart::valid})).size(), 2u);
  expect_error([&] { builder.prompt_length(0); }, {"item.json", "item"});
  EXPECT_EQ(builder.prompt(0, 3u).ids, cat({tok.encode("The user likes Animation"), {0}}));
}

TEST(ProfileSamples, ProbePlacesTheSoftSlots) {
  const auto d = four_movielens_users();
  const auto history = d.training_view();
  const auto t = ProfileTemplate::parse(kTemplate, "t.json", d);
  const auto& tok = llama_tokenizer();
  SampleBuilder builder(d, history, t, tok, options(100000));
  // Default probe of "background": its evidence, then " <soft>. In short, this user"; two slots.
  const auto p = builder.probe(1, builder.aggregates(0));
  const auto before = tok.encode("About this user (6 movies, 3.8 on average, 67% liked):");
  const auto after = tok.encode(". In short, this user");
  EXPECT_EQ(p.ids, cat({before, {0, 0}, after}));
  EXPECT_EQ(p.soft_index[before.size()], 1);
  EXPECT_EQ(p.soft_index[before.size() + 1], 2);
  EXPECT_EQ(p.label_count(), 0);
}

ProfileSample handmade(std::vector<std::int8_t> segment, std::vector<std::int16_t> soft, std::vector<std::uint8_t> label,
                       std::uint32_t user = 0) {
  ProfileSample s;
  s.user = user;
  s.segment = std::move(segment);
  s.soft_index = std::move(soft);
  s.is_label = std::move(label);
  for (std::size_t i = 0; i < s.segment.size(); ++i) s.ids.push_back(static_cast<std::int32_t>(10 + i));
  return s;
}

at::Tensor matrix(const std::vector<std::vector<int>>& rows) {
  auto out = at::zeros({static_cast<std::int64_t>(rows.size()), static_cast<std::int64_t>(rows[0].size())},
                       at::TensorOptions().dtype(at::kBool));
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (std::size_t j = 0; j < rows[i].size(); ++j) {
      out[static_cast<std::int64_t>(i)][static_cast<std::int64_t>(j)] = rows[i][j] != 0;
    }
  }
  return out;
}

TEST(ProfileSamples, AttentionMasks) {
  // Evidence+soft of attribute 0 (positions 0-1), of attribute 1 (2-3), then bos, behaviour, eos.
  const auto a = handmade({0, 0, 1, 1, -1, -1, -1}, {-1, 0, -1, 1, -1, -1, -1}, {0, 0, 0, 0, 0, 1, 1});
  const auto b = handmade({0, 1, -1, -1}, {0, 1, -1, -1}, {0, 0, 0, 1});
  const auto cpu = torch::Device(torch::kCPU);

  const auto causal = attention_mask({&a}, AttentionStructure::causal, cpu);
  EXPECT_TRUE(at::equal(causal[0], at::ones({7, 7}, at::TensorOptions().dtype(at::kBool)).tril()));

  const auto segment = attention_mask({&a, &b}, AttentionStructure::segment, cpu);
  ASSERT_EQ(segment.sizes(), (std::vector<std::int64_t>{2, 7, 7}));
  EXPECT_TRUE(at::equal(segment[0], matrix({{1, 0, 0, 0, 0, 0, 0},
                                            {1, 1, 0, 0, 0, 0, 0},
                                            {0, 0, 1, 0, 0, 0, 0},
                                            {0, 0, 1, 1, 0, 0, 0},
                                            {1, 1, 1, 1, 1, 0, 0},
                                            {1, 1, 1, 1, 1, 1, 0},
                                            {1, 1, 1, 1, 1, 1, 1}})));
  // Padded to 7: real queries never see padding keys; padding queries see only themselves.
  EXPECT_TRUE(at::equal(segment[1], matrix({{1, 0, 0, 0, 0, 0, 0},
                                            {0, 1, 0, 0, 0, 0, 0},
                                            {1, 1, 1, 0, 0, 0, 0},
                                            {1, 1, 1, 1, 0, 0, 0},
                                            {0, 0, 0, 0, 1, 0, 0},
                                            {0, 0, 0, 0, 0, 1, 0},
                                            {0, 0, 0, 0, 0, 0, 1}})));
  const auto causal_padded = attention_mask({&a, &b}, AttentionStructure::causal, cpu);
  EXPECT_TRUE(at::equal(causal_padded[1], matrix({{1, 0, 0, 0, 0, 0, 0},
                                                  {1, 1, 0, 0, 0, 0, 0},
                                                  {1, 1, 1, 0, 0, 0, 0},
                                                  {1, 1, 1, 1, 0, 0, 0},
                                                  {0, 0, 0, 0, 1, 0, 0},
                                                  {0, 0, 0, 0, 0, 1, 0},
                                                  {0, 0, 0, 0, 0, 0, 1}})));
  // A leading <bos> (segment -1 before any attribute) is visible to every segment.
  const auto c = handmade({-1, 0, 0, 1, 1, -1, -1}, {-1, -1, 0, -1, 1, -1, -1}, {0, 0, 0, 0, 0, 1, 1});
  EXPECT_TRUE(at::equal(attention_mask({&c}, AttentionStructure::segment, cpu)[0],
                        matrix({{1, 0, 0, 0, 0, 0, 0},
                                {1, 1, 0, 0, 0, 0, 0},
                                {1, 1, 1, 0, 0, 0, 0},
                                {1, 0, 0, 1, 0, 0, 0},
                                {1, 0, 0, 1, 1, 0, 0},
                                {1, 1, 1, 1, 1, 1, 0},
                                {1, 1, 1, 1, 1, 1, 1}})));
  EXPECT_EQ(attention_structure_from_string("segment"), AttentionStructure::segment);
  EXPECT_EQ(to_string(AttentionStructure::causal), "causal");
  expect_error([] { attention_structure_from_string("full"); }, {"full", "causal", "segment"});
}

TEST(ProfileSamples, MakeBatchOrdersSoftSlotsRowMajor) {
  const auto a = handmade({0, 0, 1, 1, -1, -1, -1}, {-1, 0, -1, 1, -1, -1, -1}, {0, 0, 0, 0, 0, 1, 1}, 5);
  const auto b = handmade({0, 1, -1, -1}, {0, 1, -1, -1}, {0, 0, 0, 1}, 9);
  const auto batch = make_batch({&b, &a}, AttentionStructure::segment, torch::Device(torch::kCPU));
  EXPECT_EQ(batch.users, (std::vector<std::uint32_t>{9, 5}));
  ASSERT_EQ(batch.ids.sizes(), (std::vector<std::int64_t>{2, 7}));
  EXPECT_EQ(batch.ids.scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(batch.ids, at::tensor(std::vector<std::int64_t>{10, 11, 12, 13, 0, 0, 0,  //
                                                                        10, 11, 12, 13, 14, 15, 16})
                                       .reshape({2, 7})));
  EXPECT_TRUE(at::equal(batch.soft_slots, matrix({{1, 1, 0, 0, 0, 0, 0}, {0, 1, 0, 1, 0, 0, 0}})));
  EXPECT_TRUE(at::equal(batch.soft_index, at::tensor(std::vector<std::int64_t>{0, 1, 0, 1})));
  EXPECT_TRUE(at::equal(batch.soft_row, at::tensor(std::vector<std::int64_t>{0, 0, 1, 1})));
  const std::int64_t x = lm::kIgnoreIndex;
  // Position t predicts token t+1 when t+1 is a label.
  EXPECT_TRUE(at::equal(batch.targets, at::tensor(std::vector<std::int64_t>{x, x, 13, x, x, x, x,  //
                                                                            x, x, x, x, 15, 16, x})
                                           .reshape({2, 7})));
  EXPECT_TRUE(at::equal(batch.label_count, at::tensor(std::vector<std::int64_t>{1, 2})));
  EXPECT_TRUE(at::equal(batch.attention, attention_mask({&b, &a}, AttentionStructure::segment,
                                                        torch::Device(torch::kCPU))));
}

TEST(ProfileSamples, PackSamplesPadsNoFurtherThanEachBatchsLongest) {
  std::vector<ProfileSample> samples;
  const std::vector<std::size_t> lengths = {5, 9, 3, 9, 12, 4, 7, 7, 2, 11};
  for (std::size_t n : lengths) {
    samples.push_back(handmade(std::vector<std::int8_t>(n, -1), std::vector<std::int16_t>(n, -1),
                               std::vector<std::uint8_t>(n, 1)));
  }
  const auto batches = pack_samples(samples, 24, 3);
  std::vector<int> seen(samples.size(), 0);
  for (const auto& batch : batches) {
    ASSERT_FALSE(batch.empty());
    EXPECT_LE(batch.size(), 3u);
    std::size_t longest = 0;
    std::vector<const ProfileSample*> pointers;
    for (std::size_t i : batch) {
      ++seen[i];
      longest = std::max(longest, lengths[i]);
      pointers.push_back(&samples[i]);
    }
    EXPECT_TRUE(batch.size() == 1 || batch.size() * longest <= 24);
    const auto made = make_batch(pointers, AttentionStructure::causal, torch::Device(torch::kCPU));
    EXPECT_EQ(made.ids.size(1), static_cast<std::int64_t>(longest));
  }
  EXPECT_EQ(seen, std::vector<int>(samples.size(), 1));
  // Sorted by length, so the two 9s and the two 7s share batches instead of padding 2s to 12.
  for (const auto& batch : batches) {
    if (std::find(batch.begin(), batch.end(), 8) != batch.end()) {  // the length-2 sample
      for (std::size_t i : batch) EXPECT_LE(lengths[i], 4u);
    }
  }
}

}  // namespace
}  // namespace userip::profile

namespace userip::profile {
namespace {

TEST(MostRecentSamples, KeepTheLastWholeSamplesUpToTheInteractionBudgetAndAtLeastOne) {
  // Three chronological samples of 2, 3 and 4 interactions.
  std::vector<ProfileSample> samples(3);
  samples[0].rows = {0, 1};
  samples[1].rows = {2, 3, 4};
  samples[2].rows = {5, 6, 7, 8};
  auto first_rows = [](const std::vector<ProfileSample>& kept) {
    std::vector<std::size_t> firsts;
    for (const auto& s : kept) firsts.push_back(s.rows.front());
    return firsts;
  };
  EXPECT_EQ(first_rows(most_recent_samples(samples, 0)), (std::vector<std::size_t>{0, 2, 5}));   // all
  EXPECT_EQ(first_rows(most_recent_samples(samples, 9)), (std::vector<std::size_t>{0, 2, 5}));
  EXPECT_EQ(first_rows(most_recent_samples(samples, 8)), (std::vector<std::size_t>{2, 5}));      // 7 of 8
  EXPECT_EQ(first_rows(most_recent_samples(samples, 7)), (std::vector<std::size_t>{2, 5}));
  EXPECT_EQ(first_rows(most_recent_samples(samples, 6)), (std::vector<std::size_t>{5}));
  EXPECT_EQ(first_rows(most_recent_samples(samples, 1)), (std::vector<std::size_t>{5}));         // never none
  EXPECT_TRUE(most_recent_samples({}, 5).empty());
  testing::expect_error([&] { most_recent_samples(samples, -1); }, {"must be >= 0"});
}

}  // namespace
}  // namespace userip::profile
