#!/usr/bin/env bash
# One device call's worth of benchmarks on a bare GPU host, packed so that everything comes back:
# the device tool returns at most 8 files, and the two benches alone write 8. Prints the tables and
# leaves one archive, $OUT/bench.tgz, with every result, log and probe output.
#
# Through the device tool (carry [".whl"]), for example:
#   bash bench/device_run.sh asr tts            # about 8 minutes on an H200
#   bash bench/device_run.sh tts-probes asr-profile
# Parts: asr (eager and graphs, 1-512 streams), asr-graphs (graphs, 1-512 streams), asr-baseline
# (the same with the servers in $BASELINE_SERVERS), asr-ab (graphs,
# this checkout's servers and $BASELINE_SERVERS' loaded together, each level's rounds alternating;
# 512 and 1,024 streams, 3 rounds each, unless ASR_STREAMS and ASR_REPEATS say otherwise),
# asr-workers (graphs, $ASR_WORKERS or 4 transport workers against $AGAINST_WORKERS or one, rounds
# alternating; 512 and 1,024 streams, 3 rounds each, unless ASR_STREAMS and ASR_REPEATS say otherwise),
# tts-cfg and tts-baseline (CFG, 1/16/64 streams,
# 3 rounds, this checkout's servers and $BASELINE_SERVERS'), tts-staggered (16 and 64 clients
# starting over 2 s: fixed batches, continuous batching, continuous joining at once, or
# $STAGGERED_CONFIGS), asr-spread (graphs, starts spread over one 160 ms chunk), tts (CFG and no CFG,
# 1/16/64 streams, 3 rounds), tts-process (CFG, the engine in a thread and in a process, 1-128 streams),
# tts-codec (codec call: carried states, eager and graphs, against windowed), tts-codec-served
# (served with carried states against windowed, CFG),
# tts-probes (first audio in process, continuous-batching costs), tts-batch-first-audio (a batch's
# first audio in process, phase by phase, and the host profile at 128; prefill $PREFILL_ROWS or 128,
# more probe options in $PROBE_ARGS, e.g. --no-tf32), asr-profile (512-stream step), asr-host-profile (py-spy
# samples of the served engine at $PROFILE_STREAMS or 1,024 streams; carry py-spy's wheel in .whl),
# asr-burst (the service's transport alone carrying that many simultaneous resets in and finals out),
# memory-asr, memory-tts (GPU memory and start time per configured capacity), tts-peak (what is
# alive at TTS's memory peak, by allocating code; batch $MEMORY_TTS or 64), asr-invariance (one
# clip as 1-256 identical streams: does the transcript depend on the batch size, float32 and bf16, or
# $INVARIANCE_DTYPES), asr-replay (each captured encoder step's replay time, this checkout's servers
# and $BASELINE_SERVERS' if set).
# A part may be named more than once, to alternate two servers in one call.
# ASR_STREAMS, TTS_STREAMS, MEMORY_ASR and MEMORY_TTS (comma-separated) replace the levels of
# asr-graphs and asr-baseline, tts-cfg and tts-baseline, memory-asr and memory-tts; ASR_INSTANCES
# runs asr-graphs on that many servers sharing the streams (several engine processes on one GPU);
# ASR_REPEATS runs each level of asr-graphs and asr-baseline that many rounds, TTS_REPEATS each of
# tts-cfg; TTS_CONFIGS names tts-cfg's configurations. DEVICE_MODELS names
# the models to build first (device_setup.sh's shapes; both by default), so that a call of TTS parts
# only need not spend a minute calibrating the ASR model.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2086  # a list of shapes, split on purpose
source bench/device_setup.sh ${DEVICE_MODELS:-real tts-real}
results=${OUT:-bench-out}/work
mkdir -p "$results"
# A part named twice (A/B/A/B alternations) writes to NAME, NAME-2, NAME-3, ...
fresh() {
    local dir=$results/$1 n=2
    while [ -e "$dir" ]; do dir=$results/$1-$n; n=$((n + 1)); done
    echo "$dir"
}
for part in "$@"; do
    case $part in
        asr) timeout 330 python bench/asr_bench.py --model /tmp/asr-real.nemo --out "$(fresh asr)" 2>&1 |
                 tail -14 ;;
        asr-graphs) timeout 250 python bench/asr_bench.py --model /tmp/asr-real.nemo --modes graphs \
                        --streams "${ASR_STREAMS:-1,16,64,256,512}" --instances "${ASR_INSTANCES:-1}" \
                        --repeats "${ASR_REPEATS:-1}" --out "$(fresh asr-graphs)" 2>&1 | tail -7 ;;
        asr-baseline) timeout 250 python bench/asr_bench.py --model /tmp/asr-real.nemo --modes graphs \
                          --streams "${ASR_STREAMS:-1,16,64,256,512}" --repeats "${ASR_REPEATS:-1}" \
                          --servers "${BASELINE_SERVERS:?the baseline servers directory}" \
                          --out "$(fresh asr-baseline)" 2>&1 | tail -7 ;;
        asr-ab) timeout 560 python bench/asr_bench.py --model /tmp/asr-real.nemo --modes graphs \
                    --streams "${ASR_STREAMS:-512,1024}" --repeats "${ASR_REPEATS:-3}" \
                    --against "${BASELINE_SERVERS:?the baseline servers directory}" \
                    --out "$(fresh asr-ab)" 2>&1 | grep -v '^graphs' | tail -12 ;;
        asr-workers) timeout 560 python bench/asr_bench.py --model /tmp/asr-real.nemo --modes graphs \
                         --streams "${ASR_STREAMS:-512,1024}" --repeats "${ASR_REPEATS:-3}" \
                         --server-flags "--workers ${ASR_WORKERS:-4}" --against-flags "--workers ${AGAINST_WORKERS:-1}" \
                         --out "$(fresh asr-workers)" 2>&1 | grep -v '^graphs' | tail -12 ;;
        asr-spread) timeout 200 python bench/asr_bench.py --model /tmp/asr-real.nemo --modes graphs \
                        --streams 256,512 --spread-ms 160 --out "$(fresh asr-spread)" 2>&1 | tail -5 ;;
        tts) timeout 300 python bench/tts_bench.py --model /tmp/tts-real.nemo --configs cfg,no-cfg \
                 --streams 1,16,64 --repeats 3 --out "$(fresh tts)" 2>&1 | grep -v '^{' | tail -10 ;;
        tts-cfg) timeout 250 python bench/tts_bench.py --model /tmp/tts-real.nemo --configs "${TTS_CONFIGS:-cfg}" \
                     --streams "${TTS_STREAMS:-1,16,64}" --repeats "${TTS_REPEATS:-3}" --out "$(fresh tts-cfg)" 2>&1 |
                     grep -v '^{' | tail -8 ;;
        tts-baseline) timeout 250 python bench/tts_bench.py --model /tmp/tts-real.nemo --configs cfg \
                          --streams "${TTS_STREAMS:-1,16,64}" --repeats 3 --servers "${BASELINE_SERVERS:?the baseline servers directory}" \
                          --out "$(fresh tts-baseline)" 2>&1 | grep -v '^{' | tail -6 ;;
        tts-staggered) timeout 400 python bench/tts_bench.py --model /tmp/tts-real.nemo \
                           --configs "${STAGGERED_CONFIGS:-cfg,cfg-continuous,cfg-continuous-join-now}" --streams 16,64 --stagger-ms 2000 \
                           --repeats 2 --out "$(fresh tts-staggered)" 2>&1 | grep -v '^{' | tail -8 ;;
        tts-process) timeout 400 python bench/tts_bench.py --model /tmp/tts-real.nemo --configs cfg,cfg-process \
                         --streams 1,16,64,128 --repeats 3 --out "$(fresh tts-process)" 2>&1 | grep -v '^{' | tail -12 ;;
        tts-codec) python bench/probes/tts_codec_profile.py /tmp/tts-real.nemo > "$results/tts_codec.txt" 2>&1
                   grep -A16 '^{' "$results/tts_codec.txt" ;;
        tts-codec-served) timeout 300 python bench/tts_bench.py --model /tmp/tts-real.nemo \
                              --configs cfg,cfg-windowed-codec --streams 1,16,64 --repeats 3 \
                              --out "$(fresh tts-codec)" 2>&1 | grep -v '^{' | tail -10 ;;
        tts-batch-first-audio)
            timeout 300 python bench/probes/tts_batch_first_audio.py /tmp/tts-real.nemo --batches 1,16,64,128 \
                --prefill-rows "${PREFILL_ROWS:-128}" ${PROBE_ARGS:-} >> "$results/tts_batch_first_audio.txt" 2>&1
            grep '^{' "$results/tts_batch_first_audio.txt"
            grep -A24 'by tottime' "$results/tts_batch_first_audio.txt" | cut -c1-150 ;;
        tts-probes)
            python bench/probes/tts_first_audio.py /tmp/tts-real.nemo 2>&1 | tee "$results/tts_first_audio.txt" |
                grep '^{'
            python bench/probes/tts_continuous_check.py /tmp/tts-real.nemo 2>&1 |
                tee "$results/tts_continuous_check.txt" | grep '^{' ;;
        memory-asr) timeout 560 python bench/memory_bench.py --asr-model /tmp/asr-real.nemo \
                        --asr "${MEMORY_ASR:-16,64,256,512}" \
                        --out "$(fresh memory-asr)" 2>&1 | tail -8 ;;
        memory-tts) timeout 560 python bench/memory_bench.py --tts-model /tmp/tts-real.nemo \
                        --tts "${MEMORY_TTS:-4,16,64}" \
                        --out "$(fresh memory-tts)" 2>&1 | tail -7 ;;
        tts-peak) timeout 400 python bench/probes/tts_memory_peak.py /tmp/tts-real.nemo \
                      --max-batch "${MEMORY_TTS:-64}" > "$results/tts_peak.txt" 2>&1
                  grep -v ' | \|^\[NeMo\|Warning\|warn' "$results/tts_peak.txt" | tail -30 ;;
        asr-replay)
            for servers in servers ${BASELINE_SERVERS:-}; do
                timeout 150 python bench/probes/asr_step_replay.py /tmp/asr-real.nemo --servers "$servers" \
                    --sizes "${ASR_STREAMS:-1,16,64,512}" 2>&1 | tee -a "$results/asr_replay.txt" | grep '^{'
            done ;;
        asr-invariance)
            for dtype in ${INVARIANCE_DTYPES:-float32 bfloat16}; do
                timeout 200 python bench/probes/asr_batch_invariance.py /tmp/asr-real.nemo --dtype $dtype \
                    --streams 1,16,64,256 2>&1 | tee -a "$results/asr_invariance.txt" | grep 'distinct finals'
            done ;;
        asr-host-profile) timeout 400 python bench/probes/asr_host_profile.py /tmp/asr-real.nemo \
                              --streams "${PROFILE_STREAMS:-1024}" --out "$(fresh asr-host-profile)" 2>&1 |
                              grep -v '^{' | grep -A32 'asr-engine:' ;;
        asr-burst) python bench/probes/asr_final_burst.py --streams "${PROFILE_STREAMS:-1024}" \
                       > "$results/asr_final_burst.txt" 2>&1
                   cat "$results/asr_final_burst.txt" ;;
        asr-profile)
            python bench/probes/asr_step_profile.py /tmp/asr-real.nemo 512 > "$results/asr_profile.txt" 2>&1
            grep -A20 "eager encoder step at" "$results/asr_profile.txt" ;;
        *) echo "unknown part: $part" >&2 ;;
    esac
done
tar -czf "${OUT:-bench-out}/bench.tgz" -C "$results" . && rm -rf "$results"
