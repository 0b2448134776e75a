"""The batched streaming engine against NeMo's offline transcription (real NeMo, tiny model)."""

import threading
import time

import pytest
import torch
from helpers.asr_client import pcm_as_float, to_pcm
from nemotron_asr.engine import Engine
from nemotron_asr.loading import warm_up
from nemotron_asr.model import StreamingModel

from random_models.asr import speechlike_audio

pytestmark = pytest.mark.slow


def stream_through(engine, pcms, frame_bytes=640):
    """Feed several utterances at once in 20 ms frames, interleaved; return each stream's results."""
    results = {i: [] for i in range(len(pcms))}
    finals = threading.Semaphore(0)
    ids = []
    for index in range(len(pcms)):
        def deliver(result, index=index):
            results[index].append(result)
            if result.kind == "final":
                finals.release()
        ids.append(engine.open(deliver))
    longest = max(len(p) for p in pcms)
    for offset in range(0, longest, frame_bytes):
        for stream, pcm in zip(ids, pcms, strict=True):
            if offset < len(pcm):
                engine.feed(stream, pcm[offset:offset + frame_bytes])
    for stream in ids:
        engine.finalize(stream)
    for _ in pcms:
        assert finals.acquire(timeout=120)
    for stream in ids:
        engine.close(stream)
    return results


def streamed_and_offline(model, engine):
    """Four utterances streamed at once through the started ``engine``, and NeMo's offline
    transcription of each: ([finals of each stream], [offline text of each])."""
    try:
        # lengths chosen to end mid-chunk, exactly on a chunk, and before the first chunk is complete
        seconds = [2.37, 1.0 + model.chunk_ms / 1000, 0.05, 3.1]
        pcms = [to_pcm(speechlike_audio(s, seed=i)) for i, s in enumerate(seconds)]
        results = stream_through(engine, pcms)
    finally:
        engine.stop()
    finals = [[r.text for r in results[index] if r.kind == "final"] for index in range(len(pcms))]
    offline = [model.transcribe_offline(pcm_as_float(pcm)) for pcm in pcms]
    assert sum(bool(text) for text in offline) >= 3, offline  # the random model really emits text
    return finals, offline


@pytest.mark.parametrize("look_ahead", [False, True], ids=["planned-after-each-step", "look-ahead"])
@pytest.mark.parametrize("right_context", [1, 6, 13])
def test_streamed_finals_equal_offline_transcription(tiny_asr_model, right_context, look_ahead):
    model = StreamingModel(tiny_asr_model, right_context, max_streams=4)
    model.capture()
    engine = Engine(model, max_batch=4, look_ahead=look_ahead)
    engine.start()
    finals, offline = streamed_and_offline(model, engine)
    assert all(len(text.split()) < 200 for text in offline)
    assert finals == [[text] for text in offline]
    # streams really shared batched steps
    assert engine.stats.summary()["steady"]["mean_streams"] > 1.5
    assert not engine._finalizing  # every hard reset was served and forgotten


def test_the_decoders_preallocated_state_is_sized_for_a_chunk_and_decodes_as_offline(tiny_asr_model):
    """On a GPU NeMo's greedy decoder runs on a preallocated state replayed by CUDA graphs, sized by
    default for 375 encoder frames a row; NeMo's "no_graphs" mode runs that same stateful code on the
    CPU, which NeMo's own entry point keeps for CUDA, so the test routes to it."""
    model = StreamingModel(tiny_asr_model, 1, max_streams=4)
    computer = model.decoder.computer
    computer.force_cuda_graphs_mode("no_graphs")
    computer.torch_impl = computer.cuda_graphs_impl
    model.capture()
    engine = Engine(model, max_batch=4)
    engine.start()
    streamed = []
    engine.model.decoder.step = _recording(engine.model.decoder.step, lambda: streamed.append(
        computer.state.encoder_output_projected.shape[1]))
    finals, offline = streamed_and_offline(model, engine)
    # every streaming step decoded on a state sized for a chunk's frames, not 30 s of them
    assert streamed and set(streamed) == {model.pool.room} and streamed[0] < 375
    assert finals == [[text] for text in offline]


