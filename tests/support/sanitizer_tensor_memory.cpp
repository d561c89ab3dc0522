// Linked into the sanitizer build's test programs of the modules on libtorch (tests/CMakeLists.txt):
// their tensors come from the caching allocator that the CLI also uses under ASan
// (tensor/tensor_memory.h says why). A static initializer, so that main() stays free of libtorch.
#include "userip/tensor/tensor_memory.h"

namespace {
const bool installed = (userip::tensor::use_caching_tensor_allocator(), true);
}  // namespace
