"""The stack's memory budget: what ASR, TTS and the LLM need at their configured capacities, against
what the GPU has (on a DGX Spark: the 128 GB the CPU and GPU share).

Running out of unified memory does not fail one process cleanly: the whole box can freeze. So the
plan prints the budget, a real run refuses a configuration that cannot fit (with the fix), vLLM's
``--gpu-memory-utilization`` is derived from what ASR and TTS leave, and each model server gets a
``MemoryHigh=``/``MemoryMax=`` drop-in sized from its own share.

The ASR and TTS figures are GPU memory at READY measured per capacity on an H200 with random
weights of the real shapes (bench/results/memory-h200-run*.json), interpolated between the measured
capacities; the LLM's are the model files' sizes plus an estimate for context and compute buffers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .steps import Step

# GPU MiB at READY by capacity (ASR: max_sessions = max_batch; TTS: max_batch), H200, random weights,
# nvidia-smi per process tree, with the units' allocator settings (expandable segments) and TTS's
# default float16 decoder caches: bench/results/memory-h200-run11.json (ASR) and
# memory-h200-run10.json (TTS).
ASR_MIB = {16: 2780, 64: 3000, 256: 4060, 512: 5532, 1024: 8408}
# A session beyond max_batch adds only its encoder caches (the ASR load log at 1,024 sessions:
# 5204 MiB in tensors with them, 1216 with the weights alone, for 1,025 rows).
ASR_CACHE_MIB_PER_SESSION = (5204 - 1216) / 1025
TTS_MIB = {4: 3338, 16: 4920, 64: 10392}
# Nemotron-3-Nano-30B-A3B weights (GiB) by mode: Q8_0 about 33 GB and the BF16 checkpoint about
# 60 GB, as published; Q4_K_M scaled from Q8_0 by bits per weight (an estimate).
LLM_WEIGHTS_GIB = {"llamacpp-q8": 30.7, "llamacpp-q4": 18.2, "vllm": 55.9}
# Context and compute buffers per 16k tokens of context, an estimate: the model is mostly Mamba
# layers, whose state does not grow with the context; its few attention layers' KV cache does.
LLM_CONTEXT_GIB_PER_16K = 3.0
# Nemotron-3-Nano's Mamba state for one sequence, in float32 as llama.cpp keeps it: 23 Mamba-2
# layers, each an SSM state of 128 x 4096 and a convolution state of 3 x 6144 (2.07 MiB a layer,
# as llama-server reports its checkpoints: bench/results/llama-cpp-turns-cpu.md). llama-server
# holds one per slot on the GPU, and up to llm.ctx_checkpoints copies per slot in host memory,
# which on unified memory is the same memory.
LLM_SLOT_STATE_MIB = 23 * (128 * 4096 + 3 * 6144) * 4 / 2**20
# What unified memory must keep for the OS, page cache and the servers' own CPU memory.
UNIFIED_MARGIN_GIB = 16.0
DISCRETE_MARGIN_GIB = 2.0  # CUDA contexts and fragmentation on a GPU of its own
HOST_OVERHEAD_GIB = 8.0  # a model server's CPU memory (Python, torch, NeMo, staging buffers)


def interpolate(table: dict[int, int], capacity: int) -> float:
    """MiB at ``capacity``: linear between measured capacities, extended along the last segment."""
    points = sorted(table.items())
    if capacity <= points[0][0]:
        return float(points[0][1])
    for (c0, m0), (c1, m1) in zip(points, points[1:], strict=False):
        if capacity <= c1:
            return m0 + (m1 - m0) * (capacity - c0) / (c1 - c0)
    (c0, m0), (c1, m1) = points[-2], points[-1]
    return m1 + (m1 - m0) * (capacity - c1) / (c1 - c0)


def _setting(options, table: str, name: str):
    """The value of ``table.name`` this install writes: the user's ``--set``, else the default."""
    from .options import setting_schemas

    schema = setting_schemas()[table]
    if name in options.extra_config.get(table, {}):
        return options.extra_config[table][name]
    return next(f.default for f in dataclasses.fields(schema) if f.name == name)


@dataclass(frozen=True)
class Part:
    name: str
    what: str
    gib: float


@dataclass(frozen=True)
class Budget:
    total_gib: float
    unified: bool
    parts: tuple[Part, ...]
    margin_gib: float
    vllm_utilization: float | None = None  # derived for vLLM: its share of the GPU's memory

    @property
    def need_gib(self) -> float:
        return sum(part.gib for part in self.parts) + self.margin_gib

    @property
    def fits(self) -> bool:
        return self.need_gib <= self.total_gib

    def share(self, name: str) -> float:
        return next((part.gib for part in self.parts if part.name == name), 0.0)

    def describe(self) -> str:
        kind = "unified memory shared with the CPU" if self.unified else "GPU memory"
        parts = " + ".join(f"{p.name} {p.gib:.1f} ({p.what})" for p in self.parts)
        verdict = (f"fits, {self.total_gib - self.need_gib:.1f} GiB spare" if self.fits
                   else f"DOES NOT FIT by {self.need_gib - self.total_gib:.1f} GiB")
        line = (f"{self.total_gib:.0f} GiB of {kind}: {parts} + margin {self.margin_gib:.0f} "
                f"= {self.need_gib:.1f} GiB: {verdict}")
        if self.vllm_utilization is not None:
            line += f"; vLLM --gpu-memory-utilization {self.vllm_utilization:.2f}"
        return line

    def fix(self) -> str:
        return ("lower the capacities (--set asr.max_sessions=N --set asr.max_batch=N, "
                "--set tts.max_batch=N), choose --mode llamacpp-q4, a smaller --set llm.ctx_size, "
                "fewer --set llm.parallel slots or --set llm.ctx_checkpoints, or run fewer services here")


