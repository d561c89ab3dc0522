#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "support/temp_dir.h"
#include "userip/data/dataset.h"
#include "userip/data/synth.h"
#include "userip/profile/session.h"
#include "userip/profile/template.h"
#include "userip/text/corpus.h"

namespace userip::profile {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;
using testing::TempDir;

fs::path shipped(const std::string& name) { return fs::path(USERIP_SOURCE_DIR) / "templates" / name; }

// Six movies with the MovieLens fields and three users.
data::Dataset three_movielens_users() {
  data::Dataset d;
  d.item_ids = {"m1", "m2", "m3", "m4", "m5", "m6"};
  d.item_fields = {
      {"title", data::FieldKind::text, {"Toy Story", "Heat", "Alien", "Up", "Fargo", "Big"}},
      {"year", data::FieldKind::number, {"1995", "1995", "1979", "2009", "1996", ""}},
      {"genres",
       data::FieldKind::category_list,
       {"Adventure|Animation|Children", "Action|Crime|Thriller", "Horror|Sci-Fi", "Animation|Adventure",
        "Comedy|Crime|Drama", "Comedy|Drama"}}};
  d.user_ids = {"u1", "u2", "u3"};
  const std::vector<std::tuple<std::uint32_t, std::uint32_t, float>> rows = {
      {0, 0, 5.0f}, {0, 3, 4.0f}, {0, 5, 2.0f}, {1, 1, 3.5f}, {1, 4, 4.5f}, {2, 2, 1.0f}};
  std::int64_t t = 100;
  for (const auto& [u, i, r] : rows) {
    d.interactions.user.push_back(u);
    d.interactions.item.push_back(i);
    d.interactions.rating.push_back(r);
    d.interactions.timestamp.push_back(t++);
  }
  return d;
}

data::Dataset small_synthetic() {
  data::SynthOptions o;
  o.users = 12;
  o.items = 40;
  o.mean_interactions = 6;
  o.show_progress = false;
  return data::generate_synthetic(o).dataset;
}

// A template file whose attribute objects start on known lines: line 1 "{", line 2 the
// description, line 3 "attributes": [, then one line per attribute (line 4, 5, ...).
std::string template_text(const std::vector<std::string>& attribute_lines,
                          const std::string& behaviour = "Watched {title} ({year}); rated {rating}.") {
  std::string text = "{\n  \"description\": \"test\",\n  \"attributes\": [\n";
  for (std::size_t i = 0; i < attribute_lines.size(); ++i) {
    text += "    " + attribute_lines[i] + (i + 1 < attribute_lines.size() ? ",\n" : "\n");
  }
  text += "  ],\n  \"behaviour\": \"" + behaviour + "\"\n}\n";
  return text;
}

TEST(ProfileTemplate, DefaultTemplatePutsSoftTokensWhereTheCorpusSummaryStands) {
  const auto dataset = three_movielens_users();
  const auto t = default_template(dataset);
  ASSERT_EQ(t.attributes().size(), 2u);
  EXPECT_EQ(t.attributes()[0].name, "taste");
  EXPECT_EQ(t.attributes()[1].name, "background");
  EXPECT_EQ(t.total_soft_tokens(), 8);
  EXPECT_EQ(t.soft_offset(1), 4);
  EXPECT_FALSE(t.one_interaction_per_sample());
  // The LM's corpus puts a summary of the user after these very words, so the soft tokens stand
  // where the LM learned to read a description of the user.
  const auto corpus = text::default_corpus_options(dataset);
  for (const auto& a : t.attributes()) EXPECT_NE(corpus.user_phrase.find(a.evidence + " {user."), std::string::npos) << a.evidence;
  // The LM is pretrained on the corpus's behaviour phrase: the template must score the same text.
  EXPECT_EQ(t.behaviour(), corpus.behaviour_phrase);
  EXPECT_EQ(t.render_behaviour(dataset, 0), "Rated 5; chose an item in Adventure, Animation, Children: Toy Story, 1995.");
  // No answer in plain text: the evidence says nothing of the user, whatever the user did.
  UserAggregates some_user;
  some_user.count = 7;
  some_user.mean_rating = 4.5;
  for (std::size_t a = 0; a < 2; ++a) EXPECT_EQ(t.render_evidence(a, dataset, some_user), t.attributes()[a].evidence);
  // The probe opens a behaviour sentence, so the LM's continuation is the verdict it expects.
  EXPECT_EQ(t.attributes()[1].probe, "About this user: <soft>. Rated");
  // The soft tokens start from the population's summary: the most common genres, a moderate user.
  EXPECT_EQ(t.attributes()[0].init, "Adventure, Animation.");
  EXPECT_EQ(t.attributes()[1].init, "moderate.");
  const auto json = t.to_json();
  EXPECT_EQ(json["attributes"][1]["name"], "background");
  EXPECT_EQ(json["total_soft_tokens"], 8);
  // A fit records the template itself, and later commands read it back from there.
  const auto reread = recorded_template({{"template", json}}, dataset, "record").to_json();
  EXPECT_EQ(reread["attributes"], json["attributes"]);
  EXPECT_EQ(reread["behaviour"], json["behaviour"]);
}

TEST(ProfileTemplate, DefaultTemplateFollowsTheFieldsNotTheirNames) {
  const auto dataset = small_synthetic();
  auto other = dataset;
  for (auto& f : other.item_fields) f.name = "f_" + f.name + "_x";
  const auto a = default_template(dataset), b = default_template(other);
  ASSERT_EQ(a.attributes().size(), b.attributes().size());
  EXPECT_EQ(b.behaviour(), "Rated {rating}; chose a {f_price_x} item in {f_categories_x}: {f_title_x}, {f_year_x}.");
  for (std::size_t k = 0; k < a.attributes().size(); ++k) {
    EXPECT_EQ(a.attributes()[k].evidence, b.attributes()[k].evidence);
    EXPECT_EQ(a.attributes()[k].init, b.attributes()[k].init);
  }
  for (std::size_t row = 0; row < dataset.num_interactions(); ++row)
    EXPECT_EQ(a.render_behaviour(dataset, row), b.render_behaviour(other, row));
  // A dataset with a single kind of item has no taste to describe: the background attribute alone.
  data::Dataset plain;
  plain.item_ids = {"a"};
  plain.item_fields = {{"brand", data::FieldKind::category, {"Acme"}}};
  const auto only = default_template(plain);
  ASSERT_EQ(only.attributes().size(), 1u);
  EXPECT_EQ(only.attributes()[0].name, "background");
  EXPECT_EQ(only.behaviour(), text::default_corpus_options(plain).behaviour_phrase);
}

TEST(ProfileTemplate, ShippedSyntheticTemplateFitsASyntheticDataset) {
  const auto dataset = small_synthetic();
  const auto t = ProfileTemplate::load(shipped("synthetic.json"), dataset);
  ASSERT_EQ(t.attributes().size(), 2u);
  EXPECT_FALSE(t.one_interaction_per_sample());
  EXPECT_EQ(t.behaviour(), text::default_corpus_options(dataset).behaviour_phrase);
  EXPECT_EQ(t.behaviour(),
            "Rated {rating}; chose a {price} item in {categories}: {title}, {year}.");
  EXPECT_EQ(t.attributes()[0].init, "Comedy, Crime.");
  EXPECT_EQ(t.attributes()[1].init, "standard, moderate.");
  // The init text travels with a fit's record (the template JSON), and a template without one records none.
  EXPECT_EQ(t.to_json()["attributes"][1]["init"], "standard, moderate.");
  const auto reparsed = recorded_template({{"template", t.to_json()}}, dataset, "record");
  EXPECT_EQ(reparsed.attributes()[1].init, "standard, moderate.");
  EXPECT_FALSE(ProfileTemplate::parse(template_text({R"({"name": "taste", "evidence": "Likes:"})"}), "t.json",
                                      three_movielens_users())
                   .to_json()["attributes"][0]
                   .contains("init"));
  for (std::size_t a = 0; a < 2; ++a) {
    const auto probe = t.render_probe(a, dataset, UserAggregates{});
    EXPECT_FALSE(probe.before.empty());
    EXPECT_FALSE(probe.after.empty());
  }
  // And a template for other data does not fit: it names a field this dataset lacks.
  expect_error([&] { ProfileTemplate::parse(template_text({R"({"name": "taste", "evidence": "Likes:"})"},
                                                          "Watched {genres}; rated {rating}."),
                                            "movies.json", dataset); },
               {"movies.json", "{genres}", "available:", "categories"});
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(ProfileTemplate, DocumentationShowsTheShippedFilesVerbatim) {
  const std::string doc = read_text(fs::path(USERIP_SOURCE_DIR) / "docs" / "TEMPLATES.md");
  for (const char* name : {"synthetic.json"}) {
    std::string text = read_text(shipped(name));
    while (!text.empty() && text.back() == '\n') text.pop_back();
    EXPECT_NE(doc.find("```json\n" + text + "\n```"), std::string::npos) << name << " differs in docs/TEMPLATES.md";
  }
}

TEST(ProfileTemplate, EvidenceRendersHandComputedAggregates) {
  const auto dataset = three_movielens_users();
  const std::string text = template_text(
      {R"({"name": "a", "evidence": "{user.count} movies, mean {user.mean_rating}, {user.like_rate}% liked, mostly {user.top.genres}"})"});
  const auto t = ProfileTemplate::parse(text, "t.json", dataset);
  // User u1: ratings 5, 4, 2 -> mean 3.666 -> "3.7"; liked (>= 4): 2 of 3 -> 67 %. Genres:
  // Adventure 2, Animation 2, Children 1, Comedy 1, Drama 1: the tie goes to the smaller value.
  const auto user0 = compute_aggregates(dataset, {0, 1, 2});
  EXPECT_EQ(user0.count, 3u);
  EXPECT_NEAR(user0.mean_rating, 11.0 / 3.0, 1e-12);
  EXPECT_EQ(t.render_evidence(0, dataset, user0), "3 movies, mean 3.7, 67% liked, mostly Adventure");
  // User u2: 3.5 and 4.5 -> "4.0", 1 of 2 liked -> 50 %; Crime twice.
  EXPECT_EQ(t.render_evidence(0, dataset, compute_aggregates(dataset, {3, 4})),
            "2 movies, mean 4.0, 50% liked, mostly Crime");
  // No history at all.
  EXPECT_EQ(t.render_evidence(0, dataset, compute_aggregates(dataset, std::vector<std::size_t>{})),
            "0 movies, mean 0.0, 0% liked, mostly unknown");
  // The default probe is the evidence followed by the soft tokens and an open sentence.
  EXPECT_EQ(t.attributes()[0].probe, t.attributes()[0].evidence + " <soft>. In short, this user");
}

TEST(ProfileTemplate, ItemFieldsInEvidenceForceOneInteractionPerSample) {
  const auto dataset = three_movielens_users();
  const auto t = ProfileTemplate::parse(
      template_text({R"({"name": "hobby", "evidence": "The user likes {genres}", "soft_tokens": 2})",
                     R"({"name": "level", "evidence": "Seen in {{{year}}}"})"}),
      "t.json", dataset);
  EXPECT_TRUE(t.one_interaction_per_sample());
  EXPECT_EQ(t.total_soft_tokens(), 3);
  EXPECT_EQ(t.soft_offset(1), 2);
  EXPECT_EQ(t.render_evidence(0, dataset, {}, 4u), "The user likes Comedy, Crime, Drama");
  EXPECT_EQ(t.render_evidence(1, dataset, {}, 5u), "Seen in {unknown}");  // braces escaped, year missing
  EXPECT_TRUE(t.probe_uses_item(0));
  expect_error([&] { t.render_evidence(0, dataset, {}); }, {"hobby", "needs the sample's item"});
}

TEST(ProfileTemplate, ErrorsNameTheFileAndLine) {
  const auto dataset = three_movielens_users();
  TempDir dir;
  const auto load = [&](const std::string& text) {
    return [&, text] { ProfileTemplate::load(dir.write("bad.json", text), dataset); };
  };
  const std::string file = (dir / "bad.json").string();
  const std::string ok = R"({"name": "taste", "evidence": "Taste:"})";

  // Syntax error: the missing comma after line 2 is found at line 3.
  expect_error(load("{\n  \"description\": \"x\"\n  \"attributes\": []\n}\n"), {file + ":3:", "invalid JSON"});
  // Unknown placeholder, in the second attribute (line 5), listing what is available.
  expect_error(load(template_text({ok, R"({"name": "b", "evidence": "About {user.age}"})"})),
               {file + ":5:", "'b'", "{user.age}", "available:", "user.count", "user.mean_rating",
                "user.like_rate", "user.top.genres", "title", "year"});
  expect_error(load(template_text({ok, R"({"name": "b", "evidence": "Top {user.top.title}"})"})),
               {file + ":5:", "user.top.genres"});
  // The label of the predicted behaviour must not leak into the evidence.
  expect_error(load(template_text({R"({"name": "a", "evidence": "Rated {rating}"})"})),
               {file + ":4:", "{rating}", "reveal the label"});
  expect_error(load(template_text({ok, R"({"name": "b", "evidence": "x", "probe": "{label} <soft>"})"})),
               {file + ":5:", "{label}"});
  // Missing field, bad and duplicate names, empty evidence, empty list, soft tokens out of range.
  expect_error(load(template_text({ok, R"({"name": "b"})"})), {file + ":5:", "missing \"evidence\""});
  expect_error(load(template_text({R"({"name": "1taste", "evidence": "x"})"})), {file + ":4:", "bad name"});
  expect_error(load(template_text({ok, ok})), {file + ":5:", "duplicate attribute name \"taste\""});
  expect_error(load(template_text({ok, R"({"name": "b", "evidence": "  "})"})), {file + ":5:", "empty evidence"});
  expect_error(load(template_text({})), {file + ":3:", "\"attributes\" is empty"});
  expect_error(load(template_text({R"({"name": "a", "evidence": "x", "soft_tokens": 0})"})),
               {file + ":4:", "soft_tokens", "1..64"});
  expect_error(load(template_text({ok, R"({"name": "b", "evidence": "x", "soft_tokens": 65})"})),
               {file + ":5:", "soft_tokens"});
  expect_error(load(template_text({R"({"name": "a", "evidence": "x", "soft_tokens": 1.5})"})),
               {file + ":4:", "soft_tokens"});
  // An init text is a non-empty string.
  expect_error(load(template_text({ok, R"({"name": "b", "evidence": "x", "init": 3})"})),
               {file + ":5:", "'b'", "\"init\" must be a string"});
  expect_error(load(template_text({R"({"name": "a", "evidence": "x", "init": " "})"})),
               {file + ":4:", "'a'", "empty \"init\""});
  // Probes hold <soft> exactly once.
  expect_error(load(template_text({R"({"name": "a", "evidence": "x", "probe": "no marker"})"})),
               {file + ":4:", "<soft>", "exactly once"});
  expect_error(load(template_text({R"({"name": "a", "evidence": "x", "probe": "<soft> <soft>"})"})),
               {file + ":4:", "found 2"});
  // Unknown keys, at the top and in an attribute; the behaviour phrase lists item fields.
  expect_error(load("{\n  \"attributes\": [" + ok + "],\n  \"behavior\": \"x\",\n  \"behaviour\": \"x\"\n}"),
               {file + ":3:", "unknown key \"behavior\""});
  expect_error(load(template_text({ok, R"({"name": "b", "evidnce": "x"})"})), {file + ":5:", "\"evidnce\""});
  expect_error(load(template_text({ok}, "Saw {titel}")), {file + ":6:", "{titel}", "available:", "genres"});
  expect_error(load("[1, 2]"), {file + ":1:"});
  expect_error([&] { ProfileTemplate::load(dir / "missing.json", dataset); }, {"missing.json"});
}

TEST(ProfileTemplate, KeysOnTheirOwnLinesAreLocated) {
  const auto dataset = three_movielens_users();
  // Attribute 2's soft_tokens key sits on line 12.
  const std::string text =
      "{\n"
      "  \"attributes\": [\n"
      "    {\n"
      "      \"name\": \"taste\",\n"
      "      \"evidence\": \"The user's \\\"taste\\\" {{x}}:\"\n"
      "    },\n"
      "    {\n"
      "      \"name\": \"background\",\n"
      "      \"evidence\": \"About:\",\n"
      "      \"probe\": \"About: <soft>.\",\n"
      "\n"
      "      \"soft_tokens\": 100\n"
      "    }\n"
      "  ],\n"
      "  \"behaviour\": \"{title}\"\n"
      "}\n";
  expect_error([&] { ProfileTemplate::parse(text, "inline.json", dataset); }, {"inline.json:12:", "soft_tokens"});
  const auto fixed = ProfileTemplate::parse(
      std::string(text).replace(text.find("100"), 3, "3"), "inline.json", dataset);
  EXPECT_EQ(fixed.attributes()[0].line, 3);
  EXPECT_EQ(fixed.attributes()[1].line, 7);
  EXPECT_EQ(fixed.attributes()[0].evidence, "The user's \"taste\" {{x}}:");
  EXPECT_EQ(fixed.render_evidence(0, dataset, {}), "The user's \"taste\" {x}:");
  EXPECT_EQ(fixed.total_soft_tokens(), 4);
}

}  // namespace
}  // namespace userip::profile
