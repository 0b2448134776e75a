"""Does llama-server's decoding speed depend on which slots the streams use (hybrid Mamba models)?

Starts llama-server on a GGUF with 8 slots, once with a KV buffer per slot and once with one unified
buffer (``--kv-unified``), and decodes 4 streams of 300 tokens on consecutive slots (0-3) and on
scattered ones (0, 2, 4, 6). Prints total tokens per second for each, two rounds.

    python bench/probes/llama_slot_spread.py LLAMA_SERVER MODEL.gguf
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving import stop, wait_ready  # noqa: E402 - bench/ is not a package

PORT = 8765
TOKENS = 300


async def decode(session: aiohttp.ClientSession, slot: int, text: str) -> None:
    body = {"prompt": text, "stream": True, "n_predict": TOKENS, "id_slot": slot, "ignore_eos": True}
    async with session.post(f"http://127.0.0.1:{PORT}/completion", json=body) as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: ") and json.loads(line[6:]).get("stop"):
                return


async def rounds(slots: tuple[int, ...]) -> list[int]:
    async with aiohttp.ClientSession() as session:
        speeds = []
        for index in range(2):
            started = time.perf_counter()
            await asyncio.gather(*[decode(session, slot, f"stream {slot} round {index}") for slot in slots])
            speeds.append(round(len(slots) * TOKENS / (time.perf_counter() - started)))
        return speeds


def main(server: str, model: str) -> None:
    for unified in (False, True):
        for slots in ((0, 1, 2, 3), (0, 2, 4, 6)):
            argv = [server, "--model", model, "--port", str(PORT), "--parallel", "8", "--ctx-size", "16384",
                    "--cache-ram", "0"] + (["--kv-unified"] if unified else [])
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_ready(PORT, process, timeout=60)
                speeds = asyncio.run(rounds(slots))
            finally:
                stop(process)
            print(json.dumps({"kv_unified": unified, "slots": slots, "tokens_per_s": speeds}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
