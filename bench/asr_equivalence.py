"""Check on any device that streamed finals equal offline transcription (eager and CUDA graphs).

Runs the engine in-process (no sockets) on a random-weight model for each right context, feeding
20 ms frames of several clips at once, and compares each final with ``transcribe_offline``.

    python bench/asr_equivalence.py MODEL.nemo --right-context 1,6,13
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import threading
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "servers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # random_models


def check(model_path: Path, right_context: int, cuda_graphs: bool, clips: int) -> dict:
    """One process per configuration: NeMo's second restore_from in a process can fail on torch 2.11."""
    from nemotron_asr.engine import Engine
    from nemotron_asr.model import StreamingModel

    from random_models.asr import speechlike_audio

    model = StreamingModel(model_path, right_context, max_streams=clips, cuda_graphs=cuda_graphs,
                           graph_buckets=(1, 2, 4, 8))
    model.capture()
    engine = Engine(model, max_batch=clips)
    engine.start()
    finals: dict[int, str] = {}
    done = threading.Semaphore(0)
    audios = [speechlike_audio(0.3 + 0.7 * i, seed=i) for i in range(clips)]
    for index, audio in enumerate(audios):
        def deliver(result, index=index):
            if result.kind == "final":
                finals[index] = result.text
                done.release()
        stream = engine.open(deliver)
        pcm = (audio * 32767).astype("<i2").tobytes()
        for offset in range(0, len(pcm), 640):
            engine.feed(stream, pcm[offset:offset + 640])
        engine.finalize(stream)
    for _ in audios:
        assert done.acquire(timeout=120), "no final"
    engine.stop()
    offline = [model.transcribe_offline((a * 32767).astype("<i2").astype("float32") / 32768) for a in audios]
    matches = sum(finals[i] == offline[i] for i in range(clips))
    return {"right_context": right_context, "graphs": model.uses_graphs, "dtype": str(model.dtype),
            "clips": clips, "matches": matches, "nonempty": sum(bool(t) for t in offline),
            "mismatched": [(offline[i][:40], finals[i][:40]) for i in range(clips)
                           if finals[i] != offline[i]]}


@click.command()
@click.argument("model_path", type=click.Path(exists=True, path_type=Path))
@click.option("--right-context", default="1,6,13")
@click.option("--clips", default=6)
def main(model_path: Path, right_context: str, clips: int) -> None:
    for context in (int(r) for r in right_context.split(",")):
        for graphs in (False, True):
            spawn = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                click.echo(pool.submit(check, model_path, context, graphs, clips).result())


if __name__ == "__main__":
    main()
