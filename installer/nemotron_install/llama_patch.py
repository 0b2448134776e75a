"""The llama.cpp server patch of the reference build, as anchored source edits.

Two llama-server hazards hit a voice agent (docs/protocol.md, LLM section):

- a streamed request closed mid-generation, its slot reused at once: when the slot's memory cannot
  be truncated (recurrent and hybrid models such as Nemotron-H cannot drop a suffix), the server
  calls a slot-clear that asserts the slot is idle, and it is not: ``GGML_ASSERT`` aborts the server;
- a prompt that is already fully cached (the bots prefill with ``n_predict: 0``, then ask again with
  the same prompt): the server forces one token to be evaluated again, which on a hybrid model means
  dropping a suffix, which fails, which clears the whole cache and reprocesses the prompt every time.

The edits: clear the slot's sequence memory directly where the truncation failed; skip the forced
re-evaluation when nothing is to be predicted; and complete such a request at once. Each edit is
found by its anchor in ``tools/server/server-context.cpp``; a source where an anchor is missing
fails loudly (never a silent partial patch), and a source that already behaves (upstream's later
``prompt_clear(true)``) is left alone for that edit.

    python -m nemotron_install.llama_patch /opt/nemotron/src/llama.cpp
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

SERVER_SOURCE = "tools/server/server-context.cpp"
MARK = "nemotron-stack patch"


class PatchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Edit:
    name: str
    anchor: str  # regex; group "indent" is the anchor line's indentation
    replacement: str  # format string with {indent} and the anchor's named groups
    satisfied: str | None = None  # regex of a source that needs no edit


EDITS = (
    Edit(
        "clear-on-failed-truncate",
        r"(?P<head>SLT_WRN\(slot, \"failed to truncate tokens with position >= %d - clearing the memory\\n\","
        r" p0\);\s*\n)(?P<indent>[ \t]*)clear_slot\(slot\);",
        "{head}{indent}// {mark}: the slot is busy here, so not clear_slot() (it asserts idle)\n"
        "{indent}llama_memory_seq_rm(llama_get_memory(ctx), slot.id, -1, -1);\n"
        "{indent}slot.prompt.tokens.clear();",
        # Later sources clear with prompt_clear(true); later still, they ask up front whether the
        # memory can drop a suffix (common_context_can_seq_rm) and keep checkpoints instead, with
        # no clear of a busy slot left on this path.
        satisfied=r"clearing the memory\\n\", p0\);\s*\n\s*slot\.prompt_clear\(true\);"
        r"|common_context_can_seq_rm\(",
    ),
    Edit(
        "no-reevaluation-without-prediction",
        r"(?P<indent>[ \t]*)if \(n_past == slot\.task->n_tokens\(\) && n_past > 0\) \{",
        "{indent}// {mark}: nothing to predict, so no token has to be evaluated again\n"
        "{indent}if (n_past == slot.task->n_tokens() && n_past > 0 && slot.task->params.n_predict != 0) {{",
    ),
    Edit(
        "cached-prompt-completes-at-once",
        r"(?P<head>\[TAG_PROMPT_LOGITS\][^\[]*?slot\.(?:n_prompt_tokens_cache|stats\.n_prompt_cached)\s*=\s*n_past;"
        r"[^\[]*?slot\.prompt\.tokens\.keep_first\(n_past\);\n)",
        "{head}\n"
        "{indent}// {mark}: a fully cached prompt with nothing to predict is complete\n"
        "{indent}if (slot.task->params.n_predict == 0 && n_past == slot.task->n_tokens()) {{\n"
        "{indent}    SLT_INF(slot, \"%s\", \"prompt fully cached and n_predict = 0 - done\\n\");\n"
        "{indent}    send_final_response(slot);\n"
        "{indent}    slot.release();\n"
        "{indent}    {next_slot}\n"
        "{indent}}}\n",
    ),
)

FINGERPRINT = hashlib.sha256(repr(EDITS).encode()).hexdigest()[:16]


def patch_text(text: str) -> tuple[str, list[str]]:
    """The patched source and one line per edit saying what happened; PatchError if one cannot apply."""
    if MARK in text:
        return text, ["already patched"]
    report = []
    for edit in EDITS:
        match = re.search(edit.anchor, text)
        if match is None:
            if edit.satisfied and re.search(edit.satisfied, text):
                report.append(f"{edit.name}: not needed, this source already does it")
                continue
            raise PatchError(f"llama.cpp patch '{edit.name}' no longer applies: its anchor is not in "
                             f"{SERVER_SOURCE}; check the pinned commit in lock.toml")
        groups = match.groupdict()
        indent = groups.get("indent") or _indent_of_line_before(text, match.end())
        new = edit.replacement.format(mark=MARK, next_slot=_next_slot(text), **{**groups, "indent": indent})
        text = text[:match.start()] + new + text[match.end():]
        report.append(f"{edit.name}: applied")
    return text, report


def _next_slot(text: str) -> str:
    """How update_slots moves on to the next slot: a loop body continues, a lambda (later) returns."""
    return "return;" if "iterate(slots, [&](server_slot & slot)" in text else "continue;"


def _indent_of_line_before(text: str, end: int) -> str:
    line_start = text.rfind("\n", 0, end - 1) + 1
    line = text[line_start:end]
    return line[: len(line) - len(line.lstrip())]


def apply(source_dir: Path) -> list[str]:
    path = source_dir / SERVER_SOURCE
    if not path.is_file():
        raise PatchError(f"{path} not found: not a llama.cpp source tree with the split server")
    text, report = patch_text(path.read_text())
    path.write_text(text)
    return report


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m nemotron_install.llama_patch LLAMA_CPP_SOURCE_DIR")
    try:
        for line in apply(Path(sys.argv[1])):
            print(line)
    except PatchError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