@torch.inference_mode()  # as on the engine thread
def test_resetting_streams_decoder_state_equals_nemos_reset_by_mask(tiny_asr_model):
    model = StreamingModel(tiny_asr_model, 1, max_streams=6)
    pool = model.decoder
    generator = torch.Generator().manual_seed(0)

    def scrambled(tensor):
        if tensor.dtype.is_floating_point:
            return torch.randn(tensor.shape, generator=generator).to(tensor.dtype)
        return torch.randint(0, 50, tensor.shape, generator=generator).to(tensor.dtype)

    state = pool.state  # as after some decoding: every slot's state differs from a fresh one
    tensors = (*state.predictor_states, state.predictor_outputs, state.labels, state.decoded_lengths)
    for tensor in tensors:
        tensor.copy_(scrambled(tensor))
    expected = type(state)(predictor_states=tuple(t.clone() for t in state.predictor_states),
                           predictor_outputs=state.predictor_outputs.clone(), labels=state.labels.clone(),
                           decoded_lengths=state.decoded_lengths.clone(),
                           fusion_states_list=[f.clone() for f in state.fusion_states_list], time_jumps=None)
    pool.computer.reset_state_by_mask(expected, torch.tensor([False, True, False, False, True, False]))
    pool.reset([1, 4])
    nemos = (*expected.predictor_states, expected.predictor_outputs, expected.labels,
             expected.decoded_lengths)
    for ours, theirs in zip(tensors, nemos, strict=True):
        assert torch.equal(ours, theirs), (ours - theirs).abs().max()
    assert not torch.equal(state.labels[[0, 2]], torch.full((2,), pool.computer._SOS))  # the others kept


def _recording(function, after):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        after()
        return result
    return wrapped


def test_interims_are_cumulative_and_only_on_change(tiny_asr_model):
    model = StreamingModel(tiny_asr_model, 1, max_streams=1)
    model.capture()
    engine = Engine(model, max_batch=1)
    engine.start()
    try:
        results = stream_through(engine, [to_pcm(speechlike_audio(3.0, seed=3))])[0]
    finally:
        engine.stop()
    interims = [r.text for r in results if r.kind == "interim"]
    assert interims, "expected interim transcripts for 3 s of audio"
    assert all(a != b for a, b in zip(interims, interims[1:], strict=False))
    pairs = zip(interims, interims[1:], strict=False)
    assert all(b.startswith(a.rstrip()) or len(b) >= len(a) for a, b in pairs)
    assert results[-1].kind == "final" and results[-1].text.startswith(interims[-1][:1])


