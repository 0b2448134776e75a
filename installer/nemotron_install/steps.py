"""Named, idempotent, resumable install steps.

A step is a list of commands (or one Python action) plus the inputs that decide its result. After
it succeeds, a stamp records a hash of those inputs chained with the previous step's hash, so a
re-run skips every step whose inputs (and everything before it) are unchanged, and a failed run
resumes at the step that failed. Each step writes its own log file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        where = f"cd {shlex.quote(str(self.cwd))} && " if self.cwd else ""
        return where + (env + " " if env else "") + shlex.join(self.argv)


@dataclass
class Step:
    name: str
    summary: str
    commands: list[Command] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    # Python work instead of (or after) commands; receives a function that writes to the step's log.
    action: Callable[[Callable[[str], None]], None] | None = None
    action_text: str = ""  # what ``action`` does, for --dry-run
    # What the step leaves behind: its stamp counts only while these all exist (a deleted venv is
    # rebuilt). Not part of the hash.
    outputs: list[Path] = field(default_factory=list)


class StepFailed(RuntimeError):
    def __init__(self, step: Step, log: Path, reason: str) -> None:
        super().__init__(f"step {step.name} failed: {reason}")
        self.step, self.log, self.reason = step, log, reason


def chain_hash(previous: str, step: Step) -> str:
    payload = json.dumps(
        {
            "previous": previous,
            "name": step.name,
            "inputs": step.inputs,
            "commands": [c.shell() for c in step.commands],
            "action": step.action_text,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Runner:
    def __init__(self, stamps: Path, logs: Path, out=None, force: tuple[str, ...] = ()) -> None:
        self.stamps, self.logs = stamps, logs
        self.out = out or sys.stdout
        self.force = set(force)

    def _stamp(self, step: Step) -> Path:
        return self.stamps / f"{step.name}.json"

    def is_done(self, step: Step, digest: str) -> bool:
        try:
            stamped = json.loads(self._stamp(step).read_text()).get("hash") == digest
        except (OSError, ValueError):
            return False
        return stamped and all(path.exists() for path in step.outputs)

    def plan(self, steps: list[Step]) -> list[tuple[Step, str, bool]]:
        """Each step with its chained hash and whether it would be skipped."""
        planned, previous, rerun = [], "", False
        for step in steps:
            previous = chain_hash(previous, step)
            done = not rerun and step.name not in self.force and self.is_done(step, previous)
            rerun = rerun or not done
            planned.append((step, previous, done))
        return planned

    def dry_run(self, steps: list[Step]) -> None:
        for index, (step, _, done) in enumerate(self.plan(steps), 1):
            state = "done, skipped" if done else "runs"
            self._print(f"[{index}/{len(steps)}] {step.name}: {step.summary} ({state})")
            for command in step.commands:
                self._print(f"    $ {command.shell()}")
            if step.action_text:
                self._print(f"    * {step.action_text}")

    def run(self, steps: list[Step]) -> None:
        self.stamps.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        for index, (step, digest, done) in enumerate(self.plan(steps), 1):
            label = f"[{index}/{len(steps)}] {step.name}"
            if done:
                self._print(f"{label}: done already, skipped")
                continue
            self._run_step(step, label)
            self._stamp(step).write_text(
                json.dumps({"hash": digest, "finished": time.time(), "inputs": step.inputs}, default=str)
            )
        self._print(f"finished in {time.monotonic() - started:.0f} s")

    def _run_step(self, step: Step, label: str) -> None:
        log_path = self.logs / f"{step.name}.log"
        started = time.monotonic()
        with log_path.open("w") as log, _Ticker(self.out, f"{label}: {step.summary}", started):

            def write(text: str) -> None:
                log.write(text.rstrip("\n") + "\n")
                log.flush()

            for command in step.commands:
                write(f"$ {command.shell()}")
                try:
                    result = subprocess.run(
                        command.argv,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=command.cwd,
                        env={**os.environ, **command.env},
                    )
                except OSError as exc:
                    raise StepFailed(step, log_path, f"{command.argv[0]}: {exc.strerror}") from None
                if result.returncode != 0:
                    raise StepFailed(
                        step, log_path, f"`{shlex.join(command.argv)[:120]}` exited with {result.returncode}"
                    )
            if step.action is not None:
                try:
                    step.action(write)
                except (OSError, ValueError, subprocess.CalledProcessError) as exc:
                    write(f"error: {exc}")
                    raise StepFailed(step, log_path, str(exc)) from None
        self._print(f"{label}: {step.summary} ({time.monotonic() - started:.1f} s)")

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class _Ticker:
    """Shows the running step with its elapsed time, updated every second on a terminal."""

    def __init__(self, out, text: str, started: float) -> None:
        self.out, self.text, self.started = out, text, started
        self.tty = hasattr(out, "isatty") and out.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.out.write(f"\r{self.text} ... {time.monotonic() - self.started:.0f} s")
            self.out.flush()

    def __enter__(self):
        if self.tty:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.tty:
            self._thread.join()
            self.out.write("\r\033[K")
