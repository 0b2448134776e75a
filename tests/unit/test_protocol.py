import json

from nemotron_asr import protocol
from nemotron_asr.protocol import Audio, AudioFramer, ProtocolError, Reset, parse_text


def test_reset_and_end_follow_the_finalize_rule():
    assert parse_text('{"type":"reset","finalize":true}') == Reset(True)
    assert parse_text('{"type":"reset","finalize":false}') == Reset(False)
    assert parse_text('{"type":"reset"}') == Reset(True)
    assert parse_text('{"type":"end"}') == Reset(True)
    assert parse_text('{"type":"end","finalize":false}') == Reset(False)


def test_bad_text_frames_are_errors():
    frames = ("hello", "[1,2]", '{"type":"pause"}', '{"finalize":true}', '{"type":"reset","finalize":"yes"}',
              '{"type":["reset"]}', "[" * 100_000 + "]" * 100_000)
    for frame in frames:
        assert isinstance(parse_text(frame), ProtocolError), frame


def test_odd_byte_counts_keep_samples_whole():
    framer = AudioFramer(max_frame_bytes=1000)
    first = framer.parse(b"\x01\x02\x03")
    assert first[0] == Audio(b"\x01\x02") and isinstance(first[1], ProtocolError)
    second = framer.parse(b"\x04\x05\x06")
    assert second[0] == Audio(b"\x03\x04\x05\x06") and isinstance(second[1], ProtocolError)
    assert framer.parse(b"\x07\x08") == [Audio(b"\x07\x08")]


def test_oversized_frames_are_refused_whole():
    framer = AudioFramer(max_frame_bytes=4)
    events = framer.parse(b"\x00" * 6)
    assert len(events) == 1 and "exceeds the limit of 4 bytes" in events[0].message
    assert framer.parse(b"\x01\x02") == [Audio(b"\x01\x02")]


def test_server_messages_have_the_contract_shapes():
    assert json.loads(protocol.ready_message()) == {"type": "ready"}
    interim = json.loads(protocol.interim_message("a b"))
    assert interim == {"type": "transcript", "text": "a b", "is_final": False}
    final = json.loads(protocol.final_message("", finalize=True, latency_ms=3))
    assert final["type"] == "transcript" and final["text"] == "" and final["is_final"] is True
    assert final["finalize"] is True
    assert json.loads(protocol.error_message("x")) == {"type": "error", "message": "x"}
