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

# userip_module(NAME DEPS <modules...> LIBS <external targets...>)
function(userip_module name)
  cmake_parse_arguments(ARG "" "" "DEPS;LIBS;PRIVATE_LIBS" ${ARGN})
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
  set(USERIP_MODULES ${USERIP_MODULES} userip_${name} PARENT_SCOPE)
endfunction()
