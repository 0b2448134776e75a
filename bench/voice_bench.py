"""Voice to voice: from the end of a user's speech to the first audio of the reply, hop by hop.

Each simulated conversation does what the bots do, against running ASR, LLM and TTS servers:
streams speech in real time over the ASR WebSocket and hard-resets at its end; sends the final
transcript to the LLM's ``/completion`` (streamed, its own slot, cached prompt, read to its end);
streams the reply's first sentence to TTS over ``/ws/tts/stream`` as soon as it is complete, while
the LLM generates the rest. It measures end of speech -> final transcript ->
first LLM token -> first sentence -> first audio byte, and reports p50/p95 of each hop for each
number of concurrent conversations, and of each service's own share (ASR: end of speech to final;
LLM: final to first token; TTS: first sentence to first audio). ``--llm-load N`` keeps N more
streams generating in their own slots during every level, to measure how the LLM's decoding on the
same GPU slows ASR and TTS; ``--turns N`` gives each conversation N user turns, each prompt the
conversation so far, as a bot sends it (later turns then reuse the slot's cached prefix).
A conversation that hears no words, gets no token or no audio fails the
run: a silent model measures nothing.

    python bench/voice_bench.py --asr ws://127.0.0.1:8080/ --llm http://127.0.0.1:8000 \\
        --tts ws://127.0.0.1:8001/ws/tts/stream --conversations 1,4,16 --out bench-out/voice
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path

import aiohttp
import click
import numpy as np

if __package__ in (None, ""):
    ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(ROOT), str(ROOT / "servers")]  # random_models, nemotron_common
from nemotron_common import ports  # noqa: E402 - after the path the script needs

SYSTEM = ("<|im_start|>system\nYou are a helpful voice assistant. Answer in one or two short "
          "sentences.<|im_end|>\n")
SENTENCE_END = re.compile(r"[.!?](\s|$)")
FIRST_SENTENCE_TOKENS = 24  # a reply without punctuation is cut into a first "sentence" here
HOPS = ("final_ms", "first_token_ms", "first_sentence_ms", "first_audio_ms")
SHARES = ("asr_ms", "llm_ms", "tts_ms")


def _speech(seconds: float, seed: int) -> bytes:
    from random_models.asr import speechlike_audio

    return (speechlike_audio(seconds, seed) * 32767).astype("<i2").tobytes()


async def _transcribe(session: aiohttp.ClientSession, url: str, pcm: bytes,
                      headers: dict) -> tuple[str, float]:
    """Stream ``pcm`` in real time (20 ms frames); returns the final text and when the reset went."""
    async with session.ws_connect(url, headers=headers, max_msg_size=0) as ws:
        ready = await ws.receive_json(timeout=60)
        assert ready["type"] == "ready", ready
        frame = 640
        begin = time.perf_counter()
        for offset in range(0, len(pcm), frame):
            due = begin + offset / 32000
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await ws.send_bytes(pcm[offset:offset + frame])
        reset_at = time.perf_counter()
        await ws.send_json({"type": "reset", "finalize": True})
        while True:
            message = await ws.receive_json(timeout=60)
            if message.get("type") == "error":
                raise RuntimeError(f"ASR: {message['message']}")
            if message.get("finalize"):
                return message["text"], reset_at


async def _reply(session: aiohttp.ClientSession, url: str, prompt: str, slot: int, headers: dict,
                 marks: dict, first: asyncio.Future) -> str:
    """The bots' request: streamed ``/completion`` in the conversation's own slot, prompt cached,
    read to its end as a bot reads it. Marks the first token; hands the first sentence to ``first``
    as soon as it is complete, so that it is spoken while the rest of the reply is generated.
    Returns the whole reply."""
    body = {"prompt": prompt, "stream": True, "n_predict": 64, "id_slot": slot, "cache_prompt": True,
            "temperature": 0.7}
    reply, tokens = "", 0

    def hand_over() -> None:
        if not first.done():
            marks["first_sentence"] = time.perf_counter()
            cut = SENTENCE_END.search(reply)
            first.set_result((reply[:cut.end()] if cut else reply).strip() or "Okay.")

    try:
        async with session.post(url + "/completion", json=body, headers=headers) as response:
            response.raise_for_status()
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("content"):
                    marks.setdefault("first_token", time.perf_counter())
                    reply += event["content"]
                    tokens += 1
                    if SENTENCE_END.search(reply) or tokens >= FIRST_SENTENCE_TOKENS:
                        hand_over()
                if event.get("stop"):
                    break
        hand_over()
    except Exception as exc:
        if not first.done():
            first.set_exception(exc)
        raise
    return reply


async def _speak(session: aiohttp.ClientSession, url: str, sentence: str, headers: dict) -> float:
    """Send the first sentence to TTS; returns when its first audio byte arrived."""
    async with session.ws_connect(url, headers=headers, max_msg_size=0) as ws:
        await ws.send_json({"type": "init"})
        await ws.send_json({"type": "text", "text": sentence})
        while True:
            message = await ws.receive(timeout=60)
            if message.type == aiohttp.WSMsgType.BINARY:
                return time.perf_counter()
            if message.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"TTS closed the stream ({message.type})")
            data = json.loads(message.data)
            if data.get("type") == "error":
                raise RuntimeError(f"TTS: {data['message']}")


async def _turn(session: aiohttp.ClientSession, urls: dict, pcm: bytes, history: str, slot: int,
                headers: dict) -> tuple[dict, str]:
    """One user turn: speech, final, reply (its prompt the conversation so far), first audio.
    Returns the turn's measurements and the conversation with this turn added."""
    text, end_of_speech = await _transcribe(session, urls["asr"], pcm, headers)
    final_at = time.perf_counter()
    prompt = f"{history}<|im_start|>user\n{text or 'Hello.'}<|im_end|>\n<|im_start|>assistant\n"
    marks: dict = {}
    first: asyncio.Future = asyncio.get_running_loop().create_future()
    replying = asyncio.create_task(_reply(session, urls["llm"], prompt, slot, headers, marks, first))
    try:
        audio_at = await _speak(session, urls["tts"], await first, headers)
    finally:
        reply = await replying  # the rest of the reply, generated while the first sentence is spoken
    if not text.split():
        raise RuntimeError("the ASR model heard no words: a silent model measures nothing")
    if "first_token" not in marks:
        raise RuntimeError("the LLM sent no token")
    ms = lambda a, b=end_of_speech: round((a - b) * 1000, 1)  # noqa: E731 - one formula, seven uses
    row = {"final_ms": ms(final_at), "first_token_ms": ms(marks["first_token"]),
           "first_sentence_ms": ms(marks["first_sentence"]), "first_audio_ms": ms(audio_at),
           "asr_ms": ms(final_at), "llm_ms": ms(marks["first_token"], final_at),
           "tts_ms": ms(audio_at, marks["first_sentence"]),
           "words": len(text.split()), "sentence_chars": len(first.result())}
    return row, f"{prompt}{reply}<|im_end|>\n"


