"""From the options, this host and the lock file to the ordered list of install steps.

Each family of steps lives in its own module: system_steps, python_steps, llama_build (llama.cpp),
model_steps, config_steps, access (the API key), memory (the budget and its limits), unit_steps.
"""

from __future__ import annotations

from . import llama_build, memory
from .access import api_key_step
from .config_steps import configuration, render_config
from .host import Host
from .lock import Lock
from .model_steps import models_step, wanted_models
from .options import LLM_START_TIMEOUT, MODES, PROFILES, Options, python_version
from .python_steps import (
    application,
    cpu_test_application,
    new_venv,
    source_digest,
    stack,
    triton_ptxas,
    vllm,
)
from .steps import Step
from .system_steps import service_user, system_packages
from .unit_steps import selected_units, units

__all__ = ["LLM_START_TIMEOUT", "MODES", "PROFILES", "Options", "build_plan", "models_step", "python_version",
           "render_config", "selected_units", "source_digest", "wanted_models"]


def llama_cpp(options: Options, host: Host, lock: Lock) -> Step:
    gpu = host.gpu if options.variant == "gpu" else None
    return llama_build.step(lock, options.prefix, gpu, host.machine, host.cores, sdist=options.llama_sdist)


def build_plan(options: Options, host: Host, lock: Lock) -> list[Step]:
    plan_budget = memory.for_host(options, host)
    options = memory.with_derived_settings(options, plan_budget)
    if options.profile == "cpu-test":
        steps = [service_user(options), cpu_test_application(options)]
    else:
        steps = [system_packages(options, lock), service_user(options)]
        # llama.cpp first: it needs only the system packages, so a rebuilt venv does not rebuild it.
        if options.llm and options.mode != "vllm" and not options.llama_server:
            steps.append(llama_cpp(options, host, lock))
        if options.needs_stack:
            steps += [new_venv("venv", "the servers", options.venv_dir, python_version(options, lock)),
                      *stack(options, host, lock)]
        if options.llm and options.mode == "vllm":
            steps += [*vllm(options, host, lock), triton_ptxas(options)]
        if options.needs_stack:
            steps.append(application(options))
    steps += [models_step(options, lock), configuration(options, lock),
              api_key_step(options.api_key, options.config_path.parent / "api-key", options.units_dir),
              memory.memory_step(options, plan_budget), units(options)]
    return steps