def test_chunk_cost_does_not_grow_with_utterance_length(tiny_asr_model):
    """Only the audio the next chunk needs is kept: featurisation reads a bounded window."""
    model = StreamingModel(tiny_asr_model, 1, max_streams=1)
    model.capture()
    engine = Engine(model, max_batch=1)
    kept = []
    engine._drop_used_audio_original = engine._drop_used_audio

    def spy(stream):
        engine._drop_used_audio_original(stream)
        kept.append(len(stream.pcm) // 2)
    engine._drop_used_audio = spy
    engine.start()
    try:
        stream_through(engine, [to_pcm(speechlike_audio(20.0, seed=5))])
    finally:
        engine.stop()
    assert len(kept) > 100
    assert max(kept) <= max(kept[:10]) + 2 * 2560  # 20 s of audio, the window stays one chunk wide


def test_a_hard_reset_during_a_step_is_launched_next_and_a_close_waits_for_the_step(tiny_asr_model):
    model = StreamingModel(tiny_asr_model, 1, max_streams=2)
    model.capture()
    engine = Engine(model, max_batch=2, look_ahead=True)  # not started: the test drives its calls
    launch, deliver = engine._launch, engine._deliver
    open_during_step, order = [], []

    def launch_then_commands(batch):
        order.append(("launch", batch.kind))
        running = launch(batch)
        if len(order) == 1:
            engine.finalize(short)  # both arrive while the first step runs
            engine.close(long)
        return running

    def deliver_and_look(batch, emitted):
        order.append(("deliver", batch.kind))
        open_during_step.append(long in engine._streams)
        deliver(batch, emitted)

    engine._launch, engine._deliver = launch_then_commands, deliver_and_look
    with torch.inference_mode():  # as on the engine thread
        long, short = engine.open(lambda result: None), engine.open(lambda result: None)
        engine.feed(long, to_pcm(speechlike_audio(1.0, seed=0)))
        engine.feed(short, to_pcm(speechlike_audio(0.05, seed=1)))  # less than a first chunk
        running = engine._tick(None)  # runs long's first step
    assert open_during_step == [True]  # its close waited for the step that held its cache slot
    assert long not in engine._streams and len(model.pool.free) == 1
    # the final was prepared during the step and launched before the step's results were made
    assert order == [("launch", "first"), ("launch", "final_first"), ("deliver", "first")]
    assert running.batch.kind == "final_first" and [step.stream.id for step in running.batch.steps] == [short]


def test_a_final_goes_before_other_streams_ready_steps(tiny_asr_model):
    model = StreamingModel(tiny_asr_model, 1, max_streams=2)
    model.capture()
    engine = Engine(model, max_batch=2)  # not started: the test drives the engine thread's calls
    with torch.inference_mode():  # as on the engine thread
        long, short = engine.open(lambda result: None), engine.open(lambda result: None)
        engine.feed(long, to_pcm(speechlike_audio(1.0, seed=0)))
        engine.feed(short, to_pcm(speechlike_audio(0.05, seed=1)))
        engine.finalize(short)
        engine._take_commands(block=False)
        final = engine._prepare_next()
        first = engine._prepare_next()  # the final's stream is held by the batch before
    assert (final.kind, first.kind) == ("final_first", "first")  # the final runs before the other step
    assert [step.stream.id for step in final.steps] == [short]


def test_finals_arriving_after_a_final_batch_was_prepared_join_it(tiny_asr_model):
    model = StreamingModel(tiny_asr_model, 1, max_streams=3)
    model.capture()
    engine = Engine(model, max_batch=3)  # not started: the test drives the engine thread's calls
    launched, texts = [], {}
    launch = engine._launch

    def record(batch):
        launched.append((batch.kind, [step.stream.id for step in batch.steps]))
        return launch(batch)

    engine._launch = record
    pcms = [to_pcm(speechlike_audio(0.05 + 0.02 * i, seed=i)) for i in range(3)]  # each short of a chunk
    with torch.inference_mode():  # as on the engine thread
        ids = [engine.open(lambda result, i=i: texts.setdefault(i, result.text) if result.kind == "final"
                           else None) for i in range(3)]
        for stream, pcm in zip(ids, pcms, strict=True):
            engine.feed(stream, pcm)
        engine.finalize(ids[0])
        engine._take_commands(block=False)
        prepared = engine._prepare_next()  # as while another step runs
        engine.finalize(ids[1])  # these two come in after it was prepared
        engine.finalize(ids[2])
        engine._take_commands(block=False)
        running = engine._launch(engine._latest(prepared))
        assert engine._tick(running) is None
    assert launched == [("final_first", ids)]  # one step for the three, not two
    assert [texts[i] for i in range(3)] == [model.transcribe_offline(pcm_as_float(pcm)) for pcm in pcms]


def test_the_warmup_runs_every_step_kind_as_one_full_batch_then_for_one_stream(tiny_asr_model):
    model = StreamingModel(tiny_asr_model, 1, max_streams=6)
    model.capture()
    engine = Engine(model, max_batch=6)
    feed = engine.feed

    def slow_feed(stream_id, pcm):  # as 512 streams' worth of queuing takes a while
        time.sleep(0.05)
        feed(stream_id, pcm)

    engine.feed = slow_feed
    try:
        warm_up(engine, 6)
    finally:
        engine.stop()
    steps = engine.stats.summary()
    # 6 streams in one batch of every kind, then a lone stream (the first user's batch size)
    assert {kind: (s["steps"], s["streams"]) for kind, s in steps.items()} == {
        "first": (2, 6 + 1), "steady": (4, 12 + 2), "final": (2, 6 + 1)}
    assert engine.active_streams == 0  # closed and idle, so nothing after it overlaps a step


def test_a_client_that_does_not_read_keeps_its_finals_and_a_bounded_queue(tiny_asr_model):
    """Interims repeat the utterance so far: past MAX_UNSENT unread messages they are dropped,
    never a final transcript."""
    import asyncio
    import json

    from nemotron_asr.interface import Result
    from nemotron_asr.session import MAX_UNSENT, Session

    engine = Engine(StreamingModel(tiny_asr_model, 1, max_streams=1), max_batch=1)  # not started

    async def scenario():
        session = Session(engine, 64000, "test")
        for n in range(10 * MAX_UNSENT):
            session._deliver(Result("interim", f"word {n}"))
        session.reset_times.append(0.0)
        session.pending_finals = 1
        session._deliver(Result("final", "the whole utterance", 1000.0))
        return [json.loads(session.outbox.get_nowait()) for _ in range(session.outbox.qsize())]

    unsent = asyncio.run(scenario())
    assert len(unsent) == MAX_UNSENT + 1
    assert unsent[-1]["is_final"] is True and unsent[-1]["text"] == "the whole utterance"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_stream_says_the_same_alone_and_in_a_crowd(tiny_asr_model, dtype):
    """Batch invariance: 24 different clips streamed one at a time and all in one batch give the same
    finals, so no stream's state leaks into another's and the batch size changes nothing (in the
    served precision too; bench/probes/asr_batch_invariance.py asks the same on a GPU)."""
    pcms = [to_pcm(speechlike_audio(2.0, seed=100 + i)) for i in range(24)]

    def finals(streams: int, groups: list[list[bytes]]) -> list[str]:
        model = StreamingModel(tiny_asr_model, 1, dtype=dtype, max_streams=streams)
        model.capture()
        engine = Engine(model, max_batch=streams)
        engine.start()
        try:
            texts = []
            for group in groups:
                results = stream_through(engine, group)
                texts += [next(r.text for r in results[i] if r.kind == "final") for i in range(len(group))]
            return texts
        finally:
            engine.stop()

    alone = finals(1, [[pcm] for pcm in pcms])
    assert len(set(alone)) >= 8, alone  # the clips really differ
    assert finals(24, [pcms]) == alone
