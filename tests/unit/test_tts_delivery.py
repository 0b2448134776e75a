"""How TTS audio leaves the server: a bounded WebSocket outbox, and an HTTP job that never says 200
without its audio."""

import asyncio

from nemotron_tts.catalog import Prepared
from nemotron_tts.speech import SpeechRequest, streaming_wav_header
from nemotron_tts.transport import Outbox


def test_outbox_closes_a_client_that_stops_reading():
    async def scenario():
        outbox, overflows = Outbox(limit_bytes=10), []
        outbox.on_overflow = lambda: overflows.append(outbox.unsent)
        outbox.push("{}")
        outbox.push(b"12345678")
        assert overflows == [] and outbox.unsent == 10
        outbox.get_nowait()
        assert outbox.unsent == 8
        outbox.push(b"123")  # 11 unsent: over
        outbox.push(b"dropped")
        outbox.push(None)  # the end marker always goes in
        return overflows, outbox.qsize()

    overflows, queued = asyncio.run(scenario())
    assert overflows == [11] and queued == 3


def _finish(speech: SpeechRequest, audio: bytes | None, cancelled: bool = False, error: str | None = None):
    if audio:
        speech.job.on_audio(audio)
    if cancelled:
        speech.job.cancelled.set()
    speech.job.on_done(0.0, error)


def test_a_job_that_ends_without_audio_is_an_error():
    async def scenario(**ending):
        speech = SpeechRequest(Prepared([], 0, "hi"), stream=True)
        _finish(speech, **ending)
        return await speech.whole(), speech.error

    assert asyncio.run(scenario(audio=b"\0\0")) == (b"\0\0", None)
    assert "shutting down" in asyncio.run(scenario(audio=b"\0\0", cancelled=True))[1]
    assert "no audio" in asyncio.run(scenario(audio=None))[1]
    assert asyncio.run(scenario(audio=None, error="boom"))[1] == "boom"


def test_streaming_wav_header_is_a_wav_header():
    header = streaming_wav_header(22050)
    assert len(header) == 44 and header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert int.from_bytes(header[24:28], "little") == 22050 and header[36:40] == b"data"
