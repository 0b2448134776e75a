"""Load generator for the streaming ASR server, speaking the bots' protocol.

N clients at once, each: connect, wait for ``ready``, send S seconds of 16 kHz s16le PCM at real-time
pace, then a hard reset; the time from that reset to the final transcript is "time to final" (TTF).
The same method as the load generator that measured the old server, so the numbers compare.
Clients are spread over several processes so the generator is not the bottleneck at hundreds of
streams, and over several servers when given several URLs (several engine processes on one GPU).
A stream "stays real time" when every frame went out within one frame of its due time and its final
arrived within ``--realtime-ttf-ms``.

    python bench/asr_load.py ws://127.0.0.1:8080/ --streams 1,16,64 --seconds 5 --frame-ms 20
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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "servers"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # random_models


def _audio(seconds: float) -> bytes:
    from random_models.asr import CALIBRATION_SEED, speechlike_audio

    # The clip the random model was calibrated to talk on, so interims and finals carry text.
    return (speechlike_audio(seconds, seed=CALIBRATION_SEED) * 32767).astype("<i2").tobytes()


async def _client(url: str, pcm: bytes, frame_bytes: int, start_at: float) -> dict:
    from websockets.asyncio.client import connect

    result: dict = {"ttf_ms": None, "late_ms": 0.0, "interims": 0, "words": 0, "chars": 0, "error": None}
    try:
        async with connect(url, max_size=None, compression=None, open_timeout=60, proxy=None,
                           ping_interval=None) as ws:
            ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if ready.get("type") != "ready":
                result["error"] = f"no ready: {ready}"
                return result
            await asyncio.sleep(max(0.0, start_at - time.time()))
            final = asyncio.get_running_loop().create_future()

            async def reader() -> None:
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("type") == "transcript" and not message.get("is_final"):
                        result["interims"] += 1
                    elif message.get("type") == "transcript" and message.get("finalize"):
                        result["words"] = len(message["text"].split())
                        result["chars"] = len(message["text"])
                        final.set_result(time.perf_counter())
                        return
                    elif message.get("type") == "error":
                        final.set_exception(RuntimeError(message.get("message")))
                        return

            read = asyncio.create_task(reader())
            begin = time.perf_counter()
            for offset in range(0, len(pcm), frame_bytes):
                due = begin + offset / 32000
                now = time.perf_counter()
                if now < due:
                    await asyncio.sleep(due - now)
                else:
                    result["late_ms"] = max(result["late_ms"], (now - due) * 1000)
                await ws.send(pcm[offset:offset + frame_bytes])
            reset_at = time.perf_counter()
            await ws.send(json.dumps({"type": "reset", "finalize": True}))
            result["ttf_ms"] = (await asyncio.wait_for(final, 60) - reset_at) * 1000
            read.cancel()
    except Exception as exc:  # noqa: BLE001 - counted and reported
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


async def _clients(url: str, seconds: float, frame_bytes: int, starts: list[float]) -> list[dict]:
    pcm = _audio(seconds)
    return await asyncio.gather(*(_client(url, pcm, frame_bytes, start_at) for start_at in starts))


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, p)), 1)


def _round(urls: list[str], streams: int, seconds: float, frame_bytes: int, procs: int,
           spread_ms: float) -> list[dict]:
    """Every stream's result of one round: all connect, then start together or spread."""
    start_at = time.time() + 3 + streams / 200  # everyone connects first
    starts = [start_at + spread_ms / 1000 * i / streams for i in range(streams)]
    shares = [starts[i::procs] for i in range(procs)]
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", urls[i % len(urls)], str(seconds),
                                 str(frame_bytes), json.dumps(share)], stdout=subprocess.PIPE)
               for i, share in enumerate(shares) if i]
    results = asyncio.run(_clients(urls[0], seconds, frame_bytes, shares[0]))
    for worker in workers:
        output, _ = worker.communicate(timeout=seconds + 120)
        results += json.loads(output)
    return results


def _ttfs(results: list[dict]) -> list[float]:
    return [r["ttf_ms"] for r in results if r["ttf_ms"] is not None]


def _realtime(results: list[dict], realtime_ttf_ms: float, frame_ms: int) -> int:
    return sum(1 for r in results if r["ttf_ms"] is not None and r["ttf_ms"] <= realtime_ttf_ms
               and r["late_ms"] <= frame_ms)


