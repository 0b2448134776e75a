"""Benchmark the TTS server end to end: time to first audio and real-time factor under concurrency.

Starts ``nemotron-tts`` as a subprocess for each configuration, waits for READY (``/health`` 200),
then for each level opens N WebSocket clients at once; each sends one ``text`` in stream mode and
times the first binary frame, every later chunk and ``segment_complete``. A stream is real time
when no chunk arrives after the audio before it has finished playing (playback starting at the
first chunk). Random weights: only the timings mean anything.

    python bench/tts_bench.py --model /tmp/tts-real.nemo --streams 1,4,16,64 --out results/
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from serving import device_name, host_name, server_env, wait_ready  # noqa: E402 - bench/ is not a package

TEXT = "Hello there, this is a short reply from the voice agent, spoken as soon as possible."
CONFIGS = {"cfg": ["--cfg"], "no-cfg": ["--no-cfg"], "cfg-no-tf32": ["--cfg", "--no-tf32"],
           # NeMo's own cached decoder step instead of the graph-captured one, for comparison
           "cfg-nemo-step": ["--cfg", "--no-static-decoder"],
           "no-cfg-nemo-step": ["--no-cfg", "--no-static-decoder"],
           "cfg-continuous": ["--cfg", "--continuous-batching"],
           # joiners taken at the next step, whatever the playing streams have buffered
           "cfg-continuous-join-now": ["--cfg", "--continuous-batching", "--join-wait-ms", "0"],
           # each streamed chunk re-decodes the codec's receptive field instead of carrying its states
           "cfg-windowed-codec": ["--cfg", "--no-carried-codec"],
           "no-cfg-continuous": ["--no-cfg", "--continuous-batching"],
           # the engine in a process of its own, as ASR runs it
           "cfg-process": ["--cfg", "--engine-host", "process"],
           "cfg-continuous-process": ["--cfg", "--continuous-batching", "--engine-host", "process"],
           # the prompt through NeMo 32 or 64 decoder rows at a time (16 or 32 segments with CFG)
           "cfg-prefill-32": ["--cfg", "--prefill-rows", "32"],
           "cfg-prefill-64": ["--cfg", "--prefill-rows", "64"],
           "cfg-prefill-128": ["--cfg", "--prefill-rows", "128"],
           "cfg-prefill-whole": ["--cfg", "--prefill-rows", "0"],
           "cfg-process-prefill-128": ["--cfg", "--engine-host", "process", "--prefill-rows", "128"],
           "cfg-process-prefill-128-gather-10": ["--cfg", "--engine-host", "process", "--prefill-rows", "128",
                                                 "--gather-ms", "10"],
           # the static decoder's keys and values in float16 (the default on CUDA) or the model's type
           "cfg-kv16": ["--cfg", "--kv-cache-dtype", "float16"],
           "cfg-kv-model": ["--cfg", "--kv-cache-dtype", "model"]}
# Configurations without "continuous" in their names run fixed batches, as they did before continuous
# batching became the server's default, so that a name means the same in every result.
CONFIGS = {name: flags if "--continuous-batching" in flags else [*flags, "--no-continuous-batching"]
           for name, flags in CONFIGS.items()}
CONFIGS["default"] = []  # whatever the server does by default: what a user gets today


async def _one_stream(url: str, preset: str, sample_rate: int, delay_s: float = 0.0) -> dict:
    await asyncio.sleep(delay_s)
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "init", "voice": "aria", "language": "en"}))
        await ws.recv()
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "text", "text": TEXT, "mode": "stream", "preset": preset}))
        arrivals: list[tuple[float, int]] = []
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                arrivals.append((time.perf_counter(), len(message)))
                continue
            body = json.loads(message)
            if body["type"] == "segment_complete":
                break
            if body["type"] == "error":
                return {"error": body["message"]}
    first = arrivals[0][0]
    played_s, late_ms = 0.0, 0.0
    for arrival, size in arrivals:
        late_ms = max(late_ms, (arrival - (first + played_s)) * 1000)
        played_s += size / 2 / sample_rate
    total = arrivals[-1][0] - sent
    return {"first_audio_ms": (first - sent) * 1000, "audio_s": played_s, "wall_s": total,
            "rtf": total / played_s if played_s else float("inf"), "max_late_ms": late_ms,
            "chunks": len(arrivals)}


async def _level(url: str, streams: int, preset: str, sample_rate: int, repeats: int,
                 stagger_s: float = 0.0) -> dict:
    def pct(values, q):
        values = sorted(values)
        return round(values[min(len(values) - 1, int(q * len(values)))], 1) if values else None

    results, rounds = [], []
    for _ in range(repeats):  # one sample per stream and round: several rounds for stable percentiles
        this_round = await asyncio.gather(*(_one_stream(url, preset, sample_rate, stagger_s * i / streams)
                                            for i in range(streams)))
        ok = [r for r in this_round if "error" not in r]
        rounds.append({"first_audio_p50_ms": pct([r["first_audio_ms"] for r in ok], 0.5),
                       "realtime_streams": sum(1 for r in ok if r["max_late_ms"] <= 20.0)})
        results += this_round
    good = [r for r in results if "error" not in r]
    first = sorted(r["first_audio_ms"] for r in good)

    return {"streams": streams, "preset": preset, "repeats": repeats, "errors": len(results) - len(good),
            "first_audio_p50_ms": pct(first, 0.5), "first_audio_p95_ms": pct(first, 0.95),
            "rtf_mean": round(statistics.mean(r["rtf"] for r in good), 3) if good else None,
            "audio_s_mean": round(statistics.mean(r["audio_s"] for r in good), 2) if good else None,
            "realtime_streams": round(sum(1 for r in good if r["max_late_ms"] <= 20.0) / repeats, 1),
            "max_late_ms": round(max((r["max_late_ms"] for r in good), default=0.0), 1),
            "rounds": rounds}


def _server_totals(port: int) -> dict[str, float]:
    """The server's own first-audio and queue-wait histograms' sums and counts (``GET /metrics``)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            websocket = sample.labels.get("endpoint") in (None, "websocket")
            if websocket and sample.name.endswith(("_sum", "_count")):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _server_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean milliseconds, as the server saw them, over one level: from a text's arrival to its first
    audio being sent, and to its generation's start. The rest of the client's figure is the client's
    and the loopback's."""
    means: dict[str, float | None] = {}
    for name in ("first_audio_seconds", "queue_wait_seconds"):
        key = f"nemotron_tts_{name}"
        total, count = (after.get(f"{key}_{kind}", 0.0) - before.get(f"{key}_{kind}", 0.0)
                        for kind in ("sum", "count"))
        means[name.replace("_seconds", "_mean_ms")] = round(total / count * 1000, 1) if count else None
    return means


