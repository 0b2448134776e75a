"""A minimal Pipecat pipeline with Pipecat's stock NVIDIA (Riva) speech services, pointed at
nemotron-riva: speech in through ``NvidiaSTTService``, a sentence out through ``NvidiaTTSService``.

Runs in the Pipecat venv (its own lock: Pipecat's protobuf cannot share the servers' venv), so it
imports nothing of the repository. Prints one JSON line: the transcripts and the audio received.

    python pipecat_pipeline.py HOST:PORT API_KEY SPEECH.pcm "Text to speak."
"""

import asyncio
import json
import sys

from pipecat.frames.frames import (
    EndFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.nvidia.stt import NvidiaSTTService
from pipecat.services.nvidia.tts import NvidiaTTSService

RATE = 16000
FRAME_BYTES = RATE * 2 // 50  # 20 ms, as a transport delivers microphone audio


class Collector(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.finals: list[str] = []
        self.interims = 0
        self.audio = bytearray()
        self.audio_rate = 0
        self.heard = asyncio.Event()

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            self.finals.append(frame.text)
            self.heard.set()
        elif isinstance(frame, InterimTranscriptionFrame):
            self.interims += 1
        elif isinstance(frame, TTSAudioRawFrame):
            self.audio += frame.audio
            self.audio_rate = frame.sample_rate
        await self.push_frame(frame, direction)


async def run(task: PipelineTask, feed) -> None:
    runner = PipelineRunner(handle_sigint=False)
    await asyncio.gather(runner.run(task), feed())


async def main(server: str, key: str, pcm: bytes, text: str) -> dict:
    common = {"server": server, "use_ssl": False, "api_key": key or None}
    listened = Collector()
    task = PipelineTask(Pipeline([NvidiaSTTService(**common, sample_rate=RATE), listened]),
                        params=PipelineParams(audio_in_sample_rate=RATE))

    async def speak_into_it() -> None:
        await asyncio.sleep(0.5)  # the service opens its stream on the pipeline's start
        for start in range(0, len(pcm), FRAME_BYTES):
            frame = InputAudioRawFrame(audio=pcm[start:start + FRAME_BYTES], sample_rate=RATE, num_channels=1)
            await task.queue_frame(frame)
            await asyncio.sleep(0.02)
        silence = bytes(FRAME_BYTES)
        for _ in range(100):  # two seconds of silence: the server's endpointing ends the utterance
            await task.queue_frame(InputAudioRawFrame(audio=silence, sample_rate=RATE, num_channels=1))
            await asyncio.sleep(0.02)
        await asyncio.wait_for(listened.heard.wait(), 30)
        await task.queue_frame(EndFrame())

    await asyncio.wait_for(run(task, speak_into_it), 90)

    spoken = Collector()
    task = PipelineTask(Pipeline([NvidiaTTSService(**common, voice_id="aria", sample_rate=RATE), spoken]),
                        params=PipelineParams(audio_out_sample_rate=RATE))

    async def ask() -> None:
        await task.queue_frames([TTSSpeakFrame(text), EndFrame()])

    await asyncio.wait_for(run(task, ask), 90)
    return {"finals": listened.finals, "interims": listened.interims,
            "tts_bytes": len(spoken.audio), "tts_rate": spoken.audio_rate}


if __name__ == "__main__":
    server, key, pcm_path, text = sys.argv[1:5]
    with open(pcm_path, "rb") as f:
        result = asyncio.run(main(server, key, f.read(), text))
    print(json.dumps(result))
