# Writes the CTest file of one test program after it is built (tests/CMakeLists.txt runs this as a
# POST_BUILD step, the way CMake's gtest_discover_tests does, but grouping): one CTest test per
# GoogleTest suite, run as `PROGRAM --gtest_filter=Suite.*`, except the suites named in SPLIT_SUITES,
# whose tests each get a process of their own so that `ctest -j` can spread them.
#
#   cmake -D PROGRAM=... -D OUT=... -D LABEL=... -D WORKING_DIRECTORY=... -D SPLIT_SUITES=A,B
#         -P discover_tests.cmake
cmake_minimum_required(VERSION 3.16)

foreach(var PROGRAM OUT LABEL WORKING_DIRECTORY)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "discover_tests.cmake: -D ${var}=... is required")
  endif()
endforeach()

string(REPLACE "," ";" SPLIT_SUITES "${SPLIT_SUITES}")

execute_process(COMMAND "${PROGRAM}" --gtest_list_tests
  WORKING_DIRECTORY "${WORKING_DIRECTORY}"
  OUTPUT_VARIABLE listing ERROR_VARIABLE errors RESULT_VARIABLE status TIMEOUT 120)
if(NOT status EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} --gtest_list_tests failed (${status}):\n${listing}\n${errors}")
endif()

# Parameterised tests print "  # GetParam() = ..." after their names; the values may hold characters
# that CMake's list syntax treats specially ([, ], ;), so they go before the listing is split.
string(REGEX REPLACE "[ \t]+#[^\n]*" "" listing "${listing}")
string(REPLACE ";" "" listing "${listing}")
string(REPLACE "\n" ";" lines "${listing}")

set(script "# Written by discover_tests.cmake from `${PROGRAM} --gtest_list_tests`.\n")
set(suite "")
set(suite_has_tests FALSE)
# OpenBLAS's idle workers spin on sched_yield between calls; with `ctest -j` running a process per
# core, that spinning takes the cores the other tests need (a fit test used 2.7x the CPU under ASan,
# 1.6x in Release). Tests that want several BLAS threads set them (configure_threads, the CLI's
# --threads).
macro(add_ctest name filter)
  string(APPEND script
    "add_test([==[${name}]==] [==[${PROGRAM}]==] [==[--gtest_filter=${filter}]==])\n"
    "set_tests_properties([==[${name}]==] PROPERTIES LABELS [==[${LABEL}]==] "
    "WORKING_DIRECTORY [==[${WORKING_DIRECTORY}]==] ENVIRONMENT OPENBLAS_NUM_THREADS=1)\n")
endmacro()
macro(close_suite)
  if(suite_has_tests AND NOT suite IN_LIST SPLIT_SUITES)
    add_ctest("${suite}.*" "${suite}.*")
  endif()
endmacro()

foreach(line IN LISTS lines)
  if(line MATCHES "^([^ \t].*)\\.$")
    close_suite()
    set(suite "${CMAKE_MATCH_1}")
    set(suite_has_tests FALSE)
  elseif(line MATCHES "^[ \t]+(.+)$" AND NOT suite STREQUAL "")
    set(test "${CMAKE_MATCH_1}")
    # Disabled tests are run by hand (--gtest_also_run_disabled_tests), never by CTest.
    if(test MATCHES "^DISABLED_" OR suite MATCHES "(^|/)DISABLED_")
      continue()
    endif()
    set(suite_has_tests TRUE)
    if(suite IN_LIST SPLIT_SUITES)
      add_ctest("${suite}.${test}" "${suite}.${test}")
    endif()
  endif()
endforeach()
close_suite()

file(WRITE "${OUT}" "${script}")
