#include <gtest/gtest.h>

#include "userip/util/log.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  userip::log_init("warn");
  return RUN_ALL_TESTS();
}
