# Each architectural module (util, data, text, lm, profile, store, ctr, serve) is its own
# static library built from src/<module>/*.cpp. A module may link only the modules listed in
# ARCHITECTURE.md, so a forbidden include shows up as a link error instead of a habit.

set(USERIP_COMPILE_WARNINGS -Wall -Wextra -Wno-unused-parameter)
if(USERIP_WERROR)
  list(APPEND USERIP_COMPILE_WARNINGS -Werror)
endif()

if(USERIP_SANITIZE)
  set(USERIP_SANITIZER_FLAGS -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_compile_options(${USERIP_SANITIZER_FLAGS})
  add_link_options(${USERIP_SANITIZER_FLAGS})
endif()

set(USERIP_MODULES "")
set(USERIP_SKIP_MODULES "" CACHE STRING "Modules to leave out of a partial developer build (;-separated)")

# userip_module(NAME [TORCH] DEPS <modules...> LIBS <external targets...>); TORCH: its units use
# libtorch, so they compile with the precompiled torch header (userip_torch_pch below).
function(userip_module name)
  cmake_parse_arguments(ARG "TORCH" "" "DEPS;LIBS;PRIVATE_LIBS" ${ARGN})
  file(GLOB_RECURSE sources CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/src/${name}/*.cpp")
  if(name IN_LIST USERIP_SKIP_MODULES)
    return()  # a developer's partial build (e.g. while another module is being rewritten)
  endif()
  if(NOT sources)
    return()  # a module whose first source has not landed yet
  endif()
  add_library(userip_${name} STATIC ${sources})
  add_library(userip::${name} ALIAS userip_${name})
  target_include_directories(userip_${name}
    PUBLIC "${PROJECT_SOURCE_DIR}/include"
    PRIVATE "${PROJECT_SOURCE_DIR}/src")
  target_compile_options(userip_${name} PRIVATE ${USERIP_COMPILE_WARNINGS})
  foreach(dep IN LISTS ARG_DEPS)
    target_link_libraries(userip_${name} PUBLIC userip_${dep})
  endforeach()
  target_link_libraries(userip_${name} PUBLIC ${ARG_LIBS} PRIVATE ${ARG_PRIVATE_LIBS})
  if(ARG_TORCH)
    userip_torch_pch(userip_${name})
    # A global property, not a variable: the tests' directory is not below src/.
    set_property(GLOBAL APPEND PROPERTY USERIP_TORCH_MODULES ${name})
  endif()
  set(USERIP_MODULES ${USERIP_MODULES} userip_${name} PARENT_SCOPE)
endfunction()

# userip_torch_pch(TARGET [OWNER]): TARGET compiles with cmake/torch_pch.h precompiled. The header is
# built once, by OWNER (default userip_tensor, the first module on libtorch), and every other target
# reuses that file, which is why no target sets POSITION_INDEPENDENT_CODE: GCC refuses a header
# precompiled with -fPIC in an -fPIE unit and the other way round, and falls back to parsing it
# (correct, only slow). For the same reason a target compiled with other sanitizer flags needs an
# owner compiled with its flags (the sanitizer build's test programs: tests/CMakeLists.txt).
option(USERIP_PRECOMPILED_HEADERS "Precompile libtorch's headers once per build" ON)
function(userip_torch_pch target)
  set(owner userip_tensor)
  if(ARGC GREATER 1)
    set(owner "${ARGV1}")
  endif()
  if(NOT USERIP_PRECOMPILED_HEADERS OR NOT TARGET userip_tensor)
    return()
  endif()
  if(target STREQUAL owner)
    target_precompile_headers(${target} PRIVATE "${PROJECT_SOURCE_DIR}/cmake/torch_pch.h")
  else()
    target_precompile_headers(${target} REUSE_FROM ${owner})
  endif()
endfunction()
