import asyncio, sys, urllib.request
sys.path.insert(0, "servers")
from nemotron_common.health import Health, State
from nemotron_asr.transport import Transport
async def main():
    h = Health("asr"); h.state = State.HEALTHY
    t = Transport(h, "127.0.0.1", 0, 4, 1000)
    await t.start()
    def get():
        try:
            r = urllib.request.urlopen(f"http://127.0.0.1:{t.port}/health", timeout=3); return r.status, r.read()
        except Exception as e: return repr(e)
    print(await asyncio.to_thread(get))
asyncio.run(main())
