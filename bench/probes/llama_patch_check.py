"""Check a llama-server binary for the two hazards the installer's patch addresses (tiny model).

1. A prompt already in the slot's cache, sent again with ``n_predict: 0`` (how the bots prefill):
   patched, it completes at once with no prompt token evaluated (``timings.prompt_n == 0``); as
   upstream, one token is evaluated again (on hybrid models that re-evaluation clears the cache).
2. A streamed request dropped after its first event and the slot reused at once, many times: the
   server must still answer ``/health``.

    python bench/probes/llama_patch_check.py /path/to/llama-server [ROUNDS [llama|mamba]]

With ``mamba`` (a recurrent model, like the hybrid Nemotron-H's Mamba layers) upstream cannot drop
the one token it re-evaluates, clears the slot and processes the whole prompt again.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from helpers.gguf_model import write  # noqa: E402

PORT = 18311
PROMPT = "hello world the voice agent and the world " * 4


def request(body: dict) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    connection.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    return json.loads(connection.getresponse().read())


def healthy() -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False


def dropped_stream() -> None:
    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    body = {"prompt": PROMPT, "n_predict": 64, "stream": True, "id_slot": 0, "cache_prompt": True}
    connection.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.readline()  # the first event, then hang up mid-generation
    connection.sock.close()


def main(binary: str, rounds: int = 50, arch: str = "llama") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = write(Path(tmp) / "tiny.gguf", arch=arch)
        server = subprocess.Popen([binary, "-m", str(model), "--port", str(PORT), "--parallel", "1",
                                   "-c", "512", "--cache-ram", "0"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not healthy():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("llama-server did not become healthy")
                time.sleep(0.2)
            prefill = {"prompt": PROMPT, "n_predict": 0, "cache_prompt": True, "id_slot": 0}
            first = request(prefill)
            started = time.perf_counter()
            again = request(prefill)
            again_ms = (time.perf_counter() - started) * 1000
            for _ in range(rounds):
                dropped_stream()
                request({"prompt": PROMPT + "again", "n_predict": 4, "id_slot": 0, "cache_prompt": True})
            print(json.dumps({
                "binary": binary,
                "model": arch,
                "prefill_prompt_n": first["timings"]["prompt_n"],
                "cached_again_prompt_n": again["timings"]["prompt_n"],
                "cached_again_tokens_predicted": again.get("tokens_predicted"),
                "cached_again_content": again.get("content"),
                "cached_again_ms": round(again_ms, 1),
                "dropped_stream_rounds": rounds,
                "alive_after": healthy() and server.poll() is None,
            }))
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(arguments[0], int(arguments[1]) if len(arguments) > 1 else 50, *arguments[2:])
