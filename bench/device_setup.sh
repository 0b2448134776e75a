#!/usr/bin/env bash
# Prepare a bare benchmark GPU host (see shared/gpu/README.md): install the carried NeMo wheels into
# /tmp/site and build the random-weight models the benchmarks use, each only if missing.
# Usage: source bench/device_setup.sh [tiny] [real] [tts-tiny] [tts-real]
#   tiny/real: ASR models at /tmp/asr-<shape>.nemo; tts-<shape>: Magpie at /tmp/tts-<shape>.nemo
python3 -c "import sys; sys.path.insert(0, '/tmp/site'); import nemo, loguru, websockets, aiohttp" 2>/dev/null ||
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/servers:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export PATH=/tmp/site/bin:$PATH  # console scripts of carried wheels (py-spy for host profiles)
device="$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
for shape in "$@"; do
    case "$shape" in
        tts-*) [ -f "/tmp/$shape.nemo" ] || python3 -m random_models.tts "/tmp/$shape.nemo" \
                   --shape "${shape#tts-}" --max-decoder-steps 500 >/dev/null 2>&1 ;;
        *) [ -f "/tmp/asr-$shape.nemo" ] || python3 -m random_models.asr "/tmp/asr-$shape.nemo" \
               --shape "$shape" --device "$device" --words-per-second 3.5 2>&1 | tail -3 ;;
    esac
done
