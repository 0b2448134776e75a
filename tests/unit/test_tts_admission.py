"""The continuous batch's admission rule: joiners wait for the playing streams' buffers."""

from nemotron_tts.admission import Admission, DecayingPeak, Playing


def test_a_cost_estimate_rises_at_once_and_decays_slowly():
    peak = DecayingPeak(decay=0.9)
    peak.add(0.010)
    assert peak.value == 0.010
    peak.add(0.050)
    assert peak.value == 0.050  # an underestimate makes a stream late: take a larger cost whole
    peak.add(0.010)
    assert 0.045 < peak.value < 0.050  # one cheap join barely lowers it
    for _ in range(100):
        peak.add(0.010)
    assert abs(peak.value - 0.010) < 0.001


def admission(join_s=0.040, step_s=0.020, max_wait_s=0.5):
    rule = Admission(max_wait_s)
    rule.join.add(join_s)
    rule.step.add(step_s)
    return rule


def test_joiners_wait_until_every_playing_stream_can_absorb_the_join():
    rule = admission()
    # A stream two steps from its next chunk needs the join and two steps buffered: 80 ms.
    assert rule.allows([Playing(0.081, 2)], waited_s=0.0)
    assert not rule.allows([Playing(0.079, 2)], waited_s=0.0)
    assert not rule.allows([Playing(0.300, 1), Playing(0.050, 1)], waited_s=0.0)  # the least buffered
    assert rule.allows([Playing(0.300, 1), Playing(0.061, 1)], waited_s=0.0)
    assert not rule.allows([Playing(-0.010, 1)], waited_s=0.1)  # already late: do not make it later


def test_nothing_playing_or_a_long_wait_lets_joiners_in():
    rule = admission()
    assert rule.allows([], waited_s=0.0)
    assert rule.allows([Playing(0.0, 2)], waited_s=0.5)
    assert Admission(0.0).allows([Playing(0.0, 2)], waited_s=0.0)  # 0: join at the next step
