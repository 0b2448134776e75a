"""A minimal Pipecat pipeline with Pipecat's stock NVIDIA (Riva) STT and TTS services, pointed at
nemotron-riva in front of the real ASR and TTS servers: what a Pipecat user configures with a
server address and no cloud key. The pipeline runs in Pipecat's own venv (tests/run builds it from
locks/pipecat-cpu-x86_64.txt) through tests/helpers/pipecat_pipeline.py."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers.asr_client import to_pcm
from helpers.stacks import speech_servers

from random_models.asr import CALIBRATION_SEED, speechlike_audio

PIPECAT_PYTHON = os.environ.get("NEMOTRON_TEST_PIPECAT_PYTHON")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not PIPECAT_PYTHON, reason="NEMOTRON_TEST_PIPECAT_PYTHON not set")]
PIPELINE = Path(__file__).parents[1] / "helpers" / "pipecat_pipeline.py"
KEY = "pipecat-k3y"


@pytest.fixture(scope="module")
def gateway(tiny_asr_model, tiny_tts_model, tmp_path_factory):
    keys = tmp_path_factory.mktemp("pipecat-keys")
    (keys / "api-key").write_text(KEY)
    with speech_servers(tiny_asr_model, tiny_tts_model, {"CREDENTIALS_DIRECTORY": str(keys)},
                        riva=True) as servers:
        yield servers[2]


def test_a_pipecat_pipeline_hears_and_speaks_through_the_stock_nvidia_services(gateway, tmp_path):
    speech = tmp_path / "speech.pcm"
    speech.write_bytes(to_pcm(speechlike_audio(4.0, seed=CALIBRATION_SEED)))
    run = subprocess.run([PIPECAT_PYTHON, str(PIPELINE), f"127.0.0.1:{gateway.port}", KEY, str(speech),
                          "Hello there, friend."], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["interims"] > 0 and result["finals"] and all(text.strip() for text in result["finals"])
    # Audio at the rate the service asked for (the voices' own is 22.05 kHz): over half a second.
    errors = [line for line in run.stderr.splitlines() if "ERROR" in line][-2:]
    assert result["tts_rate"] == 16000 and result["tts_bytes"] > 16000, errors
