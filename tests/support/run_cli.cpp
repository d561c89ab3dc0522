#include <sys/wait.h>

#include <array>
#include <cstdio>

#include "support/temp_dir.h"

namespace userip::testing {

int run_cli(const std::string& args, std::string* output, const std::string& environment) {
  std::string command = (environment.empty() ? "" : "env " + environment + " ") + std::string(USERIP_CLI) + " " +
                        args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buffer{};
  std::string text;
  std::size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) text.append(buffer.data(), n);
  int status = pclose(pipe);
  if (output) *output = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace userip::testing
