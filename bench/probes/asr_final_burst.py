"""How long the ASR service's transport takes to carry a burst of hard resets in and finals out.

At 1,024 streams every reset of a round lands within milliseconds and every final leaves in a few
engine steps, all through the service process's one event loop. This probe runs the real transport
and sessions with an engine that answers at once: N WebSocket clients (other processes) send their
hard resets together; once the last reset has reached the engine, a thread hands all N finals over
the way the engine's result thread does (``interface.hand_over``). Prints how long the resets took
to reach the engine, how long after the hand-over the server had written the last final, and when
the clients received theirs (on a small host the clients' own processes share its cores).

    python bench/probes/asr_final_burst.py --streams 1024
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "servers"))
sys.path.insert(0, str(ROOT / "bench"))

from asr_load import percentile  # noqa: E402 - bench/ is not a package
from nemotron_asr.interface import Result, StreamCommands, hand_over  # noqa: E402
from nemotron_common.occupancy import SessionCount  # noqa: E402


class AnsweringEngine(StreamCommands):
    """Takes commands like the engine; once ``expected`` hard resets are in, delivers every final."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.streams: dict[int, tuple] = {}
        self.finalized: list[float] = []
        self.handed_over = 0.0

    def open(self, deliver, loop=None) -> int:
        stream_id = len(self.streams) + 1
        self.streams[stream_id] = (deliver, loop)
        return stream_id

    def enqueue(self, action: str, stream_id: int, payload=None) -> None:
        if action == "finalize":
            self.finalized.append(time.time())
            if len(self.finalized) == self.expected:
                threading.Thread(target=self._answer).start()

    def _answer(self) -> None:
        self.handed_over = time.time()
        hand_over((deliver, loop, Result("final", "a final transcript of a few words", 5000.0))
                  for deliver, loop in self.streams.values())


async def _serve(streams: int, procs: int) -> dict:
    from nemotron_asr.transport import Transport
    from nemotron_common.health import Health, State

    written: list[float] = []  # when the server's writers had each final written to its socket
    write = Transport._write

    async def timed_write(socket, session) -> None:
        send = socket.send_str

        async def send_str(message: str) -> None:
            await send(message)
            if '"is_final": true' in message:
                written.append(time.time())

        socket.send_str = send_str
        await write(socket, session)

    Transport._write = staticmethod(timed_write)
    health = Health("asr")
    health.state = State.HEALTHY
    engine = AnsweringEngine(streams)
    transport = Transport(health, "127.0.0.1", 0, SessionCount(streams), 64000)
    transport.engine = engine
    await transport.start()
    start_at = time.time() + 2 + streams / 200  # every client connected by then
    clients = [await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(transport.port), "--streams", str(share),
        "--start-at", str(start_at), stdout=asyncio.subprocess.PIPE)
        for share in np.diff(np.linspace(0, streams, procs + 1).astype(int))]
    outputs = [json.loads((await client.communicate())[0]) for client in clients]
    await transport.close()
    sent = [t for output in outputs for t in output["reset_sent"]]
    received_ms = [(t - engine.handed_over) * 1000 for output in outputs for t in output["received"]]
    return {"streams": streams, "client_processes": procs,
            "resets_in_ms": round((max(engine.finalized) - min(sent)) * 1000, 1),
            "server_wrote_all_ms": round((max(written) - engine.handed_over) * 1000, 1),
            "finals_out_p50_ms": percentile(received_ms, 50),
            "finals_out_p95_ms": percentile(received_ms, 95),
            "finals_out_max_ms": percentile(received_ms, 100)}


async def _clients(port: int, streams: int, start_at: float) -> dict:
    import websockets

    sockets = [await websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) for _ in range(streams)]
    for socket in sockets:
        json.loads(await socket.recv())  # ready
    await asyncio.sleep(max(0.0, start_at - time.time()))
    reset = json.dumps({"type": "reset", "finalize": True})
    sent, received = [], []

    async def one(socket) -> None:
        sent.append(time.time())
        await socket.send(reset)
        while json.loads(await socket.recv()).get("type") != "transcript":
            pass
        received.append(time.time())

    await asyncio.gather(*(one(socket) for socket in sockets))
    for socket in sockets:
        await socket.close()
    return {"reset_sent": sent, "received": received}


@click.command()
@click.option("--streams", default=1024, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--procs", default=8, show_default=True, help="client processes sharing the streams")
@click.option("--client", "client_port", type=int, default=None, hidden=True)
@click.option("--start-at", type=float, default=0.0, hidden=True)
def main(streams: int, rounds: int, procs: int, client_port: int | None, start_at: float) -> None:
    if client_port is not None:
        print(json.dumps(asyncio.run(_clients(client_port, streams, start_at))))
        return
    from loguru import logger

    logger.remove()  # a line per connection would be most of the work measured
    logger.add(sys.stderr, level="WARNING")
    for _ in range(rounds):
        print(json.dumps(asyncio.run(_serve(streams, procs))), flush=True)


if __name__ == "__main__":
    main()
