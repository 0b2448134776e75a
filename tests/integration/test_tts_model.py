"""The TTS model wrapper against NeMo itself: same codes as do_tts, exact seams, prompt cancel."""

import threading
import time

import pytest
import torch
from nemotron_tts.codec import WindowedCodec, receptive_field
from nemotron_tts.codec_states import CarriedStateCodec, unsupported
from nemotron_tts.engine import PRESETS
from nemotron_tts.model import SpeechModel, Utterance

pytestmark = pytest.mark.slow
TEXT = "Hello there, friend. How are you today?"
LONG_TEXT = " ".join(f"Sentence {i} talks about the weather and the voice agent at length." for i in range(4))


@pytest.fixture(scope="module")
def plain(tiny_tts_model):
    """No CFG and no KV cache: the settings NeMo's do_tts runs with."""
    return SpeechModel(tiny_tts_model, "cpu", use_cfg=False, kv_cache=False)


def generate(model, text, speaker=2, seed=0, language="en"):
    frames = []
    torch.manual_seed(seed)
    model.generate([Utterance(model.tokenize(text, language), speaker, frames.append)])
    return torch.cat(frames, dim=-1)


def test_codes_and_audio_are_nemo_do_tts(plain):
    codes = generate(plain, TEXT, seed=3)
    torch.manual_seed(3)
    audio, length = plain.model.do_tts(TEXT, language="en", use_cfg=False, speaker_index=2)
    assert codes.shape[-1] * plain.samples_per_frame == int(length[0])
    assert torch.equal(plain.decode(codes.unsqueeze(0))[0], audio[0, : int(length[0])])


@pytest.mark.parametrize("run_on", [" ".join(["word"] * 100), "x" * 600], ids=["100-words", "600-characters"])
def test_a_run_on_sentence_is_spoken_in_pieces_not_cut_at_the_frame_limit(plain, run_on):
    """NeMo splits a text only at sentence ends, so one sentence over its threshold (45 English
    words) or a long run without spaces reached the model whole, and speech stopped at the frame
    limit with the rest of the text unsaid."""
    from nemotron_tts.model import MAX_CHUNK_CHARS

    chunks = plain.tokenize(run_on, "en")
    assert len(chunks) == 3
    assert all(chunk[-1] == plain.model.eos_id and len(chunk) <= MAX_CHUNK_CHARS + 1 for chunk in chunks)
    limit = plain.model.inference_parameters.max_decoder_steps
    # every piece spoken (random weights never end a piece before the limit)
    assert generate(plain, run_on).shape[-1] > 2 * limit


def test_voice_reaches_the_model_and_languages_are_found(plain):
    by_voice = {tuple(generate(plain, TEXT, speaker=v).flatten().tolist()) for v in range(5)}
    assert len(by_voice) > 1
    assert set(plain.languages) >= {"en", "de", "es", "fr", "it"}


def test_kv_cache_and_cfg_leave_nemo_usable(tiny_tts_model, plain):
    fast = SpeechModel(tiny_tts_model, "cpu", use_cfg=True, kv_cache=True)
    assert generate(fast, TEXT).shape[-1] >= 4
    # NeMo's generate_speech never resets the decoder cache itself; a cache left on would break do_tts.
    torch.manual_seed(0)
    audio, length = fast.model.do_tts(TEXT, use_cfg=False, speaker_index=1)
    assert int(length[0]) > 0


def windowed(model):
    context = receptive_field(model.decode, model.model.num_audio_codebooks, model.model.codebook_size,
                              model.device)
    return WindowedCodec(model.decode, context, model.samples_per_frame)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("kind", ["carried", "windowed"])
def test_streamed_audio_equals_whole_decode_at_every_seam(plain, preset, kind):
    codec = plain.codec if kind == "carried" else windowed(plain)
    assert isinstance(plain.codec, CarriedStateCodec)  # the tiny codec is a causal HiFi-GAN, as NanoCodec
    codes = generate(plain, TEXT + " And a little more text to make it long.", seed=1)
    whole = plain.decode(codes.unsqueeze(0))[0]
    decoder, pieces = codec.stream(), []
    target = PRESETS[preset].first_frames
    for index in range(codes.shape[-1]):
        decoder.push(codes[:, index:index + 1])
        if decoder.ready() >= target:
            pieces += codec.decode([decoder.window()])
            target = PRESETS[preset].chunk_frames
    final = decoder.window(final=True)
    pieces += codec.decode([final]) if final else []
    assert len(pieces) > 2
    streamed = torch.cat(pieces)
    assert streamed.shape == whole.shape
    assert (streamed - whole).abs().max() < 1e-5


