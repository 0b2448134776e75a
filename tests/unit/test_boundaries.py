"""The layers each server is built from (docs/architecture.md): the wire side (protocol, session,
transport and what they use) never imports torch, NeMo or an engine module. So it stays cheap to
import, testable without a model, and a service whose engine runs in a process of its own (ASR by
default, TTS with ``engine_host = "process"``) never pays for torch at all.

Checked by importing those modules in a fresh interpreter in which the forbidden modules cannot be
imported (``sys.modules[name] = None`` makes any import of them fail)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ["torch", "nemo", "lightning", "nemotron_asr.engine", "nemotron_asr.model",
             "nemotron_asr.loading", "nemotron_asr.steps", "nemotron_asr.decoder", "nemotron_asr.featurizer",
             "nemotron_tts.engine", "nemotron_tts.loading",
             "nemotron_tts.model", "nemotron_tts.codec", "nemotron_tts.continuous"]
WIRE_SIDE = {
    "asr": ["nemotron_asr.protocol", "nemotron_asr.session", "nemotron_asr.transport",
            "nemotron_asr.transcription", "nemotron_asr.transcripts", "nemotron_asr.interface",
            "nemotron_asr.engine_process", "nemotron_asr.service"],  # the engine may live in a child
    "tts": ["nemotron_tts.protocol", "nemotron_tts.session", "nemotron_tts.transport",
            "nemotron_tts.speech", "nemotron_tts.interface", "nemotron_tts.audio", "nemotron_tts.metrics",
            "nemotron_tts.catalog", "nemotron_tts.engine_process", "nemotron_tts.service"],
    "riva": ["nemotron_riva.service"],
    "common": ["nemotron_common.http", "nemotron_common.lifecycle", "nemotron_common.access",
               "nemotron_common.health", "nemotron_common.metrics", "nemotron_common.engine_host",
               "nemotron_common.service", "nemotron_common.workers", "nemotron_common.occupancy"],
}


def import_without_forbidden(modules: list[str], then: str = "") -> subprocess.CompletedProcess:
    code = (f"import sys\nfor name in {FORBIDDEN!r}: sys.modules[name] = None\n"
            + "".join(f"import {module}\n" for module in modules) + then)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{ROOT / 'servers'}", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("side", sorted(WIRE_SIDE))
def test_the_wire_side_imports_no_model_code(side):
    result = import_without_forbidden(WIRE_SIDE[side])
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]


def test_the_check_catches_a_forbidden_import():
    result = import_without_forbidden(["nemotron_tts.loading"])  # builds the engine: must fail
    assert result.returncode != 0 and "halted; None in sys.modules" in result.stderr


def test_a_metrics_scrape_before_the_engine_is_loaded_imports_no_model_code():
    scrape = ("metrics = nemotron_tts.metrics.TTSMetrics(lambda: {'sessions': 0, 'queued_segments': 0})\n"
              "body, _ = metrics.metrics.render()\n"
              "assert b'nemotron_tts_gpu_memory_reserved_bytes 0.0' in body, body\n")
    result = import_without_forbidden(["nemotron_tts.metrics"], then=scrape)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]
