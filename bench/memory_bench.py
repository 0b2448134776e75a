"""GPU memory and start time of ASR and TTS per configured capacity, at READY and after a load.

For each capacity the server is started alone on the GPU; at READY and again after one burst of
traffic as large as the capacity (ASR: that many streams of 2 s and a hard reset; TTS: that many
streamed sentences), it reads the GPU memory of the server's processes from nvidia-smi (the whole
process tree: the ASR engine runs in a child) and the caching allocator's share from /metrics.

    python bench/memory_bench.py --asr-model /tmp/asr-real.nemo --tts-model /tmp/tts-real.nemo \
        --asr 16,64,256,512 --tts 4,16,64 --out bench-out/memory

Writes memory.json: one row per server and capacity with gpu_memory_mib (at READY),
gpu_memory_after_load_mib, allocator_reserved_mib and start_s.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serving import device_name, gpu_mib, host_name, server_env, stop, wait_ready  # noqa: E402 - bench/ is not a package


def reserved_mib(port: int, service: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"nemotron_{service}_gpu_memory_reserved_bytes "):
                return round(float(line.split()[1]) / 2**20, 1)
    return float("nan")


async def asr_burst(port: int, streams: int) -> None:
    pcm = (np.sin(np.arange(32000) * 0.05) * 8000).astype("<i2").tobytes()

    async def one() -> None:
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None, compression=None) as ws:
            await ws.recv()
            for offset in range(0, len(pcm), 2560):
                await ws.send(pcm[offset:offset + 2560])
                await asyncio.sleep(0.08)
            await ws.send(json.dumps({"type": "reset"}))
            while not json.loads(await ws.recv()).get("finalize"):
                pass

    await asyncio.gather(*(one() for _ in range(streams)))


async def tts_burst(port: int, streams: int) -> None:
    async def one() -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws/tts/stream", max_size=None) as ws:
            await ws.send(json.dumps({"type": "text", "text": "A reply of one sentence, spoken in full.",
                                      "mode": "stream"}))
            while True:
                message = await ws.recv()
                if isinstance(message, str) and json.loads(message)["type"] in ("segment_complete", "error"):
                    return

    await asyncio.gather(*(one() for _ in range(streams)))


def measure(service: str, model: Path, capacity: int, port: int, log_dir: Path, extra: list[str]) -> dict:
    if service == "asr":
        args = ["--max-sessions", str(capacity), "--max-batch", str(capacity)]
    else:
        args = ["--max-batch", str(capacity), "--max-sessions", str(max(capacity, 64))]
    env = server_env(service)
    log = (log_dir / f"{service}-{capacity}.log").open("w")
    command = [sys.executable, "-m", f"nemotron_{service}", "--model", str(model), "--port", str(port),
               *args, *extra]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        start_s = wait_ready(port, process, 900)
        time.sleep(1.5)  # the ASR engine process reports its allocator once a second
        row = {"server": service, "capacity": capacity, "start_s": round(start_s, 1),
               "gpu_memory_mib": gpu_mib(process.pid), "allocator_reserved_mib": reserved_mib(port, service)}
        burst = asr_burst if service == "asr" else tts_burst
        asyncio.run(asyncio.wait_for(burst(port, capacity), 300))
        time.sleep(1.5)
        row["gpu_memory_after_load_mib"] = gpu_mib(process.pid)
        row["allocator_reserved_after_load_mib"] = reserved_mib(port, service)
        return row
    finally:
        stop(process)


@click.command()
@click.option("--asr-model", type=click.Path(exists=True, path_type=Path))
@click.option("--tts-model", type=click.Path(exists=True, path_type=Path))
@click.option("--asr", "asr_levels", default="16,64,256,512", show_default=True)
@click.option("--tts", "tts_levels", default="4,16,64", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out/memory"))
@click.option("--port", default=18090, show_default=True)
@click.option("--server-args", default="", help="more flags for every server, e.g. '--no-cuda-graphs'")
def main(asr_model, tts_model, asr_levels, tts_levels, out, port, server_args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": device_name(), "host": host_name(), "weights": "random", "rows": []}
    plan = ([("asr", asr_model, int(n)) for n in asr_levels.split(",")] if asr_model else []) + \
           ([("tts", tts_model, int(n)) for n in tts_levels.split(",")] if tts_model else [])
    for service, model, capacity in plan:
        try:
            row = measure(service, model, capacity, port, out, server_args.split())
        except Exception as exc:  # noqa: BLE001 - record it and go on with the next level
            row = {"server": service, "capacity": capacity, "error": f"{type(exc).__name__}: {exc}"}
        row["server_args"] = server_args
        click.echo(json.dumps(row), err=True)
        report["rows"].append(row)
        (out / "memory.json").write_text(json.dumps(report, indent=1))
    lines = [f"GPU memory per capacity, {report['device']}, random weights", "",
             "| server | capacity | start s | GPU MiB at READY | after load | allocator MiB at READY "
             "| after load |", "|---|---|---|---|---|---|---|"]
    keys = ("server", "capacity", "start_s", "gpu_memory_mib", "gpu_memory_after_load_mib",
            "allocator_reserved_mib", "allocator_reserved_after_load_mib")
    for r in report["rows"]:
        cells = [r.get(k, r.get("error", "")) for k in keys]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
