"""The whole stack on one machine, as installed: ASR, TTS and the LLM servers at their default settings
(the LLM's slots raised to the benchmark's conversations), then ``voice_bench.py`` against them.

    python bench/voice_stack.py --asr-model /tmp/asr-real.nemo --tts-model /tmp/tts-real.nemo \\
        --llm-model /tmp/nano.gguf --llama-server /tmp/llama-gpu/llama.cpp/bin/llama-server \\
        --conversations 1,4,16 --llm-load 0,4 --out bench-out/voice

Writes ``voice_bench.json``/``.md`` (from voice_bench) and ``stack.json``: the device, each server's
start time and GPU memory once all three were ready, and after the run.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "servers")]
from nemotron_common import ports  # noqa: E402 - bench scripts run as files
from serving import device_name, gpu_mib, host_name, server_env, stop, wait_ready  # noqa: E402

PORTS = {"asr": ports.ASR, "tts": ports.TTS, "llm": ports.LLM}


def _memory(processes: dict) -> dict:
    """Each server's GPU memory (its process tree's: the LLM's is its backend's); none without a GPU."""
    if not shutil.which("nvidia-smi"):
        return {}
    return {name: gpu_mib(process.pid) for name, process in processes.items()}


async def llm_speed(url: str, batches: list[int], tokens: int = 128) -> list[dict]:
    """Decode and prefill speed as llama-server times them, for each number of concurrent streams:
    a fresh prompt per stream (nothing cached), ``tokens`` generated whatever is sampled."""
    import aiohttp

    async def one(session, slot: int, batch: int) -> dict:
        body = {"prompt": f"<|im_start|>user\nround {batch} stream {slot}: tell me about your day "
                          f"and then about mine<|im_end|>\n<|im_start|>assistant\n",
                "n_predict": tokens, "ignore_eos": True, "id_slot": slot, "cache_prompt": False}
        async with session.post(url + "/completion", json=body) as response:
            response.raise_for_status()
            return (await response.json())["timings"]

    rows = []
    async with aiohttp.ClientSession() as session:
        await one(session, 0, 0)  # one-time costs first
        for batch in batches:
            timings = await asyncio.gather(*(one(session, slot, batch) for slot in range(batch)))
            rows.append({"streams": batch,
                         "decode_tokens_per_s_per_stream": round(statistics.median(
                             t["predicted_per_second"] for t in timings), 1),
                         "prompt_tokens": statistics.median(t["prompt_n"] for t in timings),
                         "prompt_ms": round(statistics.median(t["prompt_ms"] for t in timings), 1)})
    return rows


@click.command()
@click.option("--asr-model", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--tts-model", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--llm-model", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--llama-server", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--conversations", default="1,4,16", show_default=True)
@click.option("--llm-load", default="0,4", show_default=True)
@click.option("--seconds", default=3.0, show_default=True)
@click.option("--rounds", default=2, show_default=True)
@click.option("--turns", default=1, show_default=True, help="user turns per conversation")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def main(asr_model, tts_model, llm_model, llama_server, conversations, llm_load, seconds, rounds, turns,
         out) -> None:
    """Start the three servers, measure voice to voice, stop them."""
    out.mkdir(parents=True, exist_ok=True)
    slots = max(int(n) for n in conversations.split(","))
    parallel = slots + max(int(n) for n in llm_load.split(","))
    commands = {
        "asr": ["-m", "nemotron_asr", "--model", str(asr_model), "--port", str(PORTS["asr"])],
        "tts": ["-m", "nemotron_tts", "--model", str(tts_model), "--port", str(PORTS["tts"])],
        "llm": ["-m", "nemotron_llm", "--model", str(llm_model), "--llama-server", str(llama_server),
                "--port", str(PORTS["llm"]), "--parallel", str(parallel),
                "--ctx-size", str(2048 * turns * parallel)],
    }
    logs = {name: (out / f"{name}.log").open("w") for name in commands}
    processes, started = {}, {}
    try:
        for name, argv in commands.items():  # one after another, as nemotron.target orders them
            begin = time.monotonic()
            processes[name] = subprocess.Popen([sys.executable, *argv], stdout=logs[name],
                                               stderr=subprocess.STDOUT, env=server_env(name))
            started[name] = round(wait_ready(PORTS[name], processes[name], timeout=900), 1)
            click.echo(f"{name} ready in {time.monotonic() - begin:.1f} s")
        ready_memory = _memory(processes)
        speed = asyncio.run(llm_speed(f"http://127.0.0.1:{PORTS['llm']}",
                                      sorted({int(n) for n in conversations.split(",")})))
        click.echo(json.dumps({"llm_speed": speed}))
        run = subprocess.run([sys.executable, str(Path(__file__).parent / "voice_bench.py"),
                              "--asr", f"ws://127.0.0.1:{PORTS['asr']}/",
                              "--llm", f"http://127.0.0.1:{PORTS['llm']}",
                              "--tts", f"ws://127.0.0.1:{PORTS['tts']}/ws/tts/stream",
                              "--conversations", conversations, "--slots", str(slots),
                              "--llm-load", llm_load, "--seconds", str(seconds), "--rounds", str(rounds),
                              "--turns", str(turns),
                              "--out", str(out)])
        after_memory = _memory(processes)
    finally:
        for process in processes.values():
            stop(process)
    (out / "stack.json").write_text(json.dumps({
        "device": device_name(), "host": host_name(), "start_s": started, "llm_parallel": parallel,
        "llm_speed": speed,
        "gpu_memory_mib_ready": ready_memory, "gpu_memory_mib_after": after_memory,
        "llm_model": llm_model.name, "llm_model_gib": round(llm_model.stat().st_size / 2**30, 2)}, indent=1))
    click.echo(json.dumps({"ready_mib": ready_memory, "after_mib": after_memory}))
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
