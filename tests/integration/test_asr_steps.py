"""The engine's encoder steps, caches handed over layer by layer or stacked, against NeMo's own
streaming step (real NeMo, tiny model, float32 CPU). Layer by layer, the streaming attention extends
each ring's window in place and NeMo's own attention takes a copy of it; both must give NeMo's step."""

import copy

import pytest
import torch
from nemotron_asr import encoder_layers, steps
from nemotron_asr.model import restore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def encoders(tiny_asr_model):
    original = restore(tiny_asr_model, torch.device("cpu")).encoder
    original.set_default_att_context_size([original.att_context_size_all[0][0], 1])
    pooled = copy.deepcopy(original)
    count = steps.pool_layers(pooled)
    streaming = copy.deepcopy(pooled)
    encoder_layers.apply(streaming)
    return original, {"nemo-attention": pooled, "ring-attention": streaming}, count


def test_every_conformer_layer_is_switched(encoders):
    original, pooled, count = encoders
    assert count == len(original.layers) > 0
    assert all(type(layer) is steps.PooledCacheLayer for layer in pooled["nemo-attention"].layers)


@pytest.mark.parametrize("attention", ["ring-attention", "nemo-attention"])
@pytest.mark.parametrize("layered", [True, False], ids=["layer-by-layer", "stacked"])
def test_steps_equal_nemo_and_touch_only_their_streams_caches(encoders, layered, attention):
    original, pooled, _ = encoders
    pooled = pooled[attention]
    kinds = steps.step_kinds(original.streaming_cfg, lead=2)
    torch.manual_seed(0)
    slots = 6
    pool = steps.CachePool(pooled, slots, torch.float32, torch.device("cpu"),
                           steps.most_new_frames(kinds, original.subsampling_factor))
    for tensor in (pool.channel, pool.time):
        tensor.normal_()  # earlier chunks' caches, different in every slot (and junk past the windows)
    pool.start.random_(0, pool.ring)  # windows wrapping round their rings
    pool.channel_len.fill_(pool.window // 2)
    index = torch.tensor([4, 1, 3])  # the step's streams, in any order of slots
    sequence = ["first", "steady", "steady", "final"]
    for name in sequence:
        kind = kinds[name]
        features = torch.randn(len(index), original._feat_in, kind.frames)
        lengths = torch.tensor([kind.frames, kind.frames, kind.frames - 3])  # one padded chunk
        channel, time, channel_len = pool.gather(index)
        untouched = [t.clone() for t in pool.gather(torch.tensor([0, 2, 5, slots]))]
        with torch.inference_mode():
            expected = original.cache_aware_stream_step(
                processed_signal=features, processed_signal_length=lengths, cache_last_channel=channel,
                cache_last_time=time, cache_last_channel_len=channel_len,
                keep_all_outputs=kind.keep_all_outputs, drop_extra_pre_encoded=kind.drop_extra_pre_encoded)
            encoded, encoded_len = steps.EagerStep(pooled, kind, pool, layered)(features, lengths, index)
        actual = (encoded, encoded_len, *pool.gather(index))
        for name_, ours, nemo in zip(("encoded", "length", "channel", "time", "channel length"), actual,
                                     expected, strict=True):
            assert ours.shape == nemo.shape, (name, name_)
            torch.testing.assert_close(ours, nemo, msg=f"{name} step: {name_}")
        for before, after in zip(untouched, pool.gather(torch.tensor([0, 2, 5, slots])), strict=True):
            assert torch.equal(before, after)