@click.command()
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--configs", default="cfg,no-cfg", show_default=True)
@click.option("--streams", default="1,4,16,64", show_default=True)
@click.option("--preset", default="aggressive", show_default=True)
@click.option("--max-frames", default=64, show_default=True,
              help="frames per utterance (random weights rarely stop)")
@click.option("--repeats", default=5, show_default=True, help="rounds per level (each stream count)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out"))
@click.option("--port", default=18001, show_default=True)
@click.option("--servers", type=click.Path(file_okay=False, path_type=Path), default=ROOT / "servers",
              show_default=True, help="the servers' code to run (another checkout's, for a baseline)")
@click.option("--stagger-ms", default=0, show_default=True,
              help="spread the clients' starts evenly over this window instead of starting them at once")
def main(model_path, configs, streams, preset, max_frames, repeats, out, port, servers, stagger_ms) -> None:
    out.mkdir(parents=True, exist_ok=True)
    counts = [int(s) for s in streams.split(",")]
    report = {"device": device_name(), "host": host_name(), "model": model_path.name,
              "max_frames": max_frames, "servers": str(servers), "runs": {}}
    url = f"ws://127.0.0.1:{port}/ws/tts/stream"
    for name in configs.split(","):
        log = (out / f"tts-server-{name}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "nemotron_tts", "--model", str(model_path), "--port", str(port),
             "--max-sessions", str(max(counts)), "--max-batch", str(max(counts)),
             "--max-frames", str(max_frames), *CONFIGS[name]],
            stdout=log, stderr=subprocess.STDOUT, env=server_env("tts", servers))
        try:
            ready_s = wait_ready(port, process, 900)
            print(f"{name}: server ready after {ready_s:.0f} s", flush=True)
            levels = []
            for count in counts:
                before = _server_totals(port)
                result = asyncio.run(_level(url, count, preset, 22050, repeats, stagger_ms / 1000))
                result["server"] = _server_means(before, _server_totals(port))
                print(f"{name}: {json.dumps(result)}", flush=True)
                levels.append(result)
            report["runs"][name] = levels
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
    (out / "tts_bench.json").write_text(json.dumps(report, indent=1))
    spread = f", starts spread over {stagger_ms} ms" if stagger_ms else ""
    lines = [f"TTS stream mode ({preset}), {report['device']}, random weights, "
             f"{max_frames} frames per utterance{spread}; host {report['host']}",
             "| config | streams | first audio p50 ms | p95 ms | RTF (wall/audio) "
             "| real-time streams | errors | server: first audio / queue wait, mean ms |",
             "|---|---|---|---|---|---|---|---|"]
    for name, levels in report["runs"].items():
        for r in levels:
            lines.append(f"| {name} | {r['streams']} | {r['first_audio_p50_ms']} | "
                         f"{r['first_audio_p95_ms']} | {r['rtf_mean']} | {r['realtime_streams']} | "
                         f"{r['errors']} | {r['server']['first_audio_mean_ms']} / "
                         f"{r['server']['queue_wait_mean_ms']} |")
    (out / "tts_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