def run_level(urls: str | list[str], streams: int, seconds: float, frame_ms: int, procs: int,
              realtime_ttf_ms: float, spread_ms: float = 0.0, repeats: int = 1) -> dict:
    """One level: ``streams`` clients connect, then all start together (or, with ``spread_ms``,
    evenly spread over that window, so their resets do not all land at once), ``repeats`` rounds in
    turn; percentiles are over every final of every round, ``realtime_streams`` is the fewest of any
    round. With several ``urls`` the client processes take them in turn, so each server gets an
    equal share."""
    urls = [urls] if isinstance(urls, str) else urls
    return run_alternating({"": urls}, streams, seconds, frame_ms, procs, realtime_ttf_ms, spread_ms,
                           repeats)[""]


def run_alternating(sides: dict[str, list[str]], streams: int, seconds: float, frame_ms: int, procs: int,
                    realtime_ttf_ms: float, spread_ms: float = 0.0, repeats: int = 1) -> dict[str, dict]:
    """The level of ``run_level`` on each side's servers, the sides' rounds alternating (A, B, A, B,
    ...), so that whatever drifts on the machine during a call falls on every side alike; a row per
    side."""
    frame_bytes = 32 * frame_ms
    # client processes: a multiple of each side's servers
    side_procs = {side: max(1, min(-(-max(procs, len(urls)) // len(urls)) * len(urls), streams))
                  for side, urls in sides.items()}
    rounds: dict[str, list[list[dict]]] = {side: [] for side in sides}
    for _ in range(repeats):
        for side, urls in sides.items():
            rounds[side].append(_round(urls, streams, seconds, frame_bytes, side_procs[side], spread_ms))
    return {side: _row(rounds[side], len(sides[side]), streams, seconds, frame_ms, realtime_ttf_ms,
                       spread_ms) for side in sides}


def _row(rounds: list[list[dict]], servers: int, streams: int, seconds: float, frame_ms: int,
         realtime_ttf_ms: float, spread_ms: float) -> dict:
    results = [result for round_results in rounds for result in round_results]
    ttf = _ttfs(results)
    errors = [r["error"] for r in results if r["error"]]
    return {"streams": streams, "audio_s": seconds, "frame_ms": frame_ms,
            "ttf_p50_ms": percentile(ttf, 50), "ttf_p95_ms": percentile(ttf, 95),
            "ttf_p99_ms": percentile(ttf, 99), "ttf_max_ms": percentile(ttf, 100),
            "realtime_streams": min(_realtime(r, realtime_ttf_ms, frame_ms) for r in rounds),
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "max_send_late_ms": round(max(r["late_ms"] for r in results), 1),
            "mean_interims": round(sum(r["interims"] for r in results) / len(results), 1),
            "words_per_second": round(sum(r["words"] for r in results) / len(results) / seconds, 2),
            "chars_per_second": round(sum(r["chars"] for r in results) / len(results) / seconds, 1),
            **({"servers": servers} if servers > 1 else {}),
            **({"start_spread_ms": spread_ms} if spread_ms else {}),
            **({"rounds": [{"ttf_p50_ms": percentile(_ttfs(round_results), 50),
                            "ttf_p95_ms": percentile(_ttfs(round_results), 95),
                            "realtime_streams": _realtime(round_results, realtime_ttf_ms, frame_ms)}
                           for round_results in rounds]} if len(rounds) > 1 else {})}


@click.command()
@click.argument("urls", nargs=-1, required=True)
@click.option("--streams", default="1,4,16", help="comma-separated stream counts, run in turn")
@click.option("--seconds", default=5.0, show_default=True, help="audio per stream before the reset")
@click.option("--frame-ms", default=20, show_default=True, help="audio per WebSocket frame")
@click.option("--procs", default=4, show_default=True, help="client processes")
@click.option("--realtime-ttf-ms", default=500.0, show_default=True,
              help="a stream whose final takes longer did not keep up")
@click.option("--spread-ms", default=0.0, show_default=True,
              help="start the streams evenly over this window instead of together")
@click.option("--repeats", default=1, show_default=True, help="rounds per level")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None)
def main(urls: tuple[str, ...], streams: str, seconds: float, frame_ms: int, procs: int,
         realtime_ttf_ms: float, spread_ms: float, repeats: int, json_out: str | None) -> None:
    """Open N concurrent real-time streams against URLS (split evenly between them) and report time
    to final."""
    rows = []
    for count in (int(n) for n in streams.split(",")):
        row = run_level(list(urls), count, seconds, frame_ms, procs, realtime_ttf_ms, spread_ms, repeats)
        rows.append(row)
        click.echo(json.dumps(row), err=False)
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # one client process of a multi-process level
        url, seconds, frame_bytes, starts = sys.argv[2:6]
        print(json.dumps(asyncio.run(_clients(url, float(seconds), int(frame_bytes), json.loads(starts)))))
    else:
        main()
