// The precompiled header of every target that uses libtorch (cmake/Modules.cmake,
// userip_torch_pch). Parsing these headers takes 4-5 s per translation unit on this project's
// 2-core machine and loading them precompiled about 1 s, so they are parsed once per build.
// Keep it to the tensor API that most units include; a unit that needs torch/nn or torch/optim
// includes those itself.
#pragma once
#include <ATen/ATen.h>
#include <torch/types.h>
