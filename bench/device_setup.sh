#!/usr/bin/env bash
# Prepare a bare benchmark GPU host (see shared/gpu/README.md): install the carried NeMo wheels into
# /tmp/site and build the random-weight models the benchmarks use, each only if missing.
# Usage: source bench/device_setup.sh [tiny] [real]
python3 -c "import sys; sys.path.insert(0, '/tmp/site'); import nemo, loguru, websockets" 2>/dev/null ||
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/servers PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
for shape in "$@"; do
    [ -f "/tmp/asr-$shape.nemo" ] || python3 -m nemotron_asr.random_model "/tmp/asr-$shape.nemo" --shape "$shape" \
        --device "$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')" >/dev/null 2>&1
done
