#!/usr/bin/env bash
# Unpacks userip's non-libtorch C++ dependencies (the Debian 12 packages scripts/setup.sh installs)
# into a folder, for a GPU machine that has CUDA, a PyTorch wheel and a compiler but neither these
# packages nor a package registry. Run it here, carry the folder there, and point
# `scripts/gpu_check.sh --deps DIR` at it. Only libraries that such a machine's own system
# (glibc, libstdc++, OpenSSL, zlib) does not already provide are used at run time (the -dev packages
# of OpenSSL and zlib come only for the .pc files cpp-httplib names); nothing lands in /usr.
#
#   scripts/gpu_deps.sh [DIR]        (default: .gpu-deps, which .gitignore keeps out of commits)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.gpu-deps}
packages=(
  nlohmann-json3-dev libcli11-dev
  libfmt-dev libfmt9 libspdlog-dev libspdlog1.10
  libsqlite3-dev libsqlite3-0 libpcre2-dev libpcre2-8-0
  libmicrohttpd-dev libmicrohttpd12
  libcpp-httplib-dev libcpp-httplib0.11 libbrotli1 libbrotli-dev zlib1g-dev libssl-dev
  libbenchmark-dev libbenchmark1debian
  pkgconf pkgconf-bin libpkgconf3
)
debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
(cd "$debs" && apt-get -o APT::Sandbox::User=root download "${packages[@]}")
rm -rf "$dir"
mkdir -p "$dir"
for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$dir"; done
# Documentation and static archives are not needed to build or run, and the folder travels; but
# benchmark's CMake package checks that its libbenchmark_main.a exists.
rm -rf "$dir/usr/share/doc" "$dir/usr/share/man" "$dir/usr/share/lintian"
find "$dir" -name '*.a' ! -name 'libbenchmark*' -delete
# These link names would point at Debian's copies; the machine's own libssl.so.3, libcrypto.so.3
# and libz.so.1 serve at run time.
rm -f "$dir"/usr/lib/x86_64-linux-gnu/{libssl,libcrypto,libz}.so
echo "gpu_deps: $(du -sh "$dir" | cut -f1) in $dir"
