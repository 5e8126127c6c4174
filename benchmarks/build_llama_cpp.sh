#!/usr/bin/env bash
# Build llama.cpp's llama-bench and llama-quantize from the llama-cpp-python sdist on PyPI, for
# benchmarks/cpu_7b.py's side-by-side with llama.cpp. About 15-25 min on 2 cores.
#   bash benchmarks/build_llama_cpp.sh [DIR]      (default DIR: ~/.cache/llava_accel/llama.cpp)
# Needs: pip, cmake, a C++ compiler. The binaries land in DIR/build/bin; convert_hf_to_gguf.py in DIR/src.
set -euo pipefail
dir=${1:-$HOME/.cache/llava_accel/llama.cpp}
mkdir -p "$dir"
if [ ! -f "$dir/src/CMakeLists.txt" ]; then
    ls "$dir"/sdist/llama_cpp_python-*.tar.gz >/dev/null 2>&1 ||
        python -m pip download --no-deps --no-binary :all: -d "$dir/sdist" llama-cpp-python
    tar -xzf "$dir"/sdist/llama_cpp_python-*.tar.gz -C "$dir"
    mv "$dir"/llama_cpp_python-*/vendor/llama.cpp "$dir/src"
    rm -rf "$dir"/llama_cpp_python-*/
fi
# GGML_NATIVE: tune for this CPU (AVX2, AVX-512, ... as it has), as a user building it here would.
cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build "$dir/build" --target llama-bench llama-quantize -j "$(nproc)"
echo "built: $dir/build/bin/llama-bench $dir/build/bin/llama-quantize"
