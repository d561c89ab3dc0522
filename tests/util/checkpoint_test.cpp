// The one checkpoint policy: state.json names the files of one point, older points' files go only
// after it is written, and a checkpoint that is damaged, foreign or incomplete is not resumed.
#include "userip/util/checkpoint.h"

#include <gtest/gtest.h>

#include "support/temp_dir.h"

namespace userip {
namespace {

TEST(Checkpoint, CommitNamesTheNewFilesAndRemovesOnlyOlderPointsOfTheSameKind) {
  testing::TempDir dir;
  const CheckpointDir checkpoint(dir / "ck", "fp1");
  EXPECT_FALSE(checkpoint.exists());
  EXPECT_FALSE(checkpoint.load({"weights"}));
  std::filesystem::create_directories(checkpoint.dir());
  dir.write("ck/weights-1.bin", "a");
  dir.write("ck/optimizer-1.pt", "b");
  dir.write("ck/tokenizer.model", "t");  // no point's file: never rotated
  checkpoint.commit({{"step", 1}, {"weights", "weights-1.bin"}, {"optimizer", "optimizer-1.pt"}},
                    {"weights", "optimizer"});
  dir.write("ck/weights-2.bin", "c");
  dir.write("ck/optimizer-2.pt", "d");
  checkpoint.commit({{"step", 2}, {"weights", "weights-2.bin"}, {"optimizer", "optimizer-2.pt"}},
                    {"weights", "optimizer"});
  EXPECT_FALSE(std::filesystem::exists(dir / "ck/weights-1.bin"));
  EXPECT_FALSE(std::filesystem::exists(dir / "ck/optimizer-1.pt"));
  EXPECT_TRUE(std::filesystem::exists(dir / "ck/tokenizer.model"));
  const auto state = checkpoint.load({"weights", "optimizer"});
  ASSERT_TRUE(state);
  EXPECT_EQ(state->at("step"), 2);
  EXPECT_EQ(state->at("fingerprint"), "fp1");
}

TEST(Checkpoint, ADamagedForeignOrIncompleteCheckpointIsNotResumed) {
  testing::TempDir dir;
  const CheckpointDir checkpoint(dir / "ck", "fp1");
  checkpoint.commit({{"step", 1}, {"weights", "weights-1.bin"}, {"optimizer", ""}}, {"weights", "optimizer"});
  EXPECT_FALSE(checkpoint.load({"weights"})) << "the named weights file is missing";
  EXPECT_TRUE(checkpoint.load({"optimizer"})) << "\"\" names no file";
  dir.write("ck/weights-1.bin", "a");
  EXPECT_TRUE(checkpoint.load({"weights"}));
  EXPECT_FALSE(CheckpointDir(dir / "ck", "fp2").load({"weights"})) << "another fingerprint";
  dir.write("ck/state.json", "{\"fingerprint\": \"fp1\", \"step\": ");
  EXPECT_FALSE(checkpoint.load({"weights"})) << "truncated state.json";
  dir.write("ck/state.json", "[1, 2]");
  EXPECT_FALSE(checkpoint.load({"weights"})) << "not an object";
  checkpoint.remove();
  EXPECT_FALSE(std::filesystem::exists(checkpoint.dir()));
}

}  // namespace
}  // namespace userip
