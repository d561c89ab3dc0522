#pragma once
// glibc malloc settings for tensor workloads, set once at program start.
namespace userip {

// Keeps freed memory in the process for reuse instead of returning it to the kernel.
//
// Why: glibc serves allocations above its mmap threshold (at most 32 MiB with the dynamic
// threshold) with a fresh mmap, and trims the heap's top on free. A training step through an LM
// allocates and frees tensors of tens of MiB (the LM head's logits, attention scores, gradients)
// hundreds of times a round, so every step faulted in and zeroed new pages: a profile of
// `profile fit` showed half its samples in the kernel (page faults, clear_page, munmap).
// With large tensors served from a heap that is never trimmed, 30 batches of the default
// ml-latest-small fit took 40-48 s instead of 68 s (docs/BENCHMARKS.md, "allocator").
// The cost is that the resident size stays at its peak; it does not raise the peak.
void configure_allocator();

}  // namespace userip