def budget(options, total_gib: float, unified: bool) -> Budget:
    parts = []
    if options.asr:
        sessions = int(_setting(options, "asr", "max_sessions"))
        batch = min(sessions, int(_setting(options, "asr", "max_batch")))
        mib = interpolate(ASR_MIB, batch) + (sessions - batch) * ASR_CACHE_MIB_PER_SESSION
        parts.append(Part("ASR", f"{sessions} sessions", mib / 1024))
    if options.tts:
        batch = int(_setting(options, "tts", "max_batch"))
        parts.append(Part("TTS", f"batch {batch}", interpolate(TTS_MIB, batch) / 1024))
    margin = UNIFIED_MARGIN_GIB if unified else DISCRETE_MARGIN_GIB
    utilization = None
    if options.llm:
        ctx = int(_setting(options, "llm", "ctx_size"))
        weights = LLM_WEIGHTS_GIB[options.mode]
        need = weights + LLM_CONTEXT_GIB_PER_16K * ctx / 16384
        what = f"{options.mode}, {ctx} tokens of context"
        if options.mode == "vllm":
            # vLLM claims its share up front and fills it with KV cache: give it all the rest.
            rest = total_gib - sum(part.gib for part in parts) - margin
            utilization = math.floor(max(0.0, min(rest, 0.9 * total_gib)) / total_gib * 100) / 100
            need = max(need, utilization * total_gib)
        else:
            slots = int(_setting(options, "llm", "parallel"))
            checkpoints = int(_setting(options, "llm", "ctx_checkpoints")) if unified else 0
            need += slots * (1 + checkpoints) * LLM_SLOT_STATE_MIB / 1024
            what += f", {slots} slot{'s' if slots != 1 else ''}"
            if checkpoints:
                what += f" with {checkpoints} state checkpoints each"
        parts.append(Part("LLM", what, need))
    return Budget(total_gib, unified, tuple(parts), margin, utilization)


def memory_drop_in(share_gib: float) -> str:
    """``MemoryHigh=``/``MemoryMax=`` for a model server whose GPU share is ``share_gib``: generous
    enough whether or not a driver charges unified-memory allocations to the service's cgroup, so a
    runaway process is throttled, then stopped, before the box runs out of memory."""
    limit = math.ceil(share_gib + HOST_OVERHEAD_GIB)
    return ("# Written by nemotron-install from the memory budget (nemotron-install --dry-run prints it).\n"
            "[Service]\n"
            f"MemoryHigh={math.ceil(limit * 0.9)}G\n"
            f"MemoryMax={limit}G\n")


def for_host(options, host) -> Budget | None:
    """The budget on a GPU host whose memory is known; None for the CPU profiles."""
    if options.profile != "gpu" or host.gpu is None:
        return None
    unified = not host.gpu.memory_mib  # nvidia-smi reports no memory of its own for a GB10
    total = host.gpu.memory_mib / 1024 if not unified else host.memory_gib
    return budget(options, total, unified) if total else None


def with_derived_settings(options, plan_budget: Budget | None):
    """``options`` with vLLM's memory share from the budget, unless the user set one."""
    llm = options.extra_config.get("llm", {})
    if plan_budget is None or plan_budget.vllm_utilization is None or "gpu_memory_utilization" in llm:
        return options
    extra = {**options.extra_config, "llm": {**llm, "gpu_memory_utilization": plan_budget.vllm_utilization}}
    return dataclasses.replace(options, extra_config=extra)


def memory_step(options, plan_budget: Budget | None) -> Step:
    """Drop-ins with ``MemoryHigh=``/``MemoryMax=`` for ASR and TTS from their shares of the budget;
    none (and old ones removed) where there is no budget."""
    dropins = {name: options.units_dir / f"nemotron-{name.lower()}.service.d/memory.conf"
               for name in ("ASR", "TTS")}
    texts = {name: memory_drop_in(plan_budget.share(name)) for name in dropins
             if plan_budget is not None and plan_budget.share(name)}

    def apply(log) -> None:
        for name, path in dropins.items():
            if name in texts:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(texts[name])
                log(f"wrote {path}")
            elif path.exists():
                path.unlink()
                log(f"removed {path}")

    if texts:
        action_text = "; ".join(f"write {dropins[name]}: " + ", ".join(texts[name].splitlines()[2:])
                                for name in texts)
        what = "memory limits for ASR and TTS from the budget"
    else:
        action_text = "remove the memory drop-ins if present (no GPU budget on this profile)"
        what = "no memory limits"
    return Step("memory", what, inputs={"dropins": texts}, action=apply, action_text=action_text,
                outputs=[dropins[name] for name in texts])

