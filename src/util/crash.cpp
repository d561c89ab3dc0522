#include "userip/util/crash.h"

#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>

namespace userip {

// AddressSanitizer's own handler reports more (the faulting address's history): an ASan build keeps it.
#if !defined(__SANITIZE_ADDRESS__)
namespace {

constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

void write_stderr(const char* text) {
  // write(2) is async-signal-safe; stdio and spdlog are not.
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

const char* signal_name(int signal) {
  switch (signal) {
    case SIGSEGV: return "SIGSEGV (invalid memory access)";
    case SIGBUS: return "SIGBUS (bus error)";
    case SIGFPE: return "SIGFPE (arithmetic error)";
    case SIGILL: return "SIGILL (illegal instruction)";
    case SIGABRT: return "SIGABRT (aborted)";
    default: return "unknown";
  }
}

extern "C" void on_fatal_signal(int signal) {
  write_stderr("\nuserip: fatal signal ");
  write_stderr(signal_name(signal));
  write_stderr("; call stack (please include it in a bug report):\n");
  void* frames[64];
  const int count = backtrace(frames, 64);
  backtrace_symbols_fd(frames, count, STDERR_FILENO);
  // SA_RESETHAND restored the default action: the same signal again gives the exit status and any
  // core dump of the original crash.
  ::raise(signal);
}

}  // namespace

void install_crash_handler() {
  // backtrace() loads libgcc on its first call, which may allocate: do that now, not in the handler.
  void* warm_up[1];
  backtrace(warm_up, 1);
  struct sigaction action {};
  action.sa_handler = on_fatal_signal;
  sigemptyset(&action.sa_mask);
  // A stack overflow leaves no stack for the handler; SA_ONSTACK uses the alternate one below.
  action.sa_flags = SA_ONSTACK | SA_RESETHAND;
  static char alternate_stack[64 * 1024];
  stack_t stack{};
  stack.ss_sp = alternate_stack;
  stack.ss_size = sizeof(alternate_stack);
  sigaltstack(&stack, nullptr);
  for (int signal : kFatalSignals) sigaction(signal, &action, nullptr);
}

bool crash_handler_available() { return true; }
#else
void install_crash_handler() {}
bool crash_handler_available() { return false; }
#endif

}  // namespace userip
