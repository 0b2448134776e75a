"""The voice-to-voice benchmark against the real servers (tiny models, CPU; the LLM a tiny random
model of Nemotron-3-Nano's hybrid architecture, as on the GPU): every hop is measured, in order, for
concurrent conversations, with and without background decoding. Its numbers mean nothing here; that
it measures does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.binaries import llama_server
from helpers.process import ServerProcess
from helpers.stacks import speech_servers

from random_models.llm import write

pytestmark = pytest.mark.slow
BENCH = Path(__file__).parents[2] / "bench" / "voice_bench.py"


@pytest.fixture(scope="module")
def stack(tiny_asr_model, tiny_tts_model, tmp_path_factory):
    gguf = write(tmp_path_factory.mktemp("voice") / "tiny-nemotron-h-moe-Q8_0.gguf", "tiny")
    with speech_servers(tiny_asr_model, tiny_tts_model) as (asr, tts):
        llm = ServerProcess("nemotron_llm", ["--model", str(gguf), "--llama-server", llama_server(),
                                             "--ctx-size", "4096", "--parallel", "3"])
        try:
            assert llm.notify.wait_for("READY=1", timeout=60, process=llm.process), llm.log()
            yield asr, tts, llm
        finally:
            llm.terminate()


def test_every_hop_is_measured_in_order(stack, tmp_path):
    asr, tts, llm = stack
    run = subprocess.run([sys.executable, str(BENCH), "--asr", asr.ws_url, "--llm", llm.base,
                          "--tts", tts.ws_url + "ws/tts/stream", "--conversations", "1,2", "--slots", "2",
                          "--seconds", "3", "--llm-load", "0,1", "--turns", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    levels = json.loads((tmp_path / "voice_bench.json").read_text())["levels"]
    plan = [(level["conversations"], level["llm_load"]) for level in levels]
    assert plan == [(1, 0), (2, 0), (1, 1), (2, 1)]
    for level in levels:
        hops = [level[hop]["p50"] for hop in ("final_ms", "first_token_ms", "first_sentence_ms",
                                              "first_audio_ms")]
        assert 0 < hops[0] <= hops[1] <= hops[2] <= hops[3], level
        assert level["mean_words_heard"] > 0
        assert all(level["shares"][share]["p50"] > 0 for share in ("asr_ms", "llm_ms", "tts_ms")), level
        assert (level["background_tokens_per_s"] > 0) == (level["llm_load"] > 0), level
        assert level["samples"] == 2 * level["conversations"]  # two turns each
        assert level["later_turns"]["first_token_ms"]["p50"] > 0, level