async def _conversation(urls: dict, index: int, slots: int, seconds: float, headers: dict,
                        turns: int = 1) -> list[dict]:
    """``turns`` user turns in the conversation's own LLM slot, each prompt extending the last."""
    rows, history = [], SYSTEM
    async with aiohttp.ClientSession() as session:
        for turn in range(1, turns + 1):
            pcm = _speech(seconds, seed=1000 + (index + turn - 1) % 4)  # the clips the ASR model talks on
            row, history = await _turn(session, urls, pcm, history, index % slots, headers)
            rows.append({**row, "turn": turn})
    return rows


def _percentiles(rows: list[dict], keys: tuple[str, ...]) -> dict:
    out = {}
    for key in keys:
        values = [row[key] for row in rows]
        out[key] = {"p50": round(float(np.percentile(values, 50)), 1),
                    "p95": round(float(np.percentile(values, 95)), 1)}
    return out


async def _generate(url: str, slot: int, headers: dict, counter: list) -> None:
    """Background decoding in its own slot until cancelled; counts the tokens it received."""
    body = {"prompt": SYSTEM + "<|im_start|>user\nTell me a long story.<|im_end|>\n<|im_start|>assistant\n",
            "stream": True, "n_predict": 512, "id_slot": slot, "cache_prompt": True, "ignore_eos": True}
    # llama-server closes a streamed response's connection: a new one for every request
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while True:
            async with session.post(url + "/completion", json=body, headers=headers) as response:
                response.raise_for_status()
                async for raw in response.content:
                    if raw.startswith(b"data: ") and b'"content"' in raw:
                        counter[0] += 1


async def _run(urls: dict, conversations: int, slots: int, seconds: float, headers: dict,
               llm_load: int, turns: int = 1) -> tuple[list[dict], float]:
    """One round of a level: its conversations' rows and the background decoding rate (tokens/s)."""
    counter = [0]
    load = [asyncio.create_task(_generate(urls["llm"], slots + j, headers, counter)) for j in range(llm_load)]
    await asyncio.sleep(1.0 if llm_load else 0)  # decoding under way before the first word is spoken
    started, before = time.perf_counter(), counter[0]
    try:
        conversation_rows = await asyncio.gather(*(_conversation(urls, i, slots, seconds, headers, turns)
                                                   for i in range(conversations)))
    finally:
        elapsed, generated = time.perf_counter() - started, counter[0] - before
        for task in load:
            task.cancel()
        failures = [r for r in await asyncio.gather(*load, return_exceptions=True)
                    if not isinstance(r, asyncio.CancelledError)]
    if failures:
        raise RuntimeError(f"a background LLM stream failed: {failures[0]!r}")
    if llm_load and not generated:
        raise RuntimeError("the background LLM streams generated nothing")
    return [row for rows in conversation_rows for row in rows], generated / elapsed


