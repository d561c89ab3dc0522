#pragma once
// Tensor memory in sanitizer builds.

namespace userip::tensor {

// Makes libtorch's CPU tensors come from a cache of freed blocks (size classes of powers of two)
// instead of malloc. For AddressSanitizer builds only: the CLI and the test programs call it when
// compiled with -fsanitize=address.
//
// Why: ASan serves every allocation above 128 KiB with a fresh mmap and unmaps it on free; that
// path has no cache and no run-time setting (google/sanitizers#163). A training step allocates
// and frees such tensors hundreds of times, so under ASan each one faulted in fresh pages: one
// profile-fit test took 11.5 M page faults and 172 s (docs/BENCHMARKS.md, "Build and test times").
// Release builds get the same effect from glibc (configure_allocator, util/allocator.h).
//
// What ASan still sees: a cached block is poisoned, so a read of a freed tensor's memory is
// reported; a reused block is unpoisoned only up to the size asked for, so a read past a tensor's
// end is reported too. Calling it twice is harmless.
void use_caching_tensor_allocator();

}  // namespace userip::tensor