def stream_in_chunks(codec, codes, sizes, together):
    """Each utterance of ``codes`` cut into chunks of ``sizes[i]`` frames, decoded in one call per
    round (``together``) or one call per chunk; returns each utterance's audio."""
    decoders = [codec.stream() for _ in codes]
    pieces: list[list[torch.Tensor]] = [[] for _ in codes]
    for round_ in range(max(-(-c.shape[-1] // n) for c, n in zip(codes, sizes, strict=True))):
        active = []
        for i, (decoder, frames) in enumerate(zip(decoders, codes, strict=True)):
            chunk = frames[:, round_ * sizes[i]:(round_ + 1) * sizes[i]]
            if chunk.shape[-1]:
                decoder.push(chunk)
                active.append((i, decoder.window(final=True)))
        if together:
            audio = codec.decode([window for _, window in active])
        else:
            audio = [codec.decode([window])[0] for _, window in active]
        for (i, _), piece in zip(active, audio, strict=True):
            pieces[i].append(piece)
    for decoder in decoders:
        decoder.close()
    return [torch.cat(p) for p in pieces]


def test_carried_states_keep_streams_of_one_call_apart(plain):
    codes = [generate(plain, TEXT, speaker=i, seed=i)[:, :11 + i] for i in range(3)]
    sizes = [2, 3, 2]  # rounds where chunks of two lengths share a call
    together = stream_in_chunks(plain.codec, codes, sizes, together=True)
    alone = stream_in_chunks(plain.codec, codes, sizes, together=False)
    for frames, a, b in zip(codes, together, alone, strict=True):
        whole = plain.decode(frames.unsqueeze(0))[0]
        assert a.shape == whole.shape
        assert (a - whole).abs().max() < 1e-5
        assert (b - whole).abs().max() < 1e-5


def test_carried_state_slots_are_reused_and_grow(plain):
    codec = CarriedStateCodec(plain.model._codec_helper, plain.samples_per_frame, plain.device, slots=1)
    codes = [generate(plain, TEXT, speaker=i, seed=i)[:, :7] for i in range(3)]
    first = stream_in_chunks(codec, codes[:1], [3], together=True)[0]
    assert codec.states.capacity == 1
    # The closed stream's slot holds its last state; a new stream there must start from silence.
    for frames, audio in zip(codes, stream_in_chunks(codec, codes, [2, 2, 2], together=True), strict=True):
        assert (audio - plain.decode(frames.unsqueeze(0))[0]).abs().max() < 1e-5
    assert codec.states.capacity >= 3
    assert (first - plain.decode(codes[0].unsqueeze(0))[0]).abs().max() < 1e-5


def test_codecs_that_cannot_carry_states_are_named():
    from nemo.collections.tts.modules.audio_codec_modules import HiFiGANDecoder

    class Codec:
        audio_decoder = HiFiGANDecoder(input_dim=4, up_sample_rates=(2,), base_channels=4)

    assert "not a CausalHiFiGANDecoder" in unsupported(Codec())


def test_cancel_stops_generation_at_the_next_step(plain):
    seen = []
    utterance = Utterance(plain.tokenize(TEXT, "en"), 0, seen.append, cancelled=lambda: len(seen) >= 3)
    plain.generate([utterance])
    assert len(seen) == 3


def test_batch_keeps_each_utterance_apart(plain):
    texts = ["Short one.", TEXT, "Bonjour tout le monde."]
    alone = [generate(plain, t, speaker=i, seed=5, language="fr" if i == 2 else "en")
             for i, t in enumerate(texts)]
    got = [[] for _ in texts]
    utterances = [Utterance(plain.tokenize(t, "fr" if i == 2 else "en"), i, got[i].append)
                  for i, t in enumerate(texts)]
    plain.generate(utterances)
    for frames, single in zip(got, alone, strict=True):
        codes = torch.cat(frames, dim=-1)
        assert codes.shape[0] == single.shape[0] and codes.shape[-1] >= 1


@pytest.mark.parametrize("use_cfg", [False, True])
@pytest.mark.parametrize("forbid_eos", [False, True])
def test_static_local_sampler_draws_the_codes_nemo_draws(plain, use_cfg, forbid_eos):
    """The graph-capturable sampler is NeMo's sample_autoregressive: same seed, same codes."""
    from nemotron_tts.local_sampler import LocalSampler

    helper = plain.model._lt_helper
    sampler = LocalSampler(helper, graphs=False)
    rows = 6 if use_cfg else 3
    width = plain.model.cfg.decoder.d_model
    dec_output = torch.randn(rows, width, generator=torch.Generator().manual_seed(1))
    args = dict(temperature=0.7, topk=80, use_cfg=use_cfg, cfg_scale=2.5, forbid_audio_eos=forbid_eos)
    for seed in range(3):
        torch.manual_seed(seed)
        expected = helper.sample_autoregressive(dec_output, unfinished_items={}, finished_items={}, **args)
        torch.manual_seed(seed)
        got = sampler(dec_output, unfinished_items={}, finished_items={}, **args)
        assert torch.equal(got, expected)
    assert got.shape == (rows // 2 if use_cfg else rows, plain.model.num_audio_codebooks, 1)


def test_windows_decoded_together_equal_windows_decoded_alone(plain):
    codec = windowed(plain)
    codes = [generate(plain, TEXT, speaker=i, seed=i) for i in range(3)]
    decoders = [codec.stream() for _ in codes]
    for decoder, frames in zip(decoders, codes, strict=True):
        decoder.push(frames[:, :12])
        decoder.window()  # the first chunk, so the next windows carry left context
        decoder.push(frames[:, 12:15])
    windows = [decoder.window() for decoder in decoders]
    together = codec.decode(windows)
    for window, audio in zip(windows, together, strict=True):
        alone = codec.decode([window])[0]
        assert audio.shape == alone.shape == (3 * plain.samples_per_frame,)
        assert (audio - alone).abs().max() < 1e-5


def test_host_side_attention_prior_equals_nemos(plain):
    """prior.py's replacements return exactly what NeMo's per-item versions return: batches of 1 to 130
    items, CFG's extra rows, chunk offsets (a window may start before the scores do), texts too short
    for a window, attention sinks and stuck positions."""
    import copy

    from nemo.collections.tts.models import MagpieTTSModel
    from nemotron_tts import prior

    model = plain.model
    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        batch = 130 if trial % 10 == 9 else 1 + trial % 7
        rows, width = batch * (2 if trial % 2 else 1), 30
        scores = torch.rand(rows, width, generator=generator)
        scores[:, 7] = scores[:, 8] = 2.0 if trial % 4 == 0 else scores[:, 7]  # a tie: the first wins
        lens = torch.randint(1 if trial % 3 == 0 else 6, width + 1, (batch,), generator=generator)
        last = [[int(x) for x in torch.randint(0, 12, (batch,), generator=generator)]]
        offsets = torch.randint(0, 16, (batch,), generator=generator).tolist() if trial % 5 < 2 else []
        positions, counts = torch.randint(0, 20, (batch, 4), generator=generator), torch.randint(
            0, 14, (batch, 4), generator=generator)
        counters = [dict(zip(positions[i].tolist(), counts[i].tolist(), strict=True)) for i in range(batch)]
        args = (scores, last, lens, 5, copy.deepcopy(counters), batch, offsets)
        expected = MagpieTTSModel.get_most_attended_text_timestep(model, *args)
        got = prior.most_attended(model, *args[:4], copy.deepcopy(counters), batch, offsets)
        assert got == expected
        attended = [max(0, min(t, width - 1)) for t in expected[0]]
        state = ({}, {0: 3} if batch > 1 else {}, {batch - 1: 7} if trial % 3 == 0 else {})
        nemo_prior = MagpieTTSModel.construct_inference_prior(
            model, 0.1, scores, lens, attended, copy.deepcopy(counters), *copy.deepcopy(state), 5, batch)
        ours = prior.inference_prior(model, 0.1, scores, lens, attended, copy.deepcopy(counters),
                                     *copy.deepcopy(state), 5, batch)
        assert torch.equal(ours[0], nemo_prior[0]) and ours[1:] == nemo_prior[1:]


def test_batched_end_of_speech_check_equals_nemos(plain):
    """eos.py's check finds the ends NeMo's per-item check finds and leaves the same state, for
    every detection method, frame stacking of 1 and 2, and items already ended or ending a chunk."""
    import copy

    from nemo.collections.tts.models import MagpieTTSModel
    from nemo.collections.tts.modules.magpietts_modules import EOSDetectionMethod
    from nemotron_tts import eos

    model = plain.model
    stacking, eos_id = model.frame_stacking_factor, model.audio_eos_id
    generator = torch.Generator().manual_seed(0)
    try:
        for trial in range(60):
            method = list(EOSDetectionMethod)[trial % len(EOSDetectionMethod)]
            model.frame_stacking_factor = 1 + trial % 2
            batch, codebooks = 1 + trial % 7, 4
            shape = (batch, codebooks, model.frame_stacking_factor)
            codes, argmax = (torch.randint(0, 8, shape, generator=generator) for _ in range(2))
            for tensor in (codes, argmax):  # some end codes: in one codebook, in all, in the first only
                tensor[torch.rand(shape, generator=generator) < 0.3] = eos_id
                tensor[torch.rand(batch, generator=generator) < 0.2] = eos_id
            state = model.create_chunk_state(batch_size=batch)
            state.overall_idx = trial
            state.end_indices = {0: 3} if trial % 3 == 0 else {}
            chunk_end = {batch - 1: 2} if trial % 4 == 1 else {}
            finished = {item: trial % 5 for item in range(0, batch, 2)}
            end_of_text = [(item + trial) % 3 != 0 for item in range(batch)]
            step = trial % 9
            expected = [copy.deepcopy(state), dict(chunk_end), {}, dict(finished)]
            MagpieTTSModel._check_eos_and_update_state(model, expected[0], codes, argmax, expected[1],
                                                       expected[2], expected[3], end_of_text, method, step,
                                                       batch)
            got = [copy.deepcopy(state), dict(chunk_end), {}, dict(finished)]
            eos.check_eos_and_update_state(model, got[0], codes, argmax, got[1], got[2], got[3],
                                           end_of_text, method, step, batch)
            assert got == expected
            assert eos.end_frames(model, codes, argmax, method) == [
                model.detect_eos(codes[item], argmax[item], method) for item in range(batch)]
    finally:
        model.frame_stacking_factor = stacking


@pytest.mark.parametrize("forbid_eos", [False, True])
def test_static_code_sampler_draws_the_codes_nemo_draws(plain, forbid_eos):
    from nemo.collections.tts.models import MagpieTTSModel
    from nemotron_tts.code_sampler import CodeSampler

    model = plain.model
    sampler = CodeSampler(model, graphs=False)
    width = model.num_all_tokens_per_codebook * model.num_audio_codebooks
    logits = torch.randn(3, width, generator=torch.Generator().manual_seed(2)) * 4
    for temperature, topk in ((0.01, 1), (0.7, 80)):
        for seed in range(3):
            torch.manual_seed(seed)
            expected = MagpieTTSModel.sample_codes_from_logits(model, logits.clone(), temperature=temperature,
                                                               topk=topk, forbid_audio_eos=forbid_eos)
            torch.manual_seed(seed)
            got = sampler(logits.clone(), temperature=temperature, topk=topk, unfinished_items={},
                          finished_items={}, forbid_audio_eos=forbid_eos)
            assert torch.equal(got, expected)


@pytest.fixture(scope="module", params=[False, True], ids=["no-cfg", "cfg"])
def cached_pair(request, tiny_tts_model):
    """NeMo's own cached decoder, and the static decoder step, with the same settings."""
    return [SpeechModel(tiny_tts_model, "cpu", use_cfg=request.param, kv_cache=True, static_decoder=static)
            for static in (False, True)]


@pytest.mark.parametrize("prefill_rows", [None, 2], ids=["prompt-whole", "prompt-in-row-groups"])
def test_static_decoder_step_draws_nemos_codes(cached_pair, prefill_rows, monkeypatch):
    """Own decoder step (fixed-size caches) against NeMo's cached decoder: same seed, same codes,
    for a batch of voices and text lengths, and every step after the prompt really ran it; also
    with the prompt run through NeMo a few rows at a time (``prefill_rows``, which bounds its memory)."""
    nemo, static = cached_pair
    forward = type(static.model).forward
    prompt_rows = []

    def counted(model, *args, **kwargs):
        if model is static.model:  # only the static decoder's prompt calls NeMo's forward
            prompt_rows.append(len(args[0]))
        return forward(model, *args, **kwargs)

    monkeypatch.setattr(type(static.model), "forward", counted)
    if prefill_rows:
        monkeypatch.setattr(static.static, "prefill_rows", prefill_rows)
    texts = [TEXT, "A second voice says something else entirely.", "Short one."]
    steps = []
    step = static.static.step
    static.static.step = lambda *args: steps.append(args[0]) or step(*args)
    try:
        for seed in range(3):
            results = []
            for model in (nemo, static):
                frames = [[] for _ in texts]
                torch.manual_seed(seed)
                model.generate([Utterance(model.tokenize(t, "en"), i, frames[i].append)
                                for i, t in enumerate(texts)])
                results.append([torch.cat(f, dim=-1) for f in frames])
            for expected, got in zip(*results, strict=True):
                assert torch.equal(got, expected)
            longest = max(codes.shape[-1] for codes in results[1])
            assert len(steps) == longest - 1  # every frame but the prompt's
            steps.clear()
        rows = len(texts) * static.rows_per_utterance
        group = prefill_rows or rows
        assert prompt_rows == [min(group, rows - start) for start in range(0, rows, group)] * 3
    finally:
        del static.static.step


def test_static_decoder_grows_for_longer_text(cached_pair):
    nemo, static = cached_pair
    static.static._allocate(static.static.max_positions, 8)  # far shorter than the text's tokens
    text = "A much longer sentence than eight tokens, so the text buffers must grow first."
    expected, got = generate(nemo, text, seed=4), generate(static, text, seed=4)
    assert static.static.max_text >= len(static.tokenize(text, "en")[0])
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("narrow", "tolerance"), [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)],
                         ids=["float16", "bfloat16"])
def test_half_width_caches_hold_half_the_bytes_and_attend_as_float32_ones(cached_pair, narrow, tolerance):
    """``kv_cache_dtype = float16`` (or bfloat16): the caches take half the bytes, and attention over
    the same keys and values (rounded once, multiplied in that type) gives what float32 caches give,
    within that type's rounding."""
    from nemotron_tts.decoder_step import StaticDecoder

    _, static = cached_pair
    shape = (static.static.max_rows, static.static.max_positions, static.static.max_text)
    full, half = (StaticDecoder(static.model, *shape, graphs=False, cache_dtype=dtype)
                  for dtype in (None, narrow))
    caches = [[*d.self_k, *d.self_v, *d.cross_k, *d.cross_v] for d in (full, half)]
    assert sum(t.nbytes for t in caches[1]) * 2 == sum(t.nbytes for t in caches[0])
    torch.manual_seed(0)
    for wide_cache, narrow_cache in zip(*caches, strict=True):
        narrow_cache.copy_(wide_cache.normal_())
    rows, length, text = 3, 40, 20
    for decoder in (full, half):
        decoder.text_mask[:rows] = False
        decoder.text_mask[:rows, :text] = True
    position = torch.full((rows,), length)
    keys = (full.key_index[None] <= position[:, None])[:, None, None]
    layer = full.layers[0]
    query = torch.randn(rows, 1, full.width)
    with torch.no_grad():
        own = [d._self_attention(layer.self_attention, query, 0, position, keys) for d in (full, half)]
        cross = [d._cross_attention(layer.cross_attention, query, 0, d.text_mask[:rows, None, None], None)
                 for d in (full, half)]
    for want, have in (own, (cross[0][0], cross[1][0]), (cross[0][1], cross[1][1])):
        assert (have - want).abs().max() <= tolerance * want.abs().max()
        assert not torch.equal(have, want)  # the narrow caches were read, not float32 ones


def test_float16_caches_speak_the_codes_of_float32_ones(cached_pair):
    """End to end through the model: from the same seed, float16 caches draw the same codes as the
    float32 ones, every step's logits within float16's rounding."""
    from nemotron_tts.decoder_step import StaticDecoder

    _, static = cached_pair
    full = static.static
    half = StaticDecoder(static.model, full.max_rows, full.max_positions, full.max_text, graphs=False,
                         cache_dtype=torch.float16)
    runs = []
    try:
        for decoder in (full, half):
            static.static, logits, frames = decoder, [], []

            def recorded(*args, step=decoder.step, logits=logits):
                result = step(*args)
                logits.append(result[0].clone())
                return result

            decoder.step = recorded
            torch.manual_seed(5)
            static.generate([Utterance(static.tokenize(LONG_TEXT, "en"), 1, frames.append)])
            del decoder.step
            runs.append((logits, torch.cat(frames, dim=-1)))
    finally:
        static.static = full
    (expected, codes_full), (got, codes_half) = runs
    assert torch.equal(codes_half, codes_full)
    for want, have in zip(expected, got, strict=True):
        assert (have - want).abs().max() <= 2e-4 * want.abs().max()


@pytest.mark.parametrize("continuous", [False, True], ids=["fixed", "continuous"])
def test_engine_finishes_a_job_at_its_own_last_frame(tiny_tts_model, continuous):
    """A short segment batched with long ones is complete when its speech ends, not when theirs do."""
    from nemotron_tts.engine import Engine, Job

    model = SpeechModel(tiny_tts_model, "cpu", use_cfg=False)  # seed 1: the third text ends first
    texts = [TEXT, "A second voice says something else entirely.", "Short one."]
    events = []
    done = threading.Event()

    def finished(i):
        def on_done(ms, error):
            events.append(("done", i, error))
            if sum(event[0] == "done" for event in events) == len(texts):
                done.set()
        return on_done

    engine = Engine(model, max_batch=4, seed=1, continuous=continuous)
    jobs = [Job(model.tokenize(t, "en"), i, client=object(), on_done=finished(i),
                on_audio=lambda pcm, i=i: events.append(("audio", i)), preset=PRESETS["aggressive"])
            for i, t in enumerate(texts)]
    for job in jobs:
        engine.submit(job)
    engine.start()
    try:
        assert done.wait(120)
    finally:
        engine.stop()
    assert engine.largest_batch == 3 and all(event[2] is None for event in events if event[0] == "done")
    order = [event[:2] for event in events]
    first_done = next(i for kind, i in order if kind == "done")
    later_audio = [i for kind, i in order[order.index(("done", first_done)):] if kind == "audio"]
    assert later_audio and first_done not in later_audio  # the others still spoke after it finished


@pytest.mark.parametrize("continuous", [False, True], ids=["fixed", "continuous"])
def test_a_batch_job_is_decoded_in_chunks_and_sent_whole(tiny_tts_model, continuous):
    """Batch mode decodes its frames as they arrive, in chunks, never the whole utterance in one
    codec call (which set the server's memory), and still sends its audio in one piece: the audio of
    its codes decoded whole."""
    from nemotron_tts.audio import to_pcm16
    from nemotron_tts.engine import BATCH_CHUNKS, Engine, Job

    model = SpeechModel(tiny_tts_model, "cpu", use_cfg=False)
    decode, windows = model.codec.decode, []

    def recording(group):
        windows.extend(group)
        return decode(group)

    model.codec.decode = recording
    pieces, done = [], threading.Event()
    engine = Engine(model, max_batch=4, seed=1, continuous=continuous)
    engine.submit(Job(model.tokenize(TEXT + " And a little more to say.", "en"), 1, client=object(),
                      on_audio=pieces.append, on_done=lambda _ms, error: done.set(), preset=None))
    engine.start()
    try:
        assert done.wait(120)
    finally:
        engine.stop()
    frames = [window.codes.shape[-1] for window in windows]
    assert len(frames) > 2 and max(frames) <= BATCH_CHUNKS.chunk_frames, frames
    assert len(pieces) == 1
    codes = torch.cat([window.codes for window in windows], dim=-1)
    whole = torch.frombuffer(bytearray(to_pcm16(model.decode(codes.unsqueeze(0))[0])), dtype=torch.int16)
    sent = torch.frombuffer(bytearray(pieces[0]), dtype=torch.int16)
    assert sent.shape == whole.shape
    assert (sent.int() - whole.int()).abs().max() <= 1


@pytest.mark.parametrize("continuous", [False, True], ids=["fixed", "continuous"])
def test_a_job_the_model_cannot_take_fails_alone(tiny_tts_model, continuous):
    """A segment that breaks the model mid-batch (a token id past the text embedding: what an
    over-long text did before admission checked it) fails; the others of its batch get their audio."""
    from nemotron_tts.engine import Engine, Job

    model = SpeechModel(tiny_tts_model, "cpu", use_cfg=False)
    good = model.tokenize(TEXT, "en")
    broken = [chunk.clone() for chunk in good]
    broken[0][1] = 10**6
    outcome, audio = {}, {}
    done = threading.Event()

    def job(name, chunks):
        def on_done(_ms, error):
            outcome[name] = error
            if len(outcome) == 3:
                done.set()
        return Job(chunks, 0, client=object(), on_done=on_done, preset=PRESETS["balanced"],
                   on_audio=lambda pcm: audio.setdefault(name, []).append(pcm))

    engine = Engine(model, max_batch=4, seed=3, continuous=continuous)
    for name, chunks in [("first", good), ("broken", broken), ("last", good)]:
        engine.submit(job(name, chunks))
    engine.start()
    try:
        assert done.wait(120)
    finally:
        engine.stop()
    assert outcome["first"] is None and outcome["last"] is None
    assert "index out of range" in outcome["broken"] and "broken" not in audio
    assert audio["first"] and audio["last"]
    assert not engine.failed.is_set()
    if not continuous:  # (continuous admission fails before the step that counts the batch)
        assert engine.largest_batch == 3


def continuous(model, joins, texts, speakers=None):
    """Generate ``texts`` in one ContinuousBatch, text ``i`` joining after ``joins[i]`` steps."""
    speakers = speakers or list(range(len(texts)))
    from nemotron_tts.continuous import ContinuousBatch

    batch = ContinuousBatch(model)
    frames, ended = [[] for _ in texts], []
    steps = 0
    while True:
        joining = [i for i, at in enumerate(joins) if at == steps]
        batch.admit([Utterance(model.tokenize(texts[i], "en"), speakers[i], frames[i].append,
                               on_end=lambda i=i: ended.append(i)) for i in joining])
        if not len(batch) and steps > max(joins):
            break
        batch.step()
        steps += 1
    assert sorted(ended) == list(range(len(texts)))
    return [torch.cat(f, dim=-1) for f in frames]


TEXTS = [TEXT, "A second voice says something else entirely.", "Short one."]


def test_continuous_batch_draws_nemos_codes_while_its_items_are_the_same(cached_pair):
    """Started together, the continuous batch is NeMo's generate_speech: same seed, same codes, up
    to the first item's end (NeMo keeps drawing random numbers for ended items, it does not)."""
    nemo, static = cached_pair
    whole = 0
    for seed in range(3):
        frames = [[] for _ in TEXTS]
        torch.manual_seed(seed)
        nemo.generate([Utterance(nemo.tokenize(t, "en"), i, frames[i].append) for i, t in enumerate(TEXTS)])
        expected = [torch.cat(f, dim=-1) for f in frames]
        torch.manual_seed(seed)
        got = continuous(static, [0, 0, 0], TEXTS)
        same = min(codes.shape[-1] for codes in expected)
        assert [codes.shape for codes in got] == [codes.shape for codes in expected]
        assert all(torch.equal(a[:, :same], b[:, :same]) for a, b in zip(got, expected, strict=True))
        whole += all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert whole >= 1  # at least one seed ran all three to the end together


@pytest.mark.parametrize("prefill_rows", [None, 1], ids=["prompt-whole", "prompt-row-by-row"])
def test_items_joining_and_leaving_at_any_step_keep_their_own_codes(cached_pair, prefill_rows, monkeypatch):
    """With deterministic sampling (top-1) an item's codes cannot depend on its company: joining a
    running batch, rows moving when others leave, and the CFG row pairs must all leave them equal to
    the item generated alone; also with the prompt's caches written into their rows a row at a time."""
    static = cached_pair[1]
    if prefill_rows:
        monkeypatch.setattr(static.static, "prefill_rows", prefill_rows)
    params = static.model.inference_parameters
    topk = params.topk
    params.topk = 1
    try:
        alone = [continuous(static, [0], [text], [i])[0] for i, text in enumerate(TEXTS)]
        together = continuous(static, [0, 3, 5], TEXTS)
    finally:
        params.topk = topk
    for expected, got in zip(alone, together, strict=True):
        assert torch.equal(got, expected)


def test_a_joining_text_longer_than_the_caches_keeps_the_running_items_codes(cached_pair):
    """A text longer than the static decoder's text room grows the caches when it joins; the items
    already running keep what their caches held, so their codes stay those they get alone."""
    static = cached_pair[1]
    decoder = static.static
    texts = ["Short one.", TEXT]
    lengths = [len(static.tokenize(text, "en")[0]) for text in texts]
    params = static.model.inference_parameters
    topk, room = params.topk, decoder.max_text
    params.topk = 1
    try:
        alone = [continuous(static, [0], [text], [i])[0] for i, text in enumerate(texts)]
        decoder._allocate(decoder.max_positions, lengths[0])  # room for the first text only
        together = continuous(static, [0, 1], texts)
        assert decoder.max_text >= lengths[1] > lengths[0]  # the second one's join grew them
    finally:
        params.topk = topk
        decoder._allocate(decoder.max_positions, room)
    for expected, got in zip(alone, together, strict=True):
        assert torch.equal(got, expected)


def test_static_decoder_step_carries_a_long_text_chunk_by_chunk(cached_pair):
    """A text of several sentence chunks (NeMo carries history from chunk to chunk): same codes."""
    nemo, static = cached_pair
    chunks = static.tokenize(LONG_TEXT, "en")
    assert len(chunks) > 1
    codes = []
    for model in (nemo, static):
        frames = []
        torch.manual_seed(2)
        model.generate([Utterance(chunks, 1, frames.append)])
        codes.append(torch.cat(frames, dim=-1))
    assert torch.equal(codes[1], codes[0])


def test_continuous_engine_runs_a_long_text_alone_between_batches(tiny_tts_model):
    from nemotron_tts.engine import Engine, Job

    model = SpeechModel(tiny_tts_model, "cpu", use_cfg=False)
    assert len(model.tokenize(LONG_TEXT, "en")) > 1
    done, audio = {}, {}
    finished = threading.Event()

    def job(name, text):
        def on_done(ms, error):
            done[name] = (ms, error)
            if len(done) == 3:
                finished.set()
        return Job(model.tokenize(text, "en"), 0, client=object(), on_done=on_done,
                   on_audio=lambda pcm: audio.setdefault(name, []).append(pcm), preset=PRESETS["balanced"])

    engine = Engine(model, max_batch=4, seed=1, continuous=True)
    for name, text in (("short", "Short one."), ("long", LONG_TEXT), ("after", TEXT)):
        engine.submit(job(name, text))
    engine.start()
    try:
        assert finished.wait(300)
    finally:
        engine.stop()
    assert len(engine.continuous.items) == 0
    for name in ("short", "long", "after"):
        ms, error = done[name]
        assert error is None and ms > 0 and sum(map(len, audio[name])) == round(ms * 22.05) * 2


def _engine_run(engine, model, texts, until=None):
    """Submit ``texts`` (name: text) in order, run the engine until every job is done, or stop it
    once ``until(audio)`` holds; returns each job's completion (in order) and audio."""
    from nemotron_tts.engine import Job

    done, audio = {}, {}
    finished, started = threading.Event(), threading.Event()

    def job(name, text):
        def on_done(ms, error):
            done[name] = (ms, error)
            if len(done) == len(texts):
                finished.set()

        def on_audio(pcm):
            audio.setdefault(name, []).append(pcm)
            if until and until(audio):
                started.set()
        return Job(model.tokenize(text, "en"), 0, client=object(), on_done=on_done, on_audio=on_audio,
                   preset=PRESETS["balanced"])

    for name, text in texts.items():
        engine.submit(job(name, text))
    engine.start()
    try:
        if until:
            assert started.wait(300)
            engine.stop(timeout=60)
        assert finished.wait(300)
    finally:
        engine.stop()
    return done, {name: b"".join(pieces) for name, pieces in audio.items()}


@pytest.mark.parametrize("continuous", [False, True], ids=["fixed", "continuous"])
def test_a_long_text_runs_a_chunk_at_a_time_and_waiting_jobs_get_batches_between(tiny_tts_model,
                                                                                 continuous):
    """A text of several sentence chunks no longer holds the engine to its end (one client's long
    text stalled every other client for all of it), with fixed batches or continuous batching. A
    segment that came after it finishes first; the long text's audio is what it is alone, since each
    chunk is seeded."""
    from nemotron_tts.engine import Engine

    model = SpeechModel(tiny_tts_model, "cpu", use_cfg=False)
    assert len(model.tokenize(LONG_TEXT, "en")) == 4
    _, alone = _engine_run(Engine(model, max_batch=4, seed=1, continuous=continuous), model,
                           {"long": LONG_TEXT})
    done, audio = _engine_run(Engine(model, max_batch=4, seed=1, continuous=continuous), model,
                              {"long": LONG_TEXT, "short": "Short one."})
    assert list(done) == ["short", "long"]
    for name, (ms, error) in done.items():
        assert error is None and ms > 0 and len(audio[name]) == round(ms * 22.05) * 2
    assert audio["long"] == alone["long"]


def test_stopping_between_two_chunks_of_a_long_text_completes_it(tiny_tts_model):
    """The engine stopped while a long text is between chunks: its client still gets the end."""
    from nemotron_tts.engine import Engine

    model = SpeechModel(tiny_tts_model, "cpu", use_cfg=False)
    done, audio = _engine_run(Engine(model, max_batch=4, seed=1), model, {"long": LONG_TEXT},
                              until=lambda audio: "long" in audio)
    ms, error = done["long"]
    assert error is None and 0 < len(audio["long"]) == round(ms * 22.05) * 2
    limit = model.model.inference_parameters.max_decoder_steps
    assert ms < 4 * limit * model.samples_per_frame / 22.05  # cut short, not run to its end


def test_shared_causal_masks_leave_nemos_decoder_unchanged(tiny_tts_model):
    from nemo.collections.tts.models import MagpieTTSModel
    from nemotron_tts.model import share_causal_masks

    model = MagpieTTSModel.restore_from(str(tiny_tts_model), map_location="cpu").eval()
    decoder = model.decoder
    torch.manual_seed(0)
    width = model.cfg.decoder.d_model
    frames, text = torch.randn(2, 9, width), torch.randn(2, 5, width)
    frames_mask, text_mask = torch.ones(2, 9, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)
    frames_mask[1, 6:] = False

    def run():
        with torch.inference_mode():
            return decoder(frames, frames_mask, cond=text, cond_mask=text_mask)["output"]

    before = run()
    holders = [m for m in model.modules() if isinstance(getattr(m, "causal_mask", None), torch.Tensor)]
    old = sum(m.causal_mask.numel() * m.causal_mask.element_size() for m in holders)
    freed = share_causal_masks(model)
    new = {id(m.causal_mask): m.causal_mask.numel() for m in holders}  # one bool mask per shape
    assert len(new) == 2 and freed == old - sum(new.values())  # the decoder's and the local transformer's
    shared = [layer.self_attention.causal_mask for layer in decoder.layers]
    assert all(m is shared[0] for m in shared) and shared[0].dtype == torch.bool
    assert torch.equal(run(), before)


@pytest.mark.parametrize("join_wait_s", [5.0, 0.0], ids=["waits-for-buffer", "joins-at-once"])
def test_a_joining_segment_waits_until_the_playing_stream_can_absorb_its_prompt(tiny_tts_model,
                                                                               join_wait_s):
    """Continuous batching: a segment arriving just after another's first audio joins only once that
    stream has buffered more audio than the join costs, so its client hears no gap. The prompt pass is
    made to cost 300 ms (a real one on a large batch costs tens of ms; the tiny model's, one or two);
    the first stream starts with one frame, 46 ms, of audio. Joined at once (join_wait 0, what the
    engine did before), the stream is late by most of the 300 ms."""
    from nemotron_tts.engine import Engine, Job

    model = SpeechModel(tiny_tts_model, "cpu", use_cfg=False, max_frames=40)
    engine = Engine(model, max_batch=4, seed=1, continuous=True, join_wait_s=join_wait_s)
    real_admit = engine.continuous.admit

    def slow_admit(utterances):
        real_admit(utterances)
        time.sleep(0.3)

    engine.continuous.admit = slow_admit
    arrivals, done, finished = {}, {}, threading.Event()

    def job(name, text):
        def on_audio(pcm):
            arrivals.setdefault(name, []).append((time.monotonic(), len(pcm)))
            if name == "playing" and len(arrivals[name]) == 1:
                engine.submit(joiner)  # from the engine thread, right after the first chunk is out

        def on_done(ms, error):
            done[name] = error
            if len(done) == 2:
                finished.set()
        return Job(model.tokenize(text, "en"), 0, client=object(), on_done=on_done, on_audio=on_audio,
                   preset=PRESETS["aggressive"])

    joiner = job("joiner", "Short one.")
    engine.submit(job("playing", TEXT))
    engine.start()
    try:
        assert finished.wait(300)
    finally:
        engine.stop()
    assert done == {"playing": None, "joiner": None}
    first, played, late = arrivals["playing"][0][0], 0.0, 0.0
    for arrived, size in arrivals["playing"]:
        late = max(late, arrived - (first + played))
        played += size / 2 / model.sample_rate
    assert played > 0.6  # enough speech to buffer 300 ms at the tiny model's speed
    if join_wait_s:
        assert late < 0.1, f"the playing stream's client waited {late * 1000:.0f} ms for audio"
    else:
        assert late > 0.2
