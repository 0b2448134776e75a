"""How much of a conversation llama-server processes again at each turn (hybrid Mamba models).

A bot sends each turn's prompt as the conversation so far, the last reply as text. A Mamba layer's
state can only continue from exactly the tokens it has seen, so when the reply's text tokenizes
differently from the tokens the model generated, llama-server goes back to a context checkpoint
(``--ctx-checkpoints``) or to the start. A trained model's replies mostly tokenize back to what it
generated; a random-weight model's random tokens mostly do not, so the voice benchmark's later turns
may process more than a real conversation would. This runs a few turns on one slot twice, the reply
sent back as text (as the bots do) and as the generated token ids (a reply that tokenizes back to
itself), and prints the prompt tokens llama-server processed at each turn (``timings.prompt_n``),
then the checkpoints its log reports per slot (how many, and their size: the model's Mamba state).
Extra arguments go to llama-server (``--ctx-checkpoints 4``, as nemotron-llm runs it).

    python -m random_models.llm /tmp/nano-state.gguf --shape nano-state
    python bench/probes/llama_turns.py LLAMA_SERVER /tmp/nano-state.gguf [LLAMA-SERVER ARGS...]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving import stop, wait_ready  # noqa: E402 - bench/ is not a package

PORT = 8766
TURNS = 6
SYSTEM = ("<|im_start|>system\nYou are a helpful voice assistant. Answer in one or two short "
          "sentences.<|im_end|>\n")


def post(path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def one_prompt(pieces: list) -> str | list:
    """Text pieces and token ids as one prompt: a string, or llama-server's mixed list (a list of
    strings alone would be several prompts)."""
    if all(isinstance(piece, str) for piece in pieces):
        return "".join(pieces)
    return [item for piece in pieces for item in ([piece] if isinstance(piece, str) else piece)]


def conversation(slot: int, as_tokens: bool) -> list[dict]:
    """``TURNS`` turns on ``slot``, each prompt the conversation so far."""
    history: list = [SYSTEM]
    turns = []
    for turn in range(TURNS):
        user = f"<|im_start|>user\nHello, this is turn {turn}.<|im_end|>\n<|im_start|>assistant\n"
        prompt = [*history, user]
        body = {"prompt": one_prompt(prompt), "n_predict": 32, "id_slot": slot, "seed": turn,
                "cache_prompt": True, "temperature": 0.8, "return_tokens": True}
        out = post("/completion", body)
        again = post("/tokenize", {"content": out["content"]})["tokens"]
        turns.append({"turn": turn, "prompt_tokens": out["tokens_evaluated"],
                      "processed": out["timings"]["prompt_n"],
                      "reply_tokens_back_as_generated": again == out["tokens"]})
        history = [*prompt, out["tokens"] if as_tokens else out["content"], "<|im_end|>\n"]
    return turns


def checkpoints(log: str) -> dict:
    """Per slot: the most checkpoints held at once and their sizes in MiB, from the trace log."""
    held: dict[int, int] = {}
    sizes: set[float] = set()
    pattern = r"id +(\d+) .*created context checkpoint (\d+) of \d+ .*size = ([\d.]+) MiB"
    for slot, count, size in re.findall(pattern, log):
        held[int(slot)] = max(held.get(int(slot), 0), int(count))
        sizes.add(float(size))
    return {"held_per_slot": held, "size_mib": sorted(sizes)}


def main(llama_server: str, model: str, *extra: str) -> None:
    log_path = Path("/tmp/llama_turns.log")
    with log_path.open("w") as log:
        # -lv 5: the trace level, where llama-server reports each checkpoint it takes
        argv = [llama_server, "--model", model, "--port", str(PORT), "--ctx-size", "8192", "--parallel", "2",
                "--cache-ram", "0", "--kv-unified", "-lv", "5", *extra]
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(PORT, process, timeout=120)
        for slot, as_tokens in ((0, False), (1, True)):
            sent = "the generated token ids" if as_tokens else "text"
            turns = conversation(slot, as_tokens)
            print(json.dumps({"reply sent back as": sent, "turns": turns}), flush=True)
    finally:
        stop(process)
    print(json.dumps({"checkpoints": checkpoints(log_path.read_text(errors="replace"))}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
