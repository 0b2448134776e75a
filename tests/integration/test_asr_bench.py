"""The ASR benchmark against real servers (tiny talking model, CPU): several servers on one device
share each level's streams, a level repeats in rounds, and every stream's words, characters and
interims are counted. Its timings mean nothing here; that it measures the work a talking model does
does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.process import free_port

pytestmark = pytest.mark.slow
BENCH = Path(__file__).parents[2] / "bench" / "asr_bench.py"


def test_two_servers_share_the_streams_in_rounds_and_every_stream_talks(tiny_asr_model, tmp_path):
    run = subprocess.run([sys.executable, str(BENCH), "--model", str(tiny_asr_model), "--modes", "eager",
                          "--streams", "4", "--seconds", "3", "--procs", "2", "--instances", "2",
                          "--repeats", "2", "--port", str(free_port()), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "asr_bench.json").read_text())
    assert report["instances"] == 2
    (row,) = report["runs"]["eager"]["rows"]
    assert (row["streams"], row["servers"], row["errors"], row["realtime_streams"]) == (4, 2, 0, 4), row
    assert row["words_per_second"] > 0 and row["chars_per_second"] > row["words_per_second"], row
    assert row["mean_interims"] > 0, row
    assert [r["realtime_streams"] for r in row["rounds"]] == [4, 4], row
    # each server ran the finals of its own two streams in each of the two rounds
    for steps in row["steps"]:
        assert sum(kind["streams"] for name, kind in steps.items() if name.startswith("final")) == 4, steps
    assert (tmp_path / "server-eager-1.log").exists() and (tmp_path / "server-eager-2.log").exists()
    assert "| eager | 4 |" in (tmp_path / "asr_bench.md").read_text()
