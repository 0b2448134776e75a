"""Benchmark the ASR server end to end: eager vs CUDA-graph steps, same model, same run.

Builds (once) a random-weight model of the real shape, then for each mode starts ``nemotron-asr``
as a subprocess, waits for READY (``/health`` 200), drives it with ``bench/asr_load.py`` at each
stream count, stops it with SIGTERM, and writes a JSON file and a Markdown table. Random weights:
only the timings mean anything. ``--instances N`` starts N servers on consecutive ports, each sized
for its share of the largest level, and splits every level's streams evenly between them: several
engine processes on one GPU. ``--against DIR`` loads DIR's servers alongside (another checkout's)
and alternates every level's rounds between the two, so that the machine's drift during a call
falls on both alike; ``--against-flags`` gives that side's servers other settings (without
``--against``: this checkout's servers, differently set up, e.g. ``--against-flags "--workers 1"``
with ``--server-flags "--workers 4"``).

    python bench/asr_bench.py --shape real --streams 1,64,256,512 --out results/
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "servers"))
sys.path.insert(0, str(ROOT))  # random_models
sys.path.insert(0, str(ROOT / "bench"))

MODES = {"eager": ["--no-cuda-graphs"], "graphs": ["--cuda-graphs"]}


def _health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        return json.loads(r.read())


def _steps_between(before: dict, after: dict) -> dict:
    """The engine's per-kind step summary (cumulative in /health) for one level alone."""
    out = {}
    for kind, now in after.items():
        then = before.get(kind, {"steps": 0, "streams": 0})
        steps = now["steps"] - then["steps"]
        if not steps:
            continue
        streams = now["streams"] - then["streams"]
        out[kind] = {"steps": steps, "streams": streams, "mean_streams": round(streams / steps, 1)}
        for key in (k for k in now if k.endswith("_ms")):
            total = now[key] * now["steps"] - then.get(key, 0.0) * then["steps"]
            out[kind][key] = round(total / steps, 2)
    return out


@click.command()
@click.option("--shape", default="real", type=click.Choice(["tiny", "real"]))
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="use this .nemo instead of building one")
@click.option("--modes", default="eager,graphs", show_default=True)
@click.option("--streams", default="1,16,64,256,512", show_default=True)
@click.option("--seconds", default=5.0, show_default=True)
@click.option("--frame-ms", default=20, show_default=True)
@click.option("--large-frame-ms", default=80, show_default=True,
              help="frame size from 128 streams up, so one Python client process is not the limit")
