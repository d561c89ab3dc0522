#include <gtest/gtest.h>

#include "userip/util/allocator.h"
#include "userip/util/log.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  userip::log_init("warn");
  // As in the CLI: tests that fit or pretrain otherwise spend half their time in page faults.
  userip::configure_allocator();
  return RUN_ALL_TESTS();
}
