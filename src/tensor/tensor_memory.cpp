#include "userip/tensor/tensor_memory.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/version.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define USERIP_POISON(address, size) ASAN_POISON_MEMORY_REGION(address, size)
#define USERIP_UNPOISON(address, size) ASAN_UNPOISON_MEMORY_REGION(address, size)
#else
#define USERIP_POISON(address, size) ((void)(address), (void)(size))
#define USERIP_UNPOISON(address, size) ((void)(address), (void)(size))
#endif

// libtorch 2.3 made Allocator::allocate non-const and copy_data a required override.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define USERIP_ALLOCATE_CONST
#else
#define USERIP_ALLOCATE_CONST const
#endif

namespace userip::tensor {
namespace {

constexpr std::size_t kAlignment = 64;                 // c10's alignment for CPU tensors
constexpr std::size_t kMaxCachedBytes = std::size_t{2} << 30;  // beyond this, freed blocks go back to malloc

class CachingTensorAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t bytes) USERIP_ALLOCATE_CONST override {
    if (bytes == 0) return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::CPU)};
    void* block = take(bytes);
    return {block, block, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  // An override from libtorch 2.3 on; a plain member before.
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }

  static CachingTensorAllocator& instance() {
    static auto* allocator = new CachingTensorAllocator;  // never destroyed: tensors outlive main
    return *allocator;
  }

 private:
  static std::size_t size_class(std::size_t bytes) {
    std::size_t c = kAlignment;
    while (c < bytes) c <<= 1;
    return c;
  }

  void* take(std::size_t bytes) USERIP_ALLOCATE_CONST {
    const std::size_t cls = size_class(bytes);
    void* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& free_list = free_[cls];
      if (!free_list.empty()) {
        block = free_list.back();
        free_list.pop_back();
        cached_bytes_ -= cls;
      }
    }
    if (!block) {
      block = std::aligned_alloc(kAlignment, cls);
      if (!block) throw std::bad_alloc();
    }
    USERIP_UNPOISON(block, bytes);
    USERIP_POISON(static_cast<char*>(block) + bytes, cls - bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    live_[block] = cls;
    return block;
  }

  static void release(void* block) {
    if (!block) return;
    instance().give_back(block);
  }

  void give_back(void* block) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(block);
    if (it == live_.end()) {  // not ours: cannot happen unless libtorch mixes allocators
      std::free(block);
      return;
    }
    const std::size_t cls = it->second;
    live_.erase(it);
    if (cached_bytes_ + cls > kMaxCachedBytes) {
      USERIP_UNPOISON(block, cls);
      std::free(block);
      return;
    }
    USERIP_POISON(block, cls);
    free_[cls].push_back(block);
    cached_bytes_ += cls;
  }

  mutable std::mutex mutex_;
  mutable std::map<std::size_t, std::vector<void*>> free_;
  mutable std::unordered_map<void*, std::size_t> live_;
  mutable std::size_t cached_bytes_ = 0;
};

}  // namespace

void use_caching_tensor_allocator() {
  // Priority above the default CPU allocator's, which registers at 0.
  c10::SetCPUAllocator(&CachingTensorAllocator::instance(), /*priority=*/1);
}

}  // namespace userip::tensor
