#include <gtest/gtest.h>

#include <csignal>

#include "support/temp_dir.h"
#include "userip/util/crash.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"
#include "userip/util/progress.h"
#include "userip/util/random.h"
#include "userip/util/strings.h"

namespace userip {
namespace {

TEST(Strings, ParsesNumbersStrictly) {
  EXPECT_EQ(parse_int64(" 42 "), 42);
  EXPECT_EQ(parse_int64("-7"), -7);
  EXPECT_FALSE(parse_int64("4x"));
  EXPECT_FALSE(parse_int64(""));
  EXPECT_FALSE(parse_int64("99999999999999999999"));
  EXPECT_DOUBLE_EQ(*parse_double("3.5"), 3.5);
  EXPECT_DOUBLE_EQ(*parse_double("1e3"), 1000.0);
  EXPECT_FALSE(parse_double("nan"));
  EXPECT_FALSE(parse_double("3.5.1"));
}

TEST(Strings, ValidatesUtf8) {
  EXPECT_TRUE(is_valid_utf8("Amélie (2001) 千と千尋 🎬"));
  EXPECT_FALSE(is_valid_utf8("\xC3"));              // truncated
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(is_valid_utf8("abc\xFF"));
}

TEST(Strings, SplitsLists) {
  EXPECT_EQ(split_list("Action| Comedy||Drama ", '|'), (std::vector<std::string>{"Action", "Comedy", "Drama"}));
  EXPECT_EQ(split("a,,b", ',').size(), 3u);
}

TEST(Random, IsReproducibleAndUnbiasedEnough) {
  Rng a(7), b(7), c(8);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
  EXPECT_NE(Rng(7).next_u64(), c.next_u64());
  Rng r(1);
  double sum = 0, sum_sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    double x = r.normal();
    sum += x;
    sum_sq += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.02);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.02);
  std::vector<int> counts(3);
  for (int i = 0; i < 30000; ++i) counts[r.categorical({1.0, 2.0, 0.0})]++;
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[1] / 30000.0, 2.0 / 3.0, 0.02);
}

TEST(Files, AtomicWriteReplacesWholeFileOrNothing) {
  testing::TempDir dir;
  auto path = dir / "out.txt";
  write_file_atomic(path, "first");
  {
    AtomicFileWriter writer(path);
    writer.write(std::string_view("second, never committed"));
  }  // destroyed without commit: the old file stays
  EXPECT_EQ(read_file(path), "first");
  EXPECT_FALSE(fs::exists(dir / "out.txt.tmp"));
  MappedFile mapped(path);
  EXPECT_EQ(mapped.view(), "first");
}

TEST(Files, MissingFileNamesThePath) {
  try {
    read_file("/nonexistent/userip-file");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/userip-file"), std::string::npos);
  }
}

TEST(Progress, RendersRateEtaAndMetric) {
  ProgressBar bar("fit", 100, "users");
  bar.set_interactive(false);
  bar.disable();
  bar.set(50);
  bar.set_metric("nll 2.31");
  std::string line = bar.render(10.0);
  EXPECT_NE(line.find("50/100"), std::string::npos) << line;
  EXPECT_NE(line.find("5.0 users/s"), std::string::npos) << line;
  EXPECT_NE(line.find("eta 10s"), std::string::npos) << line;
  EXPECT_NE(line.find("nll 2.31"), std::string::npos) << line;
  EXPECT_EQ(ProgressBar::format_duration(3725), "1h02m");
}

TEST(CrashHandler, NamesTheSignalAndPrintsTheCallStackThenDiesOfTheSameSignal) {
  if (!crash_handler_available()) GTEST_SKIP() << "this build keeps AddressSanitizer's handler";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        install_crash_handler();
        std::raise(SIGSEGV);
      },
      ::testing::KilledBySignal(SIGSEGV), "fatal signal SIGSEGV.*call stack");
}

}  // namespace
}  // namespace userip
