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


def test_against_alternates_rounds_between_two_checkouts_servers(tiny_asr_model, tmp_path):
    """Another checkout's servers, here set up with two transport workers."""
    servers = Path(__file__).parents[2] / "servers"
    run = subprocess.run([sys.executable, str(BENCH), "--model", str(tiny_asr_model), "--modes", "eager",
                          "--streams", "2", "--seconds", "2", "--procs", "1", "--repeats", "2",
                          "--against", str(servers), "--against-flags", "--workers 2",
                          "--port", str(free_port()), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "asr_bench.json").read_text())
    assert set(report["runs"]) == {"eager", "eager against"}
    assert report["runs"]["eager against"]["servers"] == str(servers)
    assert report["runs"]["eager against"]["flags"] == ["--workers", "2"]
    assert report["runs"]["eager against"]["health"]["workers"] == 2
    assert "workers" not in report["runs"]["eager"]["health"]
    for run_report in report["runs"].values():
        (row,) = run_report["rows"]
        assert (row["errors"], [r["realtime_streams"] for r in row["rounds"]]) == (0, [2, 2]), row
        # this server ran only its own rounds' finals: two streams in each of two rounds
        assert sum(kind["streams"] for name, kind in row["steps"].items() if name.startswith("final")) == 4
    assert (tmp_path / "server-eager-against.log").exists()
    assert "| eager against | 2 |" in (tmp_path / "asr_bench.md").read_text()


def test_a_levels_rounds_alternate_between_the_sides(monkeypatch):
    sys.path.insert(0, str(BENCH.parent))
    import asr_load

    calls = []

    def fake_round(urls, streams, seconds, frame_bytes, procs, spread_ms):
        calls.append(urls[0])
        result = {"ttf_ms": 10.0 * len(calls), "late_ms": 0.0, "error": None, "interims": 1, "words": 1,
                  "chars": 4}
        return [result] * streams

    monkeypatch.setattr(asr_load, "_round", fake_round)
    rows = asr_load.run_alternating({"a": ["ws://a/"], "b": ["ws://b/"]}, 2, 1.0, 20, 1, 500.0, repeats=3)
    assert calls == ["ws://a/", "ws://b/"] * 3
    assert [r["ttf_p50_ms"] for r in rows["a"]["rounds"]] == [10.0, 30.0, 50.0]
    assert [r["ttf_p50_ms"] for r in rows["b"]["rounds"]] == [20.0, 40.0, 60.0]
