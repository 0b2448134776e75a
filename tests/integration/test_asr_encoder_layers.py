"""The streaming-layout encoder layers against NeMo's own (real NeMo, tiny model, float32 CPU)."""

import copy

import pytest
import torch
from nemo.collections.asr.parts.submodules.multi_head_attention import RelPositionMultiHeadAttention
from nemotron_asr import encoder_layers
from nemotron_asr.model import restore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def encoders(tiny_asr_model):
    original = restore(tiny_asr_model, torch.device("cpu")).encoder
    original.set_default_att_context_size([original.att_context_size_all[0][0], 1])
    switched = copy.deepcopy(original)
    for module in switched.modules():  # non-trivial positional biases, shared by both copies
        if isinstance(module, RelPositionMultiHeadAttention):
            torch.nn.init.normal_(module.pos_bias_u, std=0.5)
            torch.nn.init.normal_(module.pos_bias_v, std=0.5)
    original.load_state_dict(switched.state_dict())
    count = encoder_layers.apply(switched)
    return original, switched, count


def test_apply_switches_every_attention_and_pointwise_convolution(encoders):
    original, switched, count = encoders
    layers = len(original.layers)
    assert count == 3 * layers  # one attention and two pointwise convolutions per conformer layer
    assert all(type(layer.self_attn) is encoder_layers.StreamingRelPositionAttention
               for layer in switched.layers)
    assert all(type(layer.conv.pointwise_conv1) is encoder_layers.PointwiseConv1d
               for layer in switched.layers)
    assert type(original.layers[0].self_attn) is RelPositionMultiHeadAttention


def test_streaming_steps_equal_nemo_layers(encoders):
    original, switched, _ = encoders
    cfg = original.streaming_cfg
    torch.manual_seed(0)
    streams = 3
    states = [list(original.get_initial_cache_state(batch_size=streams)) for _ in range(2)]
    outputs = []
    for step in range(4):  # the first chunk, then steady chunks over a filling cache
        frames = cfg.chunk_size[0] if step == 0 else cfg.pre_encode_cache_size[1] + cfg.shift_size[1]
        drop = 0 if step == 0 else cfg.drop_extra_pre_encoded
        features = torch.randn(streams, original._feat_in, frames)
        lengths = torch.tensor([frames, frames, frames - 3])  # one stream's chunk is padded
        step_outputs = []
        for encoder, state in zip((original, switched), states, strict=True):
            with torch.inference_mode():
                encoded, encoded_len, *cache = encoder.cache_aware_stream_step(
                    processed_signal=features, processed_signal_length=lengths,
                    cache_last_channel=state[0], cache_last_time=state[1], cache_last_channel_len=state[2],
                    keep_all_outputs=False, drop_extra_pre_encoded=drop)
            state[:] = cache
            step_outputs.append((encoded, encoded_len, *cache))
        outputs.append(step_outputs)
    for nemo, ours in outputs:
        for expected, actual in zip(nemo, ours, strict=True):
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_whole_utterance_forward_equals_nemo_layers(encoders):
    original, switched, _ = encoders
    torch.manual_seed(1)
    features = torch.randn(2, original._feat_in, 200)
    lengths = torch.tensor([200, 130])
    with torch.inference_mode():
        expected = original(audio_signal=features, length=lengths)
        actual = switched(audio_signal=features, length=lengths)
    for e, a in zip(expected, actual, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_training_mode_runs_nemo_code(encoders):
    _, switched, _ = encoders
    attention = switched.layers[0].self_attn
    attention.train()
    try:
        x = torch.randn(1, 5, attention.linear_q.in_features)
        pos = torch.randn(1, 9, attention.linear_q.in_features)
        torch.manual_seed(2)
        ours = attention(x, x, x, None, pos)
        torch.manual_seed(2)
        nemo = RelPositionMultiHeadAttention.forward(attention, x, x, x, None, pos)
    finally:
        attention.eval()
    torch.testing.assert_close(ours, nemo)
