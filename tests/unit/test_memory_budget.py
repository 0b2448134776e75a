"""The installer's memory budget: measured capacities, the Spark's defaults, vLLM's derived share,
the drop-ins, and a refusal (with the fix) for a stack that cannot fit."""

import dataclasses

import pytest
from click.testing import CliRunner
from nemotron_install import memory
from nemotron_install.cli import main
from nemotron_install.host import HOST_PROFILES
from nemotron_install.lock import load_lock
from nemotron_install.plan import Options, build_plan, render_config

LOCK = load_lock()
SPARK = HOST_PROFILES["spark"]


def test_interpolation_between_measured_capacities():
    assert memory.interpolate(memory.TTS_MIB, 16) == memory.TTS_MIB[16]
    tts = memory.TTS_MIB
    assert memory.interpolate(tts, 10) == pytest.approx((tts[4] + tts[16]) / 2)
    assert memory.interpolate(memory.ASR_MIB, 1) == memory.ASR_MIB[16]  # below: the smallest measured
    asr = memory.ASR_MIB
    assert memory.interpolate(asr, 768) == pytest.approx((asr[512] + asr[1024]) / 2)
    # above: extended along the last segment
    assert memory.interpolate(asr, 2048) == pytest.approx(asr[1024] + (asr[1024] - asr[512]) * 2)


def test_the_defaults_fit_a_spark_with_the_llm_in_every_mode():
    for mode in ("llamacpp-q8", "llamacpp-q4", "vllm"):
        budget = memory.for_host(Options(mode=mode), SPARK)
        assert budget.unified and budget.total_gib == pytest.approx(119.7)
        assert budget.fits, budget.describe()
        if mode != "vllm":  # vLLM is given all that is left, by design: only the margin stays free
            assert budget.need_gib + 0.5 < budget.total_gib  # not a rounding error away from the edge


def test_vllm_gets_what_asr_and_tts_leave_unless_the_user_chose():
    budget = memory.for_host(Options(mode="vllm"), SPARK)
    rest = budget.total_gib - budget.share("ASR") - budget.share("TTS") - budget.margin_gib
    assert budget.vllm_utilization == pytest.approx(rest / budget.total_gib, abs=0.01)
    assert budget.share("LLM") >= memory.LLM_WEIGHTS_GIB["vllm"]
    steps = build_plan(Options(mode="vllm"), SPARK, LOCK)
    config = next(s for s in steps if s.name == "configuration").inputs
    assert f"gpu_memory_utilization = {budget.vllm_utilization}" in str(config)
    chosen = Options(mode="vllm", extra_config={"llm": {"gpu_memory_utilization": 0.5}})
    kept = memory.with_derived_settings(chosen, budget)
    assert "gpu_memory_utilization = 0.5\n" in render_config(kept, LOCK)


def test_memory_drop_ins_follow_each_servers_share(tmp_path):
    options = Options(units_dir=tmp_path, extra_config={"tts": {"max_batch": 64}})
    step = next(s for s in build_plan(options, SPARK, LOCK) if s.name == "memory")
    step.action(lambda _line: None)
    tts = (tmp_path / "nemotron-tts.service.d/memory.conf").read_text()
    asr = (tmp_path / "nemotron-asr.service.d/memory.conf").read_text()
    assert "MemoryMax=19G" in tts and "MemoryMax=11G" in asr  # 10.1 + 8 and 3.0 + 8 GiB, rounded up
    # Without a GPU budget (here: a GPU whose memory is unknown) the drop-ins go.
    unknown = dataclasses.replace(SPARK, memory_gib=0.0)
    no_budget = next(s for s in build_plan(options, unknown, LOCK) if s.name == "memory")
    no_budget.action(lambda _line: None)
    assert not (tmp_path / "nemotron-tts.service.d/memory.conf").exists()


def test_a_stack_that_cannot_fit_is_refused_with_the_fix():
    result = CliRunner().invoke(main, ["--dry-run", "--for", "spark", "--set", "tts.max_batch=1024",
                                       "--set", "asr.max_sessions=512", "--set", "asr.max_batch=512"])
    assert "DOES NOT FIT" in result.output
    assert "preflight would stop a real run: the stack needs" in result.output
    assert "fix: lower the capacities" in result.output
    fits = CliRunner().invoke(main, ["--dry-run", "--for", "spark"])
    assert "fits" in fits.output and "would stop" not in fits.output


def test_llama_cpp_slots_count_their_mamba_state_and_its_checkpoints_on_unified_memory():
    """Each slot holds Nemotron-3-Nano's Mamba state on the GPU and up to llm.ctx_checkpoints copies
    of it in host memory: the same memory on a Spark, not the GPU's on a discrete card."""
    state_gib = memory.LLM_SLOT_STATE_MIB / 1024
    assert memory.LLM_SLOT_STATE_MIB == pytest.approx(23 * 2.0703, rel=1e-3)  # as llama-server reports

    def llm(unified: bool, **settings) -> float:
        options = Options(mode="llamacpp-q8", extra_config={"llm": settings})
        return memory.budget(options, 120.0, unified).share("LLM")

    one = llm(True)  # the defaults: one slot, 4 checkpoints
    assert llm(True, parallel=16) - one == pytest.approx(15 * 5 * state_gib)
    assert llm(True, parallel=16, ctx_checkpoints=32) - one == pytest.approx((16 * 33 - 5) * state_gib)
    assert llm(False, parallel=16) - llm(False) == pytest.approx(15 * state_gib)  # host RAM: not the GPU's
    assert "16 slots with 4 state checkpoints each" in memory.budget(
        Options(mode="llamacpp-q8", extra_config={"llm": {"parallel": 16}}), 120.0, True).describe()
    # llama.cpp's own default, 32 checkpoints for each of 16 slots, is 24 GiB of a Spark
    assert (16 * 33 - 5) * state_gib > 24


def test_asr_sessions_beyond_the_batch_add_their_encoder_caches():
    def asr_gib(sessions: int, batch: int) -> float:
        options = Options(extra_config={"asr": {"max_sessions": sessions, "max_batch": batch}})
        return memory.for_host(options, SPARK).share("ASR")

    assert asr_gib(256, 256) == pytest.approx(memory.ASR_MIB[256] / 1024)
    extra = asr_gib(512, 256) - asr_gib(256, 256)
    assert extra == pytest.approx(256 * memory.ASR_CACHE_MIB_PER_SESSION / 1024)
    assert asr_gib(512, 512) > asr_gib(512, 256)  # a larger batch also needs larger step buffers
