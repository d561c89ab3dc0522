// Thread settings for ATen and the BLAS beneath it (userip/tensor/threads.h).
#include "userip/tensor/threads.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "support/temp_dir.h"
#include "userip/util/error.h"

namespace userip {
namespace {

namespace fs = std::filesystem;

TEST(Threads, ConfiguresRequestedCountAndDetectsBlas) {
  EXPECT_EQ(configure_threads(1), 1);
  EXPECT_THROW(configure_threads(-1), Error);
  BlasInfo blas = detect_blas();
  EXPECT_FALSE(blas.name.empty());
  EXPECT_FALSE(blas.is_openblas && blas.is_reference);
}

TEST(Threads, WarnsAtStartUpWhenTheBlasIsNotOpenBlas) {
  const char* reference_blas_dir = "/usr/lib/x86_64-linux-gnu/blas";
  if (!fs::exists(fs::path(reference_blas_dir) / "libblas.so.3")) {
    GTEST_SKIP() << "Debian's reference BLAS (libblas3) is not installed";
  }
  std::string output;
  testing::run_cli("data stats --dataset /nonexistent", &output, std::string("LD_LIBRARY_PATH=") + reference_blas_dir);
  EXPECT_NE(output.find("rather than OpenBLAS"), std::string::npos) << output;
  testing::run_cli("data stats --dataset /nonexistent", &output);
  if (detect_blas().is_openblas) {
    EXPECT_EQ(output.find("rather than OpenBLAS"), std::string::npos) << output;
  }
}

}  // namespace
}  // namespace userip
