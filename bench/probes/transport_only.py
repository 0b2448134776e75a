"""Probe: does the websockets transport answer /health after importing X? (argv: modules to import)"""
import asyncio
import importlib
import sys
import urllib.request

sys.path.insert(0, "servers")
for name in sys.argv[1:]:
    importlib.import_module(name)
    if name == "torch":
        import torch
        if torch.cuda.is_available():
            torch.zeros(1, device="cuda")
from nemotron_asr.transport import Transport  # noqa: E402
from nemotron_common.health import Health, State  # noqa: E402

print("split:", bytearray(b"GET /health HTTP/1.1").split(b" ", 2))


async def main():
    health = Health("asr")
    health.state = State.HEALTHY
    transport = Transport(health, "127.0.0.1", 0, 4, 1000)
    await transport.start()

    def get():
        try:
            response = urllib.request.urlopen(f"http://127.0.0.1:{transport.port}/health", timeout=3)
            return response.status
        except Exception as exc:  # noqa: BLE001
            return repr(exc)

    print(sys.argv[1:], "->", await asyncio.to_thread(get))

asyncio.run(main())
