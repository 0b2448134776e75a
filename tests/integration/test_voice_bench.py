"""The voice-to-voice benchmark against the real servers (tiny models, CPU): every hop is measured,
in order, for concurrent conversations. Its numbers mean nothing here; that it measures does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.binaries import llama_server
from helpers.gguf_model import write
from helpers.process import ServerProcess
from helpers.stacks import speech_servers

pytestmark = pytest.mark.slow
BENCH = Path(__file__).parents[2] / "bench" / "voice_bench.py"


@pytest.fixture(scope="module")
def stack(tiny_asr_model, tiny_tts_model, tmp_path_factory):
    gguf = write(tmp_path_factory.mktemp("voice") / "tiny-Q8_0.gguf")
    with speech_servers(tiny_asr_model, tiny_tts_model) as (asr, tts):
        llm = ServerProcess("nemotron_llm", ["--model", str(gguf), "--llama-server", llama_server(),
                                             "--ctx-size", "1024", "--parallel", "2"])
        try:
            assert llm.notify.wait_for("READY=1", timeout=60, process=llm.process), llm.log()
            yield asr, tts, llm
        finally:
            llm.terminate()


def test_every_hop_is_measured_in_order(stack, tmp_path):
    asr, tts, llm = stack
    run = subprocess.run([sys.executable, str(BENCH), "--asr", asr.ws_url, "--llm", llm.base,
                          "--tts", tts.ws_url + "ws/tts/stream", "--conversations", "1,2", "--slots", "2",
                          "--seconds", "3", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    levels = json.loads((tmp_path / "voice_bench.json").read_text())["levels"]
    assert [level["conversations"] for level in levels] == [1, 2]
    for level in levels:
        hops = [level[hop]["p50"] for hop in ("final_ms", "first_token_ms", "first_sentence_ms",
                                              "first_audio_ms")]
        assert 0 < hops[0] <= hops[1] <= hops[2] <= hops[3], level
        assert level["mean_words_heard"] > 0
