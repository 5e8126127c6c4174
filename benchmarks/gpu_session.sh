#!/usr/bin/env bash
# The GPU checks on a lent GPU machine (the `device` tool), each in one call, with what its image lacks carried.
#
#   here, once:  bash benchmarks/gpu_session.sh fetch        # .whl/ (git-ignored): wheels the GPU image lacks
#   there:       bash benchmarks/gpu_session.sh check [...]  # benchmarks/gpu_check.py [its options]
#                bash benchmarks/gpu_session.sh eagle [...]  # benchmarks/eagle_gpu_check.py [its options]
#
# With the device tool: carry [".whl"], timeout_s 600; the report, its log and the environment come back from
# $OUT (./gpu_out where OUT is unset). The image (Python 3.12, torch 2.11, transformers 5.17, accelerate) has
# what the checks import except torchao (the int8/int4 rows); flash-attn cannot travel (docs/backends.md, flash).
# This package goes in without its dependencies: datasets, jiwer and fvcore are imported lazily and not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=(torchao==0.18.0)  # 0.18 loads its kernels on torch >= 2.11 (the check in its __init__)
SITE=${SITE:-/tmp/site}

install() {
  compgen -G '.whl/*.whl' >/dev/null || { echo "gpu_session: no wheels in .whl/: run 'bash benchmarks/gpu_session.sh" \
    "fetch' on the machine with network, and carry .whl" >&2; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl
  # into SITE too, so that its entry points (how backends are found) are seen
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$SITE" .
  export PYTHONPATH=$SITE PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
}

run() {  # run SCRIPT NAME [options]: its report and log under $OUT
  local script=$1 name=$2 out=${OUT:-gpu_out}
  shift 2
  mkdir -p "$out"
  install
  { nvidia-smi || true; "$PYTHON" -m pip list 2>/dev/null | grep -iE '^(torch|torchao|transformers|accelerate) '; } \
    >"$out/environment.txt" 2>&1
  "$PYTHON" "benchmarks/$script" --out "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log"
}

case "${1:-}" in
  fetch)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "${WHEELS[@]}"
    ls -l .whl ;;
  check) run gpu_check.py gpu_check "${@:2}" ;;
  eagle) run eagle_gpu_check.py eagle_gpu_check "${@:2}" ;;
  *) echo "usage: bash benchmarks/gpu_session.sh fetch | check [gpu_check options] | eagle [options]" >&2; exit 2 ;;
esac
