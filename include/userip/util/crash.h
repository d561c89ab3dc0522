#pragma once
// What a crash leaves behind: on a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) the
// process writes the signal and its call stack to stderr, then dies of the same signal as it would
// have (exit status, core dump), so that a crash on a machine nobody can attach a debugger to
// still says where it happened.
namespace userip {

void install_crash_handler();

// False where the library was built to keep AddressSanitizer's handler, which reports more; then
// install_crash_handler() leaves the signals to it.
bool crash_handler_available();

}  // namespace userip
