"""ASR and TTS as real processes with the tiny models, READY, and the Riva gateway in front of them:
the setup several integration tests share."""

from __future__ import annotations

from contextlib import contextmanager

from .process import ServerProcess


@contextmanager
def speech_servers(asr_model, tts_model, env: dict | None = None, riva: bool = False):
    """Yields ``[asr, tts]`` (one CPU thread each, right context 1, TTS seed 5), with ``riva`` also
    the gateway; all stopped on exit."""
    env = env or {}
    asr = ServerProcess("nemotron_asr", ["--model", str(asr_model), "--cpu-threads", "1",
                                         "--right-context", "1"], env=env)
    tts = ServerProcess("nemotron_tts", ["--model", str(tts_model), "--device", "cpu",
                                         "--cpu-threads", "1", "--seed", "5"], env=env)
    servers = [asr, tts]
    try:
        asr.wait_ready()
        tts.wait_ready()
        if riva:
            gateway = ServerProcess("nemotron_riva", ["--asr-url", asr.ws_url,
                                                      "--tts-url", tts.ws_url + "ws/tts/stream"], env=env)
            servers.append(gateway)
            assert gateway.notify.wait_for("READY=1", timeout=60, process=gateway.process), gateway.log()
        yield servers
    finally:
        for server in servers:
            server.terminate()
