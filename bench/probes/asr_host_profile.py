"""Where the served ASR engine's host time goes under load: py-spy samples of the running server.

Runs ``asr_bench.py`` (graphs, one level, several rounds) and, once the server is ready and the
load runs, records the server and its engine process with py-spy for ``--seconds``. Prints, for the
engine thread and the engine process's other threads, the share of samples by function (own time
and time inclusive of callees), so the step's host phases can be split into the code that spends
them. The engine thread's samples include its waits for the GPU (``--idle``).

    python bench/probes/asr_host_profile.py /tmp/asr-real.nemo --streams 1024 --out /tmp/host
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[2]


def _server_pid(timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", "-o", "nemotron_asr --model"], capture_output=True, text=True)
        if found.stdout.strip():
            return int(found.stdout.split()[0])
        time.sleep(0.5)
    raise SystemExit("no ASR server started")


def _wait_for(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise SystemExit(f"{path} never said {text!r}")


def summarize(raw: Path, top: int) -> str:
    """Per thread: samples, then the lines with the most own samples and the functions with the
    most inclusive ones."""
    own: dict[str, Counter] = defaultdict(Counter)
    inclusive: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        thread = next((f.split(": ", 1)[-1] for f in frames if f.startswith("thread (")), "?")
        start = next((i + 1 for i, f in enumerate(frames) if f.startswith("thread (")), 0)
        calls = frames[start + 1:] if start else frames  # after the thread's name
        process = [f.split(":", 1)[0] for f in frames[:start] if f.startswith("process ")]
        key = f"{process[-1] if process else ''} {thread}".strip()  # a child's frames follow its parent's
        totals[key] += int(count)
        if calls:
            own[key][calls[-1]] += int(count)
            for function in {re.sub(r":\d+\)$", ")", call) for call in calls}:
                inclusive[key][function] += int(count)
    lines = []
    for key, total in totals.most_common():
        if total < 20:
            continue
        lines.append(f"\n== {key}: {total} samples")
        for title, counter in (("own, by line", own[key]), ("inclusive, by function", inclusive[key])):
            lines.append(f"  -- {title}")
            for call, n in counter.most_common(top):
                lines.append(f"  {100 * n / total:5.1f} %  {call[:150]}")
    return "\n".join(lines)


@click.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--streams", default=1024, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--seconds", default=12.0, show_default=True, help="how long to sample")
@click.option("--rate", default=500, show_default=True, help="samples a second")
@click.option("--top", default=25, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("host-profile"))
def main(model, streams, rounds, seconds, rate, top, out) -> None:
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed")
    bench = subprocess.Popen([sys.executable, str(ROOT / "bench/asr_bench.py"), "--model", str(model),
                              "--modes", "graphs", "--streams", str(streams), "--repeats", str(rounds),
                              "--out", str(out)])
    try:
        pid = _server_pid(120)
        _wait_for(out / "server-graphs.log", "ready on", 900)
        time.sleep(3)  # the load generator's processes start and connect
        raw = out / "py-spy.txt"
        subprocess.run([spy, "record", "--pid", str(pid), "--subprocesses", "--threads", "--idle",
                        "--rate", str(rate), "--duration", str(int(seconds)), "--format", "raw",
                        "--output", str(raw)], check=True)
        bench.wait(timeout=600)
    finally:
        if bench.poll() is None:
            bench.terminate()
    summary = summarize(raw, top)
    (out / "py-spy-summary.txt").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
