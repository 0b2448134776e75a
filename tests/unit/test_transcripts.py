"""The pure transcript formatting behind POST /v1/audio/transcriptions."""

import json

from nemotron_asr.transcripts import Timeline, render


def timeline() -> Timeline:
    t = Timeline()
    assert t.interim("Hello", 400) == "Hello"
    assert t.interim("Hello there.", 900) == " there."
    assert t.interim("Hello there. How", 1500) == " How"
    assert t.final("Hello there. How are you?", 2.0) == " are you?"
    return t


def test_words_end_when_the_model_emitted_them_and_start_at_the_previous_end():
    words = timeline().words()
    assert [(w.text, w.start, w.end) for w in words] == [
        ("Hello", 0.0, 0.4), ("there.", 0.4, 0.9), ("How", 0.9, 1.5), ("are", 1.5, 2.0), ("you?", 2.0, 2.0)]


def test_segments_split_after_sentences():
    segments = timeline().segments()
    assert [(s.text, s.start, s.end) for s in segments] == [("Hello there.", 0.0, 0.9),
                                                            ("How are you?", 0.9, 2.0)]


def test_a_revised_interim_gives_no_delta_and_retimes_only_what_changed():
    t = Timeline()
    t.interim("I scream", 500)
    assert t.interim("Ice cream", 800) == ""  # not an extension: nothing to append
    assert t.final("Ice cream", 1.0) == ""
    assert [w.end for w in t.words()] == [0.8, 0.8]


def test_formats():
    t = timeline()
    assert json.loads(render("json", t, 2.0)[0]) == {"text": "Hello there. How are you?",
                                                     "usage": {"type": "duration", "seconds": 2.0}}
    assert render("text", t, 2.0) == ("Hello there. How are you?\n", "text/plain")
    srt = render("srt", t, 2.0)[0]
    assert srt.startswith("1\n00:00:00,000 --> 00:00:00,900\nHello there.\n\n2\n00:00:00,900 --> ")
    vtt = render("vtt", t, 2.0)[0]
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.900\nHello there.\n")
    verbose = json.loads(render("verbose_json", t, 2.0, ("word",))[0])
    assert "segments" not in verbose and [w["word"] for w in verbose["words"]][-1] == "you?"
