#pragma once
// What a crash leaves behind: on a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) the
// process writes the signal and its call stack to stderr, then dies of the same signal as it would
// have (exit status, core dump), so that a crash on a machine nobody can attach a debugger to
// still says where it happened.
namespace userip {

void install_crash_handler();

}  // namespace userip
