// The generic path, end to end through the command line as a user takes it: a synthetic world
// exported to CSV with every column renamed, imported, its default LM pretrained and its profiles
// fitted with the defaults, must give exactly what the same world gives through `data synth`.
// Nothing in the default text may depend on a field's name (text::field_roles), so the corpus, the
// LM, the template and the codes must all be the same. Labelled slow (two pretrainings and fits).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "support/temp_dir.h"

namespace userip {
namespace {

namespace fs = std::filesystem;
using testing::run_cli;
using testing::TempDir;

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Replaces the first line (the CSV header) of `file`.
void rename_header(const fs::path& file, const std::string& header) {
  std::string text = read_text(file);
  text = header + text.substr(text.find('\n'));
  std::ofstream(file, std::ios::binary) << text;
}

void run(const std::string& args) {
  std::string output;
  ASSERT_EQ(run_cli(args, &output), 0) << args << "\n" << output;
}

TEST(GenericPath, ARenamedImportOfASyntheticWorldFitsExactlyAsTheWorldItself) {
  TempDir dir;
  const auto world = dir / "world", csv = dir / "csv", imported = dir / "imported";
  const std::string split = " --seed 7";
  run("data synth --out " + world.string() +
      " --users 120 --items 150 --taste-classes 3 --background-classes 2 --categories 6 --mean-interactions 20"
      " --synth-seed 7" + split);
  run("data export --dataset " + world.string() + " --out " + csv.string());
  EXPECT_EQ(read_text(csv / "items.csv").substr(0, read_text(csv / "items.csv").find('\n')),
            "item,title,categories,price,year");
  rename_header(csv / "items.csv", "sku,name,tags,tier,released");
  const std::string interactions = read_text(csv / "interactions.csv");
  const std::string header = interactions.substr(0, interactions.find('\n'));
  ASSERT_EQ(header.rfind("user,item,rating,timestamp", 0), 0u) << header;
  rename_header(csv / "interactions.csv", "customer,product,score,time" + header.substr(26));
  run("data import --interactions " + (csv / "interactions.csv").string() + " --items " + (csv / "items.csv").string() +
      " --out " + imported.string() +
      " --user-column customer --item-column product --rating-column score --timestamp-column time"
      " --item-id-column sku" + split);

  // The LM's corpus is the same text, so the same seed pretrains the same LM.
  const std::string lm = " --steps 60 --hidden 32 --layers 1 --heads 2 --ffn 64 --vocab 400 --context 48 --batch 16";
  for (const auto& d : {world, imported}) {
    run("lm corpus --dataset " + d.string() + " --out " + (d / "corpus.txt").string());
    run("lm pretrain --dataset " + d.string() + " --out " + (d / "lm").string() + lm);
  }
  EXPECT_EQ(read_text(world / "corpus.txt"), read_text(imported / "corpus.txt"));
  EXPECT_EQ(read_text(world / "lm" / "model.safetensors"), read_text(imported / "lm" / "model.safetensors"));

  // The default template, and with it every code.
  const std::string fit = " --rounds 2 --population-steps 4 --samples-per-user 1 --eval-users 20 --no-bank";
  for (const auto& d : {world, imported})
    run("profile fit --dataset " + d.string() + " --model " + (d / "lm").string() + " --out " + (d / "fit").string() +
        fit);
  const std::string codes = read_text(world / "fit" / "codes.csv");
  EXPECT_EQ(codes.substr(0, codes.find('\n')), "user,taste,background");
  EXPECT_EQ(codes, read_text(imported / "fit" / "codes.csv"));
  std::string output;
  ASSERT_EQ(run_cli("profile recovery --profile " + (world / "fit").string(), &output), 0) << output;
}

}  // namespace
}  // namespace userip