@click.option("--procs", default=8, show_default=True)
@click.option("--right-context", default=1, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out"))
@click.option("--servers", type=click.Path(file_okay=False, path_type=Path), default=ROOT / "servers",
              show_default=True, help="the servers' code to run (another checkout's, for a baseline)")
@click.option("--port", default=18080, show_default=True, help="the first server's port")
@click.option("--repeats", default=1, show_default=True,
              help="rounds per level; percentiles over all of them (one stream's level is one final a round)")
@click.option("--instances", default=1, show_default=True,
              help="servers on one device, each taking an equal share of every level's streams")
@click.option("--against", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="another checkout's servers, loaded alongside in each mode; every level's rounds "
                   "alternate between the two (the comparison a change that should speed ASR up needs)")
@click.option("--server-flags", default="", help="more flags for this checkout's servers")
@click.option("--against-flags", default=None,
              help="flags for the other side's servers, instead of --server-flags (alone: this checkout's)")
@click.option("--step-timing/--no-step-timing", default=False, show_default=True,
              help="exact per-phase step times in the results (the server then syncs the GPU each phase)")
@click.option("--spread-ms", default=0.0, show_default=True,
              help="start each level's streams evenly over this window (0: together, the worst case "
                   "for time to final: every reset lands at once)")
def main(shape, model_path, modes, streams, seconds, frame_ms, large_frame_ms, procs, right_context,
         out, servers, port, repeats, instances, against, server_flags, against_flags, step_timing,
         spread_ms) -> None:
    from asr_load import run_alternating
    from serving import device_name, host_name, server_env, stop, wait_ready

    out.mkdir(parents=True, exist_ok=True)
    if model_path is None:
        from random_models.asr import build

        model_path = Path(f"/tmp/asr-{shape}.nemo")
        if not model_path.exists():
            started = time.monotonic()
            build(model_path, shape, device="cuda" if device_name() != "cpu" else "cpu",
                  words_per_second=3.5, right_context=right_context)
            click.echo(f"built {model_path} in {time.monotonic() - started:.0f} s", err=True)
    counts = [int(n) for n in streams.split(",")]
    report = {"device": device_name(), "host": host_name(), "model": model_path.name,
              "right_context": right_context, "servers": str(servers), "instances": instances, "runs": {}}
    capacity = -(-max(counts) // instances)
    if against_flags is not None and against is None:
        against = servers
    sides = {"": servers, **({" against": against} if against else {})}  # a run's name: mode + side
    flags = {"": shlex.split(server_flags),
             " against": shlex.split(server_flags if against_flags is None else against_flags)}
    for mode in modes.split(","):
        ports, processes = {}, {}
        for number, (side, side_servers) in enumerate(sides.items()):
            ports[side] = [port + number * instances + i for i in range(instances)]
            processes[side] = []
            for index, server_port in enumerate(ports[side]):
                name = f"server-{mode}{side.replace(' ', '-')}" + (f"-{index + 1}" if instances > 1 else "")
                processes[side].append(subprocess.Popen(
                    [sys.executable, "-m", "nemotron_asr", "--model", str(model_path), "--port",
                     str(server_port), "--right-context", str(right_context), "--max-sessions", str(capacity),
                     "--max-batch", str(capacity), *MODES[mode], *(["--step-timing"] if step_timing else []),
                     *flags[side]],
                    stdout=(out / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
                    env=server_env("asr", side_servers)))
        every = [process for group in processes.values() for process in group]
        urls = {side: [f"ws://127.0.0.1:{server_port}/" for server_port in ports[side]] for side in sides}
        try:
            ready_s = {side: max(wait_ready(server_port, process, 900) for server_port, process
                                 in zip(ports[side], processes[side], strict=True)) for side in sides}
            click.echo(f"{mode}: {len(every)} server(s) ready after {max(ready_s.values()):.0f} s", err=True)
            rows = {side: [] for side in sides}
            health = {side: [_health(server_port) for server_port in ports[side]] for side in sides}
            for count in counts:
                size = frame_ms if count < 128 else large_frame_ms
                try:
                    level = run_alternating(urls, count, seconds, size, procs, 500.0, spread_ms, repeats)
                except Exception as exc:  # noqa: BLE001 - record it, dump the servers' threads, go on
                    for process in every:
                        process.send_signal(signal.SIGUSR1)
                    time.sleep(2)
                    error = f"{type(exc).__name__}: {exc}"
                    level = {side: {"streams": count, "frame_ms": size, "error": error} for side in sides}
                time.sleep(1.2)  # the engine process reports its step statistics once a second
                for side, row in level.items():
                    before, health[side] = health[side], [_health(server_port) for server_port in ports[side]]
                    steps = [_steps_between(then.get("steps", {}), now.get("steps", {}))
                             for then, now in zip(before, health[side], strict=True)]
                    row["steps"] = steps[0] if instances == 1 else steps
                    click.echo(f"{mode}{side}: {json.dumps(row)}", err=True)
                    rows[side].append(row)
            for side, side_servers in sides.items():
                report["runs"][mode + side] = {
                    "servers": str(side_servers), "flags": flags[side], "ready_s": round(ready_s[side], 1),
                    "rows": rows[side],
                    "health": health[side][0] if instances == 1 else health[side]}
        finally:
            for process in every:
                stop(process)
        (out / "asr_bench.json").write_text(json.dumps(report, indent=1))
    spread = f", stream starts spread over {spread_ms:g} ms" if spread_ms else ""
    split = f", {instances} servers sharing the streams" if instances > 1 else ""
    lines = [f"ASR time to final, {report['device']}, random weights ({model_path.name}), "
             f"right context {right_context}{spread}{split}; host {report['host']}", "",
             "| mode | streams | frame ms | TTF p50 | p95 | p99 | max | real-time streams | errors "
             "| words/s per stream | characters/s per stream | interims per stream |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    silent = []
    for mode, run in report["runs"].items():
        for r in run["rows"]:
            keys = ("streams", "frame_ms", "ttf_p50_ms", "ttf_p95_ms", "ttf_p99_ms", "ttf_max_ms",
                    "realtime_streams", "errors", "words_per_second", "chars_per_second", "mean_interims")
            if not r.get("words_per_second") or not r.get("mean_interims"):
                silent.append(f"{mode} at {r['streams']} streams")
            cells = [mode] + [r.get(k) for k in keys]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    with_rounds = [(mode, r) for mode, run in report["runs"].items() for r in run["rows"] if r.get("rounds")]
    if with_rounds:
        lines += ["", "| mode | streams | each round's p50 / p95 ms, in the order run |", "|---|---|---|"]
        lines += [f"| {mode} | {r['streams']} | "
                  + ", ".join(f"{x['ttf_p50_ms']} / {x.get('ttf_p95_ms')}" for x in r["rounds"]) + " |"
                  for mode, r in with_rounds]
    if against:
        setups = (f" with {' '.join(flags[' against']) or 'no more flags'}" if flags[" against"] != flags[""]
                  else "")
        lines += ["", f"'against': the servers in {against}{setups}, loaded alongside (this side's flags: "
                  f"{' '.join(flags['']) or 'none'}); every level's rounds alternated between the two."]
    (out / "asr_bench.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))
    if silent:  # a model that says nothing skips the decoding and messaging work a real one does
        raise click.ClickException(f"the model was silent (no words or no interims): {', '.join(silent)}")


if __name__ == "__main__":
    main()
