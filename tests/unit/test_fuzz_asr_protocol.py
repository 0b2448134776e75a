"""Property-based fuzzing of the ASR wire parser: whatever a client sends, the answer is an event
(never an exception), and audio split into frames of any size comes out whole and in order."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from nemotron_asr.protocol import Audio, AudioFramer, ProtocolError, Reset, parse_text

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
kinds = st.sampled_from(["reset", "end", "pause"]) | json_values
messages = st.fixed_dictionaries({}, optional={"type": kinds, "finalize": json_values, "extra": json_values})


@settings(max_examples=400)
@given(st.text(max_size=200) | messages.map(json.dumps) | json_values.map(json.dumps))
def test_any_text_frame_is_an_event(frame):
    event = parse_text(frame)
    assert isinstance(event, Audio | Reset | ProtocolError)
    if isinstance(event, ProtocolError):
        assert event.message
    else:
        message = json.loads(frame)
        assert message["type"] in ("reset", "end") and event.finalize is message.get("finalize", True)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=700), max_size=20))
def test_audio_in_frames_of_any_size_comes_out_whole_and_in_order(frames):
    framer = AudioFramer(max_frame_bytes=512)
    audio = b""
    for frame in frames:
        for event in framer.parse(frame):
            if isinstance(event, Audio):
                assert len(event.pcm) % 2 == 0
                audio += event.pcm
            else:
                assert isinstance(event, ProtocolError) and event.message
    accepted = b"".join(frame for frame in frames if len(frame) <= 512)
    assert audio == accepted[:len(accepted) - len(accepted) % 2]