def summarize(conversations: int, llm_load: int, rows: list[dict], rates: list[float]) -> dict:
    later = [row for row in rows if row["turn"] > 1]  # prompts that extend a cached conversation
    return {"conversations": conversations, "llm_load": llm_load, "samples": len(rows),
            **_percentiles(rows, HOPS), "shares": _percentiles(rows, SHARES),
            "later_turns": _percentiles(later, HOPS) if later else None,
            "background_tokens_per_s": round(sum(rates) / len(rates), 1),
            "mean_words_heard": round(sum(r["words"] for r in rows) / len(rows), 1)}


async def sweep(urls: dict, levels: list[tuple[int, int]], slots: int, seconds: float, headers: dict,
                rounds: int, warmup: bool, turns: int = 1) -> list[dict]:
    """Every (conversations, llm_load) level once per round, rounds after each other so that a drift
    of the machine spreads over all levels; percentiles over all rounds' conversations."""
    if warmup:  # the first requests of each size pay one-time costs (kernels, graphs, caches)
        await _run(urls, max(n for n, _ in levels), slots, seconds, headers, max(load for _, load in levels))
    rows: dict = {level: [] for level in levels}
    rates: dict = {level: [] for level in levels}
    for _ in range(rounds):
        for level in levels:
            level_rows, rate = await _run(urls, level[0], slots, seconds, headers, level[1], turns)
            rows[level] += level_rows
            rates[level].append(rate)
    return [summarize(n, load, rows[(n, load)], rates[(n, load)]) for n, load in levels]


@click.command()
@click.option("--asr", "asr_url", default=f"ws://127.0.0.1:{ports.ASR}/", show_default=True)
@click.option("--llm", "llm_url", default=f"http://127.0.0.1:{ports.LLM}", show_default=True)
@click.option("--tts", "tts_url", default=f"ws://127.0.0.1:{ports.TTS}/ws/tts/stream", show_default=True)
@click.option("--conversations", default="1,4,16", show_default=True,
              help="concurrent conversations, level by level")
@click.option("--slots", default=1, show_default=True, help="the LLM's parallel slots (llm.parallel)")
@click.option("--seconds", default=3.0, show_default=True, help="speech per user turn")
@click.option("--llm-load", default="0", show_default=True,
              help="background LLM streams generating during each level (slots after the conversations'); "
                   "a list runs every level once per value")
@click.option("--rounds", default=1, show_default=True, help="times every level runs (percentiles over all)")
@click.option("--turns", default=1, show_default=True,
              help="user turns per conversation, each prompt extending the conversation so far")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="one unmeasured round at the largest level first")
@click.option("--api-key", default="", help="sent as Authorization: Bearer to every service")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
def main(asr_url, llm_url, tts_url, conversations, slots, seconds, llm_load, rounds, turns, warmup,
         api_key, out) -> None:
    """Voice-to-voice latency of running ASR, LLM and TTS servers, hop by hop."""
    urls = {"asr": asr_url, "llm": llm_url.rstrip("/"), "tts": tts_url}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    plan = [(int(n), int(load)) for load in llm_load.split(",") for n in conversations.split(",")]
    levels = asyncio.run(sweep(urls, plan, slots, seconds, headers, rounds, warmup, turns))
    lines = ["| conversations | LLM streams besides | final p50/p95 | first token | first sentence | "
             "first audio | ASR share | LLM share | TTS share | first token, turns 2+ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for level in levels:
        cells = [f"{level[h]['p50']} / {level[h]['p95']}" for h in HOPS]
        cells += [f"{level['shares'][s]['p50']} / {level['shares'][s]['p95']}" for s in SHARES]
        later = level["later_turns"]
        cells.append(f"{later['first_token_ms']['p50']} / {later['first_token_ms']['p95']}" if later else "-")
        lines.append(f"| {level['conversations']} | {level['llm_load']} | " + " | ".join(cells) + " |")
    click.echo("ms, p50 / p95; hops from the end of speech\n" + "\n".join(lines))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "voice_bench.json").write_text(json.dumps({"levels": levels, "urls": urls}, indent=1))
        (out / "voice_bench.md").write_text("\n".join(lines) + "\n")
    click.echo(json.dumps(levels))


if __name__ == "__main__":
    main()
