# Every dependency comes from Debian's archive (scripts/setup.sh installs them); README.md
# says why each is here.
find_package(Threads REQUIRED)
find_package(nlohmann_json 3.9 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(SQLite3 REQUIRED)
# text: PCRE2 for the Unicode-property pre-tokenizer regexes of byte-level BPE (no CMake package
# on Debian). libsentencepiece is deliberately not linked: its private protobuf copy clashes with
# libtorch's libprotobuf; its spm_train / spm_encode tools are run as programs instead.
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
# serve: libmicrohttpd's event loops. Found by file, not pkg-config: its .pc file requires gnutls's,
# which the GPU machine's dependency folder (scripts/gpu_deps.sh) does not carry.
find_path(MICROHTTPD_INCLUDE_DIR microhttpd.h)
find_library(MICROHTTPD_LIBRARY microhttpd)
if(NOT MICROHTTPD_INCLUDE_DIR OR NOT MICROHTTPD_LIBRARY)
  message(FATAL_ERROR "libmicrohttpd not found (Debian: libmicrohttpd-dev; scripts/setup.sh installs it)")
endif()
add_library(userip_microhttpd INTERFACE IMPORTED)
set_target_properties(userip_microhttpd PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${MICROHTTPD_INCLUDE_DIR}"
                                                   INTERFACE_LINK_LIBRARIES "${MICROHTTPD_LIBRARY}")
# The server tests' HTTP client: cpp-httplib, which Debian ships compiled with a CMake-less .pc file.
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)

# libtorch: Debian's CPU build (1.13) by default; a CUDA libtorch 2.x from a PyTorch wheel is
# picked up with -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)').
find_package(Torch REQUIRED)
if(Torch_VERSION VERSION_GREATER_EQUAL 2.13 AND CMAKE_CXX_STANDARD LESS 20)
  message(STATUS "libtorch ${Torch_VERSION} needs C++20: building as C++20")
  set(CMAKE_CXX_STANDARD 20)
endif()
# PyTorch wheels export the libstdc++ they link statically (std::filesystem and more; pytorch
# issue #133437). On the GPU machine (Ubuntu 24.04, g++ 13, torch 2.11+cu130) our executable ended
# up without libstdc++.so.6 among its NEEDED libraries, so `std::filesystem::remove_all` bound to
# libtorch.so's copy and jumped to address 0 at the end of `profile fit --device cuda` (LD_DEBUG=
# bindings showed the binding). Naming the shared libstdc++ by file name, first and not as-needed,
# makes the dynamic linker find the system's own before any library that re-exports it.
if(CMAKE_SYSTEM_NAME STREQUAL "Linux" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(USERIP_CXX_RUNTIME_FIRST "SHELL:-Wl,--push-state,--no-as-needed -l:libstdc++.so.6 -Wl,--pop-state")
endif()

if(USERIP_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(USERIP_BUILD_BENCHMARKS)
  find_package(benchmark REQUIRED)
endif()
